"""End-to-end runs of the training recipe on a tiny generated corpus."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskproxy_losses.scoring import score_trials, verification_metrics
from maskproxy_losses.trials import read_trials

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
sys.path.insert(0, str(RECIPE))
import train_speaker_embeddings as recipe  # noqa: E402


def _args(corpus, out, name="mp_balance", **changes):
    options = {
        "builtin_corpus": "False",
        "data_folder": corpus,
        "manifest_folder": corpus / "manifests",
        "output_folder": out,
        "speakers_per_batch": 3,
        "crop_frames": 60,
        "number_of_epochs": 1,
        "num_workers": 0,
        "dev_share": 2,
        "emb_dim": 64,
        **changes,
    }
    return [str(RECIPE / "hparams" / f"{name}.yaml")] + [
        str(x) for key, value in options.items() for x in (f"--{key}", value)
    ]


def _final_line(text):
    m = re.search(r"test EER ([\d.]+) %  minDCF\(0.01\) ([\d.]+)", text)
    assert m, text[-2000:]
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("name", ["mp", "mmp", "mp_balance", "mmp_balance", "ap", "aam"])
def test_tiny_run_per_loss(corpus, tmp_path, name, capsys):
    brain = recipe.main(_args(corpus, tmp_path / name, name))
    eer, dcf = _final_line(capsys.readouterr().out)
    assert 0 <= eer <= 100 and 0 <= dcf <= 1.0 + 1e-9
    log = (tmp_path / name / "train_log.txt").read_text()
    # lr of epoch 1: the MP files' 0.2, voxceleb_trainer's 0.001 (ap), or for aam
    # WeSpeaker's per-step schedule, below 0.1 * batch / 64 after the first step.
    lr = float(re.match(r"epoch: 1, lr: ([\d.e+-]+), epoch_s: ", log).group(1))
    if name == "aam":
        assert 0 < lr < 0.1 * 6 / 64
    else:
        assert lr == {"ap": 0.001}.get(name, 0.2)
    assert "valid EER" in log
    assert re.search(r"train loss: [\d.]+, train acc: [\d.e+-]+, train w: [\d.a-z]+, train utt_per_s: [\d.e+]+", log)
    loss_fn = brain.modules.loss_fn
    if name in ("mp", "mmp", "mp_balance", "mmp_balance"):
        assert loss_fn.proxies.shape == (6, 64)  # one proxy per training speaker
    # The stage's accuracy comes from the loss and is a real fraction.
    assert 0.0 <= brain.train_stats["acc"] <= 1.0


def test_nan_stops_with_the_step_named(corpus, tmp_path):
    with pytest.raises(FloatingPointError, match=r"became NaN/Inf at epoch 1, step \d+; lower the learning"):
        recipe.main(_args(corpus, tmp_path / "nan", lr=1e30))
    assert not (tmp_path / "nan" / "model").exists()


def test_export_matches_trained_model(corpus, tmp_path, capsys):
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.inference.speaker import EncoderClassifier

    brain = recipe.main(_args(corpus, tmp_path / "run"))
    test_eer, _ = _final_line(capsys.readouterr().out)
    model = EncoderClassifier.from_hparams(source=str(tmp_path / "run" / "model"),
                                           savedir=str(tmp_path / "loaded"))
    wav = sorted((corpus / "wav").rglob("*.wav"))[0]
    sig = read_audio(str(wav)).unsqueeze(0)
    brain.modules.eval()
    with torch.no_grad():
        feats = brain.modules.mean_var_norm(brain.modules.compute_features(sig), torch.ones(1))
        want = brain.modules.embedding_model(feats, torch.ones(1))
    got = model.encode_batch(sig)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The exported model reproduces the printed test EER through the scoring path.
    embeddings = {}
    for line in (corpus / "manifests" / "test.csv").read_text().splitlines()[1:]:
        path = line.split(",")[2]
        embeddings[path] = model.encode_batch(read_audio(path).unsqueeze(0)).squeeze()
    trials, problems = read_trials(corpus / "manifests" / "trials.txt")
    assert not problems
    metrics = verification_metrics(*score_trials(embeddings, trials))
    assert metrics["EER"] == pytest.approx(test_eer, abs=0.01)


def _run(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])  # 1: a persistent loader worker, as by default
def test_resume_after_kill_mid_epoch(corpus, tmp_path, workers):
    out = tmp_path / "run"
    cmd = [sys.executable, str(RECIPE / "train_speaker_embeddings.py"),
           *_args(corpus, out, number_of_epochs=2, ckpt_interval_steps=1, num_workers=workers)]
    proc = _run(cmd)
    save = out / "save"
    deadline = time.time() + 300
    # Kill -9 as soon as an intra-epoch checkpoint of epoch 1 exists.
    while time.time() < deadline and proc.poll() is None:
        if save.is_dir() and any(p.name.startswith("CKPT") for p in save.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    before = {p.name for p in save.iterdir() if p.name.startswith("CKPT")}
    assert before
    resumed = _run(cmd)
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    assert "Loading a checkpoint from" in text
    log = (out / "train_log.txt").read_text().splitlines()
    assert [l.split(",")[0] for l in log if l.startswith("epoch")] == ["epoch: 1", "epoch: 2"]
    assert (out / "model" / "embedding_model.ckpt").is_file()
    _final_line(text)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2",
           str(RECIPE / "train_speaker_embeddings.py"), *_args(corpus, out, name="mp")]
    proc = _run(cmd)
    text, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, text[-3000:]
    # Each of the 2 processes gets half of the epoch's batches.
    counts = [int(n) for n in re.findall(r"(\d+) batches/epoch \(per process\)", text)]
    assert counts and all(c == counts[0] for c in counts)
    assert (out / "model" / "embedding_model.ckpt").is_file()
    _final_line(text)


def test_summarize_results(tmp_path):
    import summarize_results

    logs = {
        ("mp", "1"): "epoch: 1, lr: 2.00e-01, epoch_s: 10.0 - train loss: 3.0, train acc: 0.1, "
                     "train w: 10.0, train utt_per_s: 50.0 - valid EER: 30.0\n"
                     "epoch: 2, lr: 2.00e-01, epoch_s: 12.0 - train loss: 2.0, train acc: 0.2, "
                     "train w: 10.5, train utt_per_s: 70.0 - valid EER: 20.0\n"
                     "Epoch loaded: 2 - test EER: 20.00, test minDCF_0.01: 5.00e-01\n",
        ("mp", "2"): "epoch: 1, lr: 2.00e-01, epoch_s: 14.0 - train loss: 3.0, train acc: 0.1, "
                     "train w: 10.0, train utt_per_s: 60.0 - valid EER: 30.0\n"
                     "Epoch loaded: 1 - test EER: 30.00, test minDCF_0.01: 7.00e-01\n",
        ("ap", "1"): "epoch: 1, lr: 2.00e-01, epoch_s: 9.0 - train loss: 3.0 - valid EER: 30.0\n",  # unfinished
    }
    for (loss, seed), text in logs.items():
        (tmp_path / loss / seed).mkdir(parents=True)
        (tmp_path / loss / seed / "train_log.txt").write_text(text)
    table = summarize_results.summarize(tmp_path).splitlines()
    assert len(table) == 3  # header, separator, mp (ap has no test result)
    # EER mean 25, sample std of (20, 30) = 7.07; minDCF 0.6 +- 0.141; epochs 12 +- 2; utt/s 60 +- 10
    assert table[2] == "| mp | 2 (1, 2) | 25.00 ± 7.07 | 0.600 ± 0.141 | 12 ± 2 | 60 ± 10 |"


def test_model_is_exported_before_test_scoring(corpus, tmp_path, monkeypatch):
    real = recipe.score_trials

    def failing_on_the_test_list(embeddings, trials):
        if os.path.basename(trials[0][5]).startswith("trials.txt:"):
            raise RuntimeError("test scoring failed")
        return real(embeddings, trials)

    monkeypatch.setattr(recipe, "score_trials", failing_on_the_test_list)
    with pytest.raises(RuntimeError, match="test scoring failed"):
        recipe.main(_args(corpus, tmp_path / "run"))
    model = tmp_path / "run" / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "calibration.json", "embedding_model.ckpt", "hyperparams.yaml"]

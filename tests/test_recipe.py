"""End-to-end runs of the training recipe on a tiny generated corpus."""

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)
from conftest import (
    RECIPE,
    assert_ddp_run,
    assert_same_state,
    ddp_recipe,
    popen_recipe,
    read_trace,
)

from maskproxy_losses.data.trials import read_trials
from maskproxy_losses.inference.model_card import read_model_card
from maskproxy_losses.scoring.cosine import score_trials
from maskproxy_losses.scoring.metrics import verification_metrics


@pytest.mark.parametrize("name", ["mp", "mmp", "mp_balance", "mmp_balance", "ap", "aam"])
def test_tiny_run_per_loss(corpus, tmp_path, name, capsys, recipe_args, final_line):
    brain = recipe.train(recipe_args(corpus, tmp_path / name, name))
    eer, dcf = final_line(capsys.readouterr().out)
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
    assert re.search(
        r"train loss: [\d.]+, train acc: [\d.e+-]+, train w: [-+\d.a-z]+, train b: [-+\d.a-z]+, "
        r"train utt_per_s: [\d.e+]+",
        log,
    )
    loss_fn = brain.modules.loss_fn
    if name in ("mp", "mmp", "mp_balance", "mmp_balance"):
        assert loss_fn.proxies.shape == (6, 64)  # one proxy per training speaker
    # The stage's accuracy comes from the loss and is a real fraction.
    assert 0.0 <= brain.train_stats["acc"] <= 1.0


@pytest.mark.precision
def test_auto_precision_trains_at_what_the_cpu_does_natively(corpus, tmp_path, recipe_args):
    """``precision: auto`` (every yaml's default) trains under bfloat16 autocast where the
    CPU has native bfloat16 (or ``MASKPROXY_CPU_BF16=1`` says so), in float32 elsewhere;
    the dev / test embeddings stay float32 either way."""
    from maskproxy_losses.utils.precision import native_bf16

    brain = recipe.train(recipe_args(corpus, tmp_path / "auto"))
    want = "bf16" if native_bf16("cpu") else "fp32"
    assert brain.precision == want and brain.eval_precision == "fp32"
    assert (tmp_path / "auto" / "model" / "embedding_model.ckpt").is_file()


def test_nan_stops_with_the_step_named(corpus, tmp_path, recipe_args):
    with pytest.raises(
        FloatingPointError, match=r"became NaN/Inf at epoch 1, step \d+ \(the first bad step"
    ):
        recipe.train(recipe_args(corpus, tmp_path / "nan", lr=1e30))
    assert not (tmp_path / "nan" / "model").exists()


def test_export_matches_trained_model(corpus, tmp_path, capsys, recipe_args, final_line):
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.inference.speaker import EncoderClassifier

    brain = recipe.train(recipe_args(corpus, tmp_path / "run"))
    test_eer, _ = final_line(capsys.readouterr().out)
    model = EncoderClassifier.from_hparams(
        source=str(tmp_path / "run" / "model"), savedir=str(tmp_path / "loaded")
    )
    wav = sorted((corpus / "wav").rglob("*.wav"))[0]
    sig = read_audio(str(wav)).unsqueeze(0)
    brain.modules.eval()
    with torch.no_grad():
        feats = brain.modules.mean_var_norm(brain.modules.compute_features(sig), torch.ones(1))
        want = brain.modules.embedding_model(feats, torch.ones(1))
    got = model.encode_batch(sig)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The exported model reproduces the printed test EER through the scoring path.
    assert _test_eer(model, corpus) == pytest.approx(test_eer, abs=0.01)
    _check_card(tmp_path / "run" / "model", corpus, test_eer)


def _check_card(model_dir, corpus, test_eer):
    """The model card (README.md) says what the run was, read back from its front matter."""
    import csv
    import json
    import math

    from maskproxy_losses import __version__

    card = read_model_card(model_dir)
    rows = list(csv.DictReader(open(corpus / "manifests" / "train.csv")))
    assert card["training"]["loss"] == "mp_balance" and card["training"]["epochs"] == 1
    assert card["training"]["data"]["utterances"] == len(rows)
    assert card["training"]["data"]["speakers"] == len({r["spk_id"] for r in rows})
    assert card["model"]["encoder_kwargs"]["emb_dim"] == card["model"]["embedding_dim"] == 64
    assert card["evaluation"]["test"]["EER"] == pytest.approx(test_eer, abs=0.01)
    dev_trials = (corpus / "manifests" / "dev_trials.txt").read_text().splitlines()
    assert card["evaluation"]["dev"]["n_trials"] == len(dev_trials)
    assert 0 < card["evaluation"]["test"]["Cllr"] and "minDCF_0.01" in card["evaluation"]["dev"]
    cal = json.loads((model_dir / "calibration.json").read_text())
    assert card["calibration"]["scale"] == cal["scale"]
    want = (math.log(99) - cal["offset"]) / cal["scale"]
    assert card["calibration"]["cosine_thresholds"]["0.01"] == pytest.approx(want, abs=1e-6)
    assert card["package"]["version"] == __version__ and card["license"] == "Apache-2.0"
    text = (model_dir / "README.md").read_text()
    assert "EncoderClassifier.from_hparams" in text and "export-onnx" in text
    assert f"| {want:.6f} |" in text  # the threshold for SpeechBrain's SpeakerRecognition


def _test_eer(model, corpus):
    """Test-trial EER (%) of an ``EncoderClassifier``, one whole file at a time."""
    from speechbrain.dataio.dataio import read_audio

    embeddings = {}
    for line in (corpus / "manifests" / "test.csv").read_text().splitlines()[1:]:
        path = line.split(",")[2]
        embeddings[path] = model.encode_batch(read_audio(path).unsqueeze(0)).squeeze()
    trials, problems = read_trials(corpus / "manifests" / "trials.txt")
    assert not problems
    return verification_metrics(*score_trials(embeddings, trials))["EER"]


def test_best_checkpoint_not_the_last_is_exported_and_tested(
    corpus, tmp_path, capsys, monkeypatch, recipe_args, final_line
):
    """Dev EERs scripted to 40, 10, 30 %: epoch 2's checkpoint is exported and scored."""
    from speechbrain.inference.speaker import EncoderClassifier

    real, calls = recipe.verification_metrics, []

    def scripted(scores, labels):  # the 3 epochs' dev EERs; calibration and test stay real
        metrics = real(scores, labels)
        calls.append(metrics["EER"])
        return (
            {**metrics, "EER": (40.0, 10.0, 30.0)[len(calls) - 1]} if len(calls) <= 3 else metrics
        )

    monkeypatch.setattr(recipe, "verification_metrics", scripted)
    out = tmp_path / "run"
    recipe.train(recipe_args(corpus, out, number_of_epochs=3))
    test_eer, _ = final_line(capsys.readouterr().out)
    assert len(calls) == 5 and "Epoch loaded: 2 - test EER" in (out / "train_log.txt").read_text()
    kept = {
        int((p / "counter.ckpt").read_text()): torch.load(p / "embedding_model.ckpt")
        for p in (out / "save").glob("CKPT+*")
    }
    assert sorted(kept) == [2, 3]  # the best and the most recent checkpoint
    exported = torch.load(out / "model" / "embedding_model.ckpt")
    assert_same_state({"m": exported}, {"m": kept[2]})
    assert any(not torch.equal(kept[2][k], kept[3][k]) for k in exported)  # epoch 3 trained on
    model = EncoderClassifier.from_hparams(source=str(out / "model"), savedir=str(tmp_path / "m"))
    assert _test_eer(model, corpus) == pytest.approx(test_eer, abs=0.01)


def _epoch_stats(train_log):
    """The epoch lines of ``train_log`` without their timings (``epoch_s``, ``dev_s``,
    ``utt_per_s``)."""
    lines = Path(train_log).read_text().splitlines()
    return [
        re.sub(r"(epoch_s|dev_s|utt_per_s): [\d.e+-]+", "", line)
        for line in lines
        if line.startswith("epoch: ")
    ]


@pytest.mark.slow
def test_resume_after_kill_mid_epoch_is_exact(corpus, tmp_path, recipe_args, final_line):
    """kill -9 in epoch 2 of 2, resume: the same batches and bit-identical parameters as an
    uninterrupted run (default loader: one persistent worker; crops seeded per utterance)."""

    def cmd(name):
        return [
            sys.executable,
            str(RECIPE / "train_speaker_embeddings.py"),
            *recipe_args(
                corpus,
                tmp_path / name,
                number_of_epochs=2,
                ckpt_interval_steps=1,
                num_workers=1,
                speakers_per_batch=2,
                batch_trace=tmp_path / f"{name}.log",
            ),
        ]

    full = popen_recipe(cmd("full"))
    full_text, _ = full.communicate(timeout=600)
    assert full.returncode == 0, full_text[-3000:]
    proc, log = popen_recipe(cmd("run")), tmp_path / "run.log.rank0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill -9 once epoch 2 step 2 ran
        if log.is_file() and "batch 2 2 " in log.read_text():
            break
        time.sleep(0.01)
    assert proc.poll() is None, (
        "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed, _ = read_trace(log)
    (intra,) = [
        p
        for p in (tmp_path / "run" / "save").glob("CKPT*")
        if "intra_epoch" in (p / "CKPT.yaml").read_text()
    ]
    done = int(re.search(r"^step: (\d+)", (intra / "brain.ckpt").read_text(), re.M).group(1))
    resumed = popen_recipe(cmd("run"))
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    assert "Loading a checkpoint from" in text
    want, want_valid = read_trace(tmp_path / "full.log.rank0")
    got, got_valid = read_trace(log)
    assert len(want) == 12 and len({w[0] for w in want}) == 2  # 6 steps in each epoch
    # The resumed run starts right after the checkpointed step of epoch 2: nothing is
    # repeated or skipped, and every batch holds the same utterances in the same order.
    at = want.index(next(w for w in want if w[:2] == (2, done + 1)))
    assert 2 <= done + 1 <= 6 and got[: len(killed)] == killed == want[: len(killed)]
    assert got[len(killed) :] == want[at:] and len(killed) >= at
    assert got_valid == want_valid  # the same dev EERs and learning rates
    # The same logged epoch statistics (loss average, accuracy, w, b; not the timings):
    # the resumed epoch's sums come from the checkpoint.
    logs = [_epoch_stats(tmp_path / n / "train_log.txt") for n in ("full", "run")]
    assert logs[0] == logs[1] and len(logs[0]) == 2
    # Bit-identical final parameters: encoder (with BatchNorm statistics), proxies, w, b.
    final = [torch.load(tmp_path / f"{n}.log.rank0.pt") for n in ("full", "run")]
    assert_same_state(*final)
    assert {"proxies", "w", "b"} <= final[0]["loss_fn"].keys()
    exported = [
        torch.load(tmp_path / n / "model" / "embedding_model.ckpt") for n in ("full", "run")
    ]
    assert_same_state({"m": exported[0]}, {"m": exported[1]})
    assert final_line(text) == final_line(full_text)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(corpus, tmp_path):
    """torchrun, 2 CPU processes: disjoint utterances at every step, the same steps, equal
    parameters on both ranks, one dev EER driving both ranks' learning rate."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out, log = tmp_path / "ddp", tmp_path / "ddp.log"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", *ddp_recipe(corpus, out, log)]
    proc = popen_recipe(cmd)
    text, _ = proc.communicate(timeout=300)  # a collective mismatch hangs: fail instead
    assert proc.returncode == 0, text[-3000:]
    assert_ddp_run(log, out, text)


def test_summarize_results(tmp_path):
    import summarize_results

    logs = {
        ("mp", "1"): "epoch: 1, lr: 2.00e-01, epoch_s: 10.0 - train loss: 3.0, train acc: 0.1, "
        "train w: 10.0, train utt_per_s: 50.0 - valid EER: 30.0\n"
        "epoch: 2, lr: 2.00e-01, epoch_s: 12.0 - train loss: 2.0, train acc: 0.2, "
        "train w: 10.5, train utt_per_s: 70.0 - valid EER: 18.0\n"
        "Epoch loaded: 2 - test EER: 20.00, test minDCF_0.01: 5.00e-01\n",
        ("mp", "2"): "epoch: 1, lr: 2.00e-01, epoch_s: 14.0 - train loss: 3.0, train acc: 0.1, "
        "train w: 10.0, train utt_per_s: 60.0 - valid EER: 30.0\n"
        "Epoch loaded: 1 - test EER: 30.00, test minDCF_0.01: 7.00e-01\n",
        (
            "ap",
            "1",
        ): "epoch: 1, lr: 2.00e-01, epoch_s: 9.0 - train loss: 3.0 - valid EER: 30.0\n",  # no test
    }
    for (loss, seed), text in logs.items():
        (tmp_path / loss / seed).mkdir(parents=True)
        (tmp_path / loss / seed / "train_log.txt").write_text(text)
    table = summarize_results.summarize(tmp_path).splitlines()
    assert len(table) == 3  # header, separator, mp (ap has no test result)
    # EER mean 25, sample std of (20, 30) = 7.07; minDCF 0.6 +- 0.141; epochs 12 +- 2;
    # utt/s 60 +- 10
    assert table[2] == "| mp | 2 (1, 2) | 25.00 ± 7.07 | 0.600 ± 0.141 | 12 ± 2 | 60 ± 10 |"
    # --dev: best dev EERs 18 and 30 -> 24 +- 8.49; last-5 means (30 + 18) / 2 = 24 and 30
    # -> 27 +- 4.24; last w 10.5 and 10.0; no b logged
    table = summarize_results.summarize(tmp_path, dev=True).splitlines()
    assert table[0].startswith("| hparams | seeds | best dev EER % | dev EER % (last 5) | test")
    assert table[2] == (
        "| mp | 2 (1, 2) | 24.00 ± 8.49 | 27.00 ± 4.24 | 25.00 ± 7.07 | 0.600 ± 0.141 "
        "| 10.25 ± 0.35 | - | 12 ± 2 | 60 ± 10 |"
    )


def test_model_is_exported_before_test_scoring(corpus, tmp_path, monkeypatch, recipe_args):
    real = recipe.score_trials

    def failing_on_the_test_list(embeddings, trials):
        if os.path.basename(trials[0].where).startswith("trials.txt:"):
            raise RuntimeError("test scoring failed")
        return real(embeddings, trials)

    monkeypatch.setattr(recipe, "score_trials", failing_on_the_test_list)
    with pytest.raises(RuntimeError, match="test scoring failed"):
        recipe.train(recipe_args(corpus, tmp_path / "run"))
    model = tmp_path / "run" / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "README.md",
        "calibration.json",
        "embedding_model.ckpt",
        "hyperparams.yaml",
        "qmf.json",
    ]
    card = read_model_card(model)  # the dev results are in; the test results never came
    assert "dev" in card["evaluation"] and "test" not in card["evaluation"]


@pytest.mark.slow
def test_training_learns(default_corpus, tmp_path, capsys, final_line):
    """A short run on the full built-in corpus ends clearly below the corpus's untrained
    baseline scorer (cosine of mean log-mel vectors). A reduced ResNetSE34L (channels
    8-16-32-64, 128-d) on 100-frame crops keeps it at about 3.5 minutes on 2 cores; seed 1
    measured 20.85 % against the baseline's 29.25 %. The 2.5-point margin leaves room for
    seed-to-seed spread (about 2.8 points sd in the README's CPU table) without accepting
    a run that did not learn (chance is 50 %, the baseline 29 %)."""
    from data_prep.demo_corpus import baseline_eer

    root, paths = default_corpus
    baseline = 100 * baseline_eer(paths["trials"], paths["wav_root"])
    argv = [
        str(RECIPE / "hparams" / "mp_balance.yaml"),
        "--data_folder",
        str(root),
        "--output_folder",
        str(tmp_path / "run"),
        "--seed",
        "1",
        "--number_of_epochs",
        "20",
        "--crop_frames",
        "100",
        "--emb_dim",
        "128",
        "--embedding_model",
        "!new:maskproxy_losses.ResNetSE34L {channels: [8, 16, 32, 64], emb_dim: 128}",
    ]
    recipe.train(argv)
    test_eer, _ = final_line(capsys.readouterr().out)
    assert test_eer < baseline - 2.5, (test_eer, baseline)

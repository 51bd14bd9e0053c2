"""The training recipe refuses bad input in seconds, before data preparation and training,
with one ``error:`` line, exit code 2 and no traceback; the hostile-but-realistic cases of
issue 21 (resume with other settings, two runs in one folder, damaged state, a full disk,
Ctrl-C, files removed after data preparation) end the same way or in a correct result."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from maskproxy_losses.training.hparams import check_override_keys, load_recipe_hparams
from maskproxy_losses.utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
SCRIPT = RECIPE / "train_speaker_embeddings.py"
MP = RECIPE / "hparams" / "mp.yaml"


def _recipe(cwd, *args):
    """Run the training script on mp.yaml with ``args`` in a subprocess."""
    cmd = [sys.executable, str(SCRIPT), str(MP), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def _run(tmp_path, *args):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    return _recipe(tmp_path, "--data_folder", corpus, "--output_folder", out, *args)


def _on_corpus(corpus, tmp_path, manifests, *args):
    """Run the recipe on the test ``corpus`` (no built-in corpus; 2 dev utterances each)."""
    return _recipe(
        tmp_path,
        *("--builtin_corpus", "False", "--data_folder", corpus, "--manifest_folder", manifests),
        *("--output_folder", tmp_path / "out", "--dev_share", 2, *args),
    )


def _assert_refused(proc, *parts):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, proc.stderr[-2000:]
    for part in parts:
        assert part in proc.stderr, proc.stderr[-2000:]


def test_override_typo_and_unknown_loss_stop_before_data_prep(tmp_path):
    proc = _run(tmp_path, "--speakers_per_bach", "3")
    _assert_refused(
        proc,
        f"{MP}: no key speakers_per_bach (overridden with --speakers_per_bach); "
        "did you mean --speakers_per_batch or --speed_perturb?",
    )
    proc = _run(tmp_path, "--loss_name", "foo")
    _assert_refused(proc, f"{MP}: unknown loss_name 'foo'; choose one of aam, ap, mmp, ")
    assert not (tmp_path / "corpus").exists()  # nothing was generated


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = _recipe(
        tmp_path,
        "--output_folder",
        str(tmp_path / "file"),
        "--data_folder",
        str(tmp_path / "corpus"),
    )
    _assert_refused(
        proc, f"{tmp_path / 'file' / 'save'}: cannot create this folder (Not a directory)"
    )
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        proc = _recipe(tmp_path, "--output_folder", ro / "x")
        _assert_refused(proc, f"{ro / 'x'}: cannot write")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_is_named_not_the_yaml(tmp_path, capsys, monkeypatch):
    argv = [MP, "--data_folder", tmp_path / "corpus", "--output_folder", "/proc/x"]
    _one_error(*_main(argv, capsys), "/proc/x: cannot create this folder (No such file or")
    real = os.makedirs

    def makedirs(path, *args, **kwargs):  # a read-only mount
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", makedirs)
    argv = [MP, "--data_folder", tmp_path / "corpus", "--output_folder", tmp_path / "ro" / "out"]
    line = _one_error(*_main(argv, capsys), "cannot create this folder (Read-only file system)")
    assert line.startswith(f"error: {tmp_path / 'ro' / 'out'}") and "check output_folder" in line


def test_too_few_speakers_names_the_override(corpus, tmp_path):
    proc = _on_corpus(corpus, tmp_path, corpus / "manifests", "--speakers_per_batch", 50)
    _assert_refused(
        proc, "only 6 usable speakers, fewer than speakers_per_batch=50", "--speakers_per_batch N"
    )
    assert not list((tmp_path / "out").glob("save/CKPT*"))  # training never started


def test_one_class_trial_list_stops_before_training(corpus, tmp_path):
    trials = tmp_path / "targets_only.txt"
    lines = [
        line
        for line in (corpus / "veri_list.txt").read_text().splitlines()
        if line.startswith("1 ")
    ]
    trials.write_text("\n".join(lines) + "\n")
    proc = _on_corpus(
        corpus, tmp_path, tmp_path / "manifests", "--trials_list", trials, "--speakers_per_batch", 3
    )
    _assert_refused(proc, f"all {len(lines)} trials have label 1")
    assert not list((tmp_path / "out").glob("save/CKPT*"))


def test_builtin_scale_is_applied_before_references_resolve(tmp_path):
    hparams, overrides = load_recipe_hparams(MP, f"output_folder: {tmp_path}")
    # the yaml's `builtin` block: 20 speakers, 30 epochs, 200-frame crops; epoch_counter's
    # `!ref <number_of_epochs>` sees the scaled value without a patch afterwards
    assert (hparams["speakers_per_batch"], hparams["number_of_epochs"]) == (20, 30)
    assert hparams["epoch_counter"].limit == 30 and hparams["crop_frames"] == 200
    assert "speakers_per_batch: 20" in overrides
    hparams, _ = load_recipe_hparams(MP, f"output_folder: {tmp_path}\nnumber_of_epochs: 3")
    assert hparams["epoch_counter"].limit == 3  # the command line wins
    hparams, _ = load_recipe_hparams(MP, f"output_folder: {tmp_path}\nbuiltin_corpus: False")
    assert hparams["epoch_counter"].limit == 500 and hparams["speakers_per_batch"] == 200


def test_check_override_keys_lists_every_typo():
    with pytest.raises(InputError) as err:
        check_override_keys(["lr", "sed", "zzz"], ["lr", "seed", "speakers_per_batch"], "x.yaml")
    assert err.value.problems == [
        "x.yaml: no key sed (overridden with --sed); did you mean --seed?",
        "x.yaml: no key zzz (overridden with --zzz)",
    ]


# --------------------------------------------------- issue 21: hostile but realistic
def _main(argv, capsys):
    """The recipe's command line in this process, as if in a process of its own: the log
    handlers SpeechBrain's set-up adds are removed after it. ``(exit code, stderr)``."""
    import logging

    import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (conftest.py)

    before = list(logging.getLogger().handlers)
    try:
        code = recipe.main([str(a) for a in argv])
    finally:
        for handler in logging.getLogger().handlers[:]:
            if handler not in before:
                logging.getLogger().removeHandler(handler)
                handler.close()
    return code, capsys.readouterr().err


def _one_error(code, err, *parts):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def _snapshot(folder):
    """Every file of ``folder`` but the lock: ``{relative path: (mtime_ns, bytes)}``."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "fp16"], "--precision fp16: float16 training needs a CUDA device"),
        (["--lr", "-0.1"], "--lr -0.1: must be a number above 0"),
        (["--number_of_epochs", "0"], "--number_of_epochs 0: must be an integer of at least 1"),
        (["--crop_frames", "0"], "--crop_frames 0: must be an integer of at least 4 (a crop"),
        (["--lr", "0.1", "--lr", "0.2"], "--lr is given twice (0.1 and 0.2); give each option"),
        (["--seed=1", "--seed", "1"], "--seed is given twice (1 and 1)"),
        (["--device", "cuda:0"], "--device cuda:0: CUDA is not available on this machine"),
        (["--precision", "fp8"], "--precision fp8: must be one of fp32, fp16, bf16 or auto"),
        (["--grad_accumulation_factor", "0"], "--grad_accumulation_factor 0: must be an integ"),
        (["--optimizer_step_limit", "x"], "--optimizer_step_limit x: must be an integer of"),
    ],
)
def test_options_and_environment_are_checked_before_any_work(tmp_path, capsys, args, message):
    if args[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = [MP, "--data_folder", tmp_path / "corpus", "--output_folder", tmp_path / "out", *args]
    _one_error(*_main(argv, capsys), message)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "out" / "run.json").exists()


def test_zero_epochs_in_ap_yaml_is_a_range_error_not_a_division_by_zero(tmp_path, capsys):
    argv = [RECIPE / "hparams" / "ap.yaml", "--output_folder", tmp_path, "--number_of_epochs", 0]
    _one_error(*_main(argv, capsys), "--number_of_epochs 0: must be an integer of at least 1")


def test_resume_with_other_settings_or_data_is_refused_and_nothing_rewritten(
    corpus, tmp_path, capsys, recipe_args
):
    out = tmp_path / "run"
    code, err = _main(recipe_args(corpus, out, precision="auto"), capsys)  # auto: the yaml's
    assert code == 0, err[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["settings"]["loss_name"] == "mp_balance" and record["data"]["speakers"]["count"]
    before = _snapshot(out)
    changed = recipe_args(corpus, out, loss_name="mmp_balance", emb_dim=32, number_of_epochs=2)
    _one_error(
        *_main(changed, capsys),
        f"error: {out}: this output folder holds a run with other settings (emb_dim 64 -> 32; "
        'loss_name "mp_balance" -> "mmp_balance"); nothing was changed in it.',
        "--output_folder NEW",
    )
    assert _snapshot(out) == before  # hyperparams.yaml, logs, checkpoints, record: as they were
    for option, change in [
        (["--grad_accumulation_factor", "2"], "grad_accumulation_factor 1 -> 2"),
        (["--max_grad_norm", "0.001"], "max_grad_norm 5.0 -> 0.001"),
        (["--remove_vector_weight_decay"], "remove_vector_weight_decay false -> true"),
    ]:  # SpeechBrain's run options that change training are recorded too
        _one_error(*_main(recipe_args(corpus, out) + option, capsys), f"settings ({change})")
    assert _snapshot(out) == before
    lines = (corpus / "train_list.txt").read_text().splitlines(keepends=True)
    other_list = tmp_path / "fewer_speakers.txt"
    other_list.write_text("".join(line for line in lines if not line.startswith("id00001 ")))
    other = recipe_args(corpus, out, train_list=other_list, number_of_epochs=2)
    _one_error(*_main(other, capsys), "other settings (train_list sha1 ")
    assert _snapshot(out) == before
    # what may change on resume: workers, precision, where the list lies, ... (the
    # 1-epoch run is complete: the resume evaluates and exports its best checkpoint again)
    same_list = tmp_path / "moved_list.txt"
    same_list.write_text("".join(lines))
    again = recipe_args(corpus, out, train_list=same_list, precision="fp32", num_workers=1)
    code, err = _main(again, capsys)
    assert code == 0, err[-3000:]
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1, lr:") == 1 and log.count("Epoch loaded: 1") == 2
    assert json.loads((out / "run.json").read_text()) == record  # recorded once


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_stops_at_once(corpus, tmp_path, recipe_args):
    argv = [sys.executable, str(SCRIPT), *recipe_args(corpus, tmp_path / "run", number_of_epochs=2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKPROXY_DEBUG": ""}
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "run.lock").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started"
    _one_error(
        second.returncode,
        second.stderr,
        f"run.lock: another run (pid {first.pid}, started ",
        "is writing to this output folder",
    )
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "test EER" in out
    assert not (tmp_path / "run" / "run.lock").exists()  # released at exit


@pytest.mark.slow
def test_runs_sharing_a_manifest_folder_each_train_on_their_own_list(
    corpus, tmp_path, capsys, caplog, recipe_args
):
    """Run A trains; B, started beside it on the same manifest folder with a list one line
    shorter, is refused naming A before its data preparation (A trained on B's list and
    recorded its own); C, with A's list, reuses the manifests beside A (JOBS=2 of
    run_all_losses.sh). A trains on the data its run.json records."""
    from maskproxy_losses.training.run_folder import data_fingerprint

    man = tmp_path / "man"
    argv = recipe_args(corpus, tmp_path / "A", manifest_folder=man, number_of_epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKPROXY_DEBUG": ""}
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not list(man.glob(".readers/*.json")) and time.time() < deadline:
        time.sleep(0.05)
    lines = (corpus / "train_list.txt").read_text().splitlines(keepends=True)
    fewer = tmp_path / "tl_minus1.txt"
    fewer.write_text("".join(lines[:-1]))
    other = recipe_args(corpus, tmp_path / "B", manifest_folder=man, train_list=fewer)
    _one_error(
        *_main(other, capsys),
        f"error: {os.path.realpath(man)}: another run (pid {first.pid}, started ",
        f"output folder {tmp_path / 'A'}) trains on these manifests",
    )
    assert first.poll() is None, "A ended before B was refused"
    with caplog.at_level("INFO", logger="data_prep.voxceleb"):
        code, err = _main(recipe_args(corpus, tmp_path / "C", manifest_folder=man), capsys)
    assert code == 0, err[-3000:]
    assert f"{man} is up to date; skipping data preparation" in caplog.text
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    recorded = json.loads((tmp_path / "A" / "run.json").read_text())["data"]
    manifests = {k: man / f"{k[:-4]}.csv" for k in ("train_csv", "dev_csv")}
    assert recorded == data_fingerprint(manifests)
    assert f"{len(lines) - recorded['dev']['utterances']} utterances" in out


def test_damaged_checkpoint_and_label_encoder_fall_back(corpus, tmp_path, capsys, recipe_args):
    out = tmp_path / "run"
    code, err = _main(recipe_args(corpus, out, number_of_epochs=2, average_checkpoints=2), capsys)
    assert code == 0, err[-3000:]
    checkpoints = sorted((out / "save").glob("CKPT+*"))
    assert len(checkpoints) == 2
    newest = checkpoints[-1] / "embedding_model.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    (out / "save" / "label_encoder.txt").write_text("")  # emptied
    code, err = _main(recipe_args(corpus, out, number_of_epochs=3, average_checkpoints=2), capsys)
    assert code == 0, err[-3000:]
    log = (out / "log.txt").read_text()
    assert f"damaged checkpoint {newest}" in log and f"resuming from {checkpoints[0]}" in log
    assert "label_encoder.txt: empty or unreadable; rebuilt from" in log
    assert (out / "save" / f"damaged+{checkpoints[-1].name}").is_dir()
    epochs = re.findall(r"^epoch: (\d+),", (out / "train_log.txt").read_text(), re.M)
    assert epochs == ["1", "2", "2", "3"]  # epoch 2 trained again from epoch 1's checkpoint


def test_a_full_disk_stops_before_training_and_a_failed_save_leaves_nothing(
    corpus, tmp_path, capsys, recipe_args, monkeypatch
):
    from maskproxy_losses.training import checkpointing

    real = checkpointing.shutil.disk_usage
    monkeypatch.setattr(
        checkpointing.shutil, "disk_usage", lambda p: real(p)._replace(free=100_000)
    )
    out = tmp_path / "run"
    _one_error(
        *_main(recipe_args(corpus, out), capsys),
        f"{out / 'save'}: 0.1 MB free on its disk, a checkpoint needs about",
        "run the same command again: it resumes",
    )
    assert not (out / "train_log.txt").exists()  # no epoch was trained
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", real)
    import speechbrain.utils.checkpoints as sb_checkpoints

    def full(obj, path):  # the disk fills up during the save
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setitem(sb_checkpoints.DEFAULT_SAVE_HOOKS, torch.nn.Module, full)
    first_step = recipe_args(corpus, out, ckpt_interval_steps=1)  # a save after one step
    line = _one_error(*_main(first_step, capsys), "cannot save a checkpoint")
    assert line.startswith(f"error: {out / 'save' / 'CKPT+'}") and "No space left" in line
    assert not list((out / "save").glob("CKPT+*"))  # no partial checkpoint folder


def test_a_file_removed_after_data_prep_is_named_before_training(corpus, tmp_path, capsys):
    data = tmp_path / "corpus"
    shutil.copytree(corpus, data, ignore=shutil.ignore_patterns("manifests"))
    args = ["--builtin_corpus", "False", "--data_folder", data, "--dev_share", 2]
    argv = [MP, *args, "--output_folder", tmp_path / "out", "--speakers_per_batch", 50]
    _one_error(*_main(argv, capsys), "fewer than speakers_per_batch=50")  # after the manifests
    test_csv = data / "manifests" / "test.csv"
    gone = test_csv.read_text().splitlines()[3].split(",")[2]
    os.remove(gone)
    _one_error(
        *_main(argv, capsys),
        f"{test_csv}:4: missing since data preparation: {gone}; prepare again",
    )


def test_a_malicious_pretrained_checkpoint_is_one_line(corpus, tmp_path, capsys, recipe_args):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    model = tmp_path / "model"
    model.mkdir()
    (model / "embedding_model.ckpt").write_bytes(pickle.dumps({"w": Boom()}))
    argv = recipe_args(corpus, tmp_path / "run", pretrained=model)
    _one_error(*_main(argv, capsys), "embedding_model.ckpt: not a readable weights-only checkpoint")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_rerun_resumes(corpus, tmp_path, recipe_args):
    argv = [
        sys.executable,
        str(SCRIPT),
        *recipe_args(corpus, tmp_path / "run", number_of_epochs=4, ckpt_interval_steps=1),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKPROXY_DEBUG": "", "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        argv, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    save, deadline = tmp_path / "run" / "save", time.time() + 300
    while time.time() < deadline and run.poll() is None:  # an intra-epoch checkpoint exists
        if any("intra_epoch" in p.read_text() for p in save.glob("CKPT+*/CKPT.yaml")):
            break
        time.sleep(0.02)
    assert run.poll() is None, "the run ended before it could be interrupted"
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in err
    assert not (tmp_path / "run" / "run.lock").exists()
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Loading a checkpoint from" in again.stdout + again.stderr


def test_weights_gone_non_finite_on_the_last_step_never_reach_a_checkpoint(
    corpus, tmp_path, capsys, recipe_args, monkeypatch
):
    """The last step of an epoch leaves NaN weights (no later step's guard sees them): the
    dev pass ends the run in one error line; no checkpoint and no model are written."""
    import train_speaker_embeddings as recipe

    def poison_after_the_last_step(self, batch, outputs, loss, should_step):
        if self.step == len(self.train_sampler):
            with torch.no_grad():
                for p in self.modules.embedding_model.parameters():
                    p.fill_(float("nan"))

    monkeypatch.setattr(recipe.SpeakerBrain, "on_fit_batch_end", poison_after_the_last_step)
    out = tmp_path / "run"
    _one_error(*_main(recipe_args(corpus, out), capsys), "NaN")
    assert not list((out / "save").glob("CKPT+*")) and not (out / "model").exists()

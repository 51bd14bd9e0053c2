"""The training run's folder and options, piece by piece: the lock, the recorded settings
and data, the label encoder, log-file errors, option ranges and repeats, the device."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from maskproxy_losses.training import run_folder as rf
from maskproxy_losses.training import run_lock
from maskproxy_losses.training.options import (
    MIN_CROP_FRAMES,
    check_device,
    check_values,
    split_arguments,
)
from maskproxy_losses.utils.errors import InputError


# ------------------------------------------------------------------------ the lock
def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_is_named_a_dead_one_taken_over(tmp_path, capsys):
    path = tmp_path / rf.LOCK_FILE
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"pid": sleeper.pid, "host": run_lock.socket.gethostname(), "started": "then"}
        owner["start_ticks"] = run_lock._start_ticks(sleeper.pid)
        path.write_text(json.dumps(owner))
        with pytest.raises(InputError) as err:
            rf.RunLock(path).acquire()
        assert str(err.value) == (
            f"{path}: another run (pid {sleeper.pid}, started then) is writing to this "
            "output folder; wait for it to end or train into another --output_folder"
        )
        assert json.loads(path.read_text())["pid"] == sleeper.pid  # untouched
        # the same pid, but another process (pid reuse): its start time tells
        path.write_text(json.dumps({**owner, "start_ticks": owner["start_ticks"] - 1}))
        lock = rf.RunLock(path)
        lock.acquire()
        assert json.loads(path.read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    dead = _dead_pid()
    path.write_text(json.dumps({**owner, "pid": dead, "start_ticks": None}))
    lock = rf.RunLock(path)
    lock.acquire()
    assert f"taking over the lock of pid {dead}, which no longer runs" in capsys.readouterr().err
    lock.release()
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == [".run.lock.guard"]


def test_a_lock_from_another_host_is_not_guessed_at(tmp_path):
    path = tmp_path / rf.LOCK_FILE
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(InputError, match="another run \\(pid 1 on host elsewhere, started then"):
        rf.RunLock(path).acquire()


def test_release_leaves_another_owners_lock(tmp_path):
    lock = rf.RunLock(tmp_path / rf.LOCK_FILE)
    lock.acquire()
    (tmp_path / rf.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "h"}))  # taken over
    lock.release()
    assert (tmp_path / rf.LOCK_FILE).exists()


# ------------------------------------------------------------- settings and data
YAML = """seed: 3
loss_name: mp
emb_dim: 64
number_of_epochs: 5
num_workers: 1
output_folder: !ref results/<seed>
model: !new:torch.nn.Linear
    in_features: !ref <emb_dim>
    out_features: 2
builtin:
    crop_frames: 200
"""


def test_run_settings_keep_tags_and_leave_out_what_may_change(tmp_path):
    hp = tmp_path / "x.yaml"
    hp.write_text(YAML)
    base = rf.run_settings(hp, "")
    assert base == {
        "seed": 3,
        "loss_name": "mp",
        "emb_dim": 64,
        "model": {
            "!new:torch.nn.Linear": {"in_features": {"!ref": "<emb_dim>"}, "out_features": 2}
        },
        "builtin": {"crop_frames": 200},
        **RUN_OPTION_DEFAULTS,
    }
    same = rf.run_settings(hp, "number_of_epochs: 9\nnum_workers: 4\noutput_folder: /x")
    assert rf.differences(base, same) == []
    other = rf.run_settings(
        hp,
        "emb_dim: 128\nmodel: !new:torch.nn.Bilinear {in_features: 2}\nbuiltin: {crop_frames: 100}",
    )
    assert rf.differences(base, other) == [
        "builtin.crop_frames 200 -> 100",
        "emb_dim 64 -> 128",
        'model "!new:torch.nn.Linear" -> "!new:torch.nn.Bilinear"',
        'model.in_features "!ref <emb_dim>" -> 2',
        "model.out_features 2 -> (absent)",
    ]
    train_list = tmp_path / "list.txt"
    train_list.write_text("id1 a.wav\n")
    with_list = rf.run_settings(hp, "", {"train_list": str(train_list)})
    train_list.write_text("id1 a.wav\nid2 b.wav\n")
    changed = rf.run_settings(hp, "", {"train_list": str(train_list)})
    (diff,) = rf.differences(with_list, changed)
    assert diff.startswith("train_list sha1 ")


RUN_OPTION_DEFAULTS = {
    "grad_accumulation_factor": 1,
    "max_grad_norm": 5.0,
    "skip_nonfinite_grads": False,
    "optimizer_step_limit": None,
    "remove_vector_weight_decay": False,
}


def test_run_options_that_change_training_are_recorded_and_compared(tmp_path):
    hp = tmp_path / "x.yaml"
    hp.write_text(YAML + "max_grad_norm: 2.0\n")
    _, run_opts, _ = split_arguments([str(hp), "--ckpt_interval_steps", "5"])
    base = rf.run_settings(hp, "", run_opts=run_opts)
    assert {k: base[k] for k in RUN_OPTION_DEFAULTS} == {
        **RUN_OPTION_DEFAULTS,
        "max_grad_norm": 2.0,
    }
    assert "ckpt_interval_steps" not in base  # intervals, logging, precision may change
    argv = [str(hp), "--grad_accumulation_factor", "2", "--skip_nonfinite_grads"]
    argv += ["--optimizer_step_limit", "9", "--remove_vector_weight_decay", "--precision", "bf16"]
    changed = rf.run_settings(hp, "", run_opts=split_arguments(argv)[1])
    assert rf.differences(base, changed) == [
        "grad_accumulation_factor 1 -> 2",
        "optimizer_step_limit null -> 9",
        "remove_vector_weight_decay false -> true",
        "skip_nonfinite_grads false -> true",
    ]
    # a folder recorded before these were: its record holds the defaults
    out = tmp_path / "out"
    (out / "save" / "CKPT+1").mkdir(parents=True)
    (out / "save" / "CKPT+1" / "CKPT.yaml").write_text("x: 1\n")
    (out / rf.RECORD_FILE).write_text(json.dumps({"settings": {"seed": 3}}))
    hparams = {"output_folder": str(out), "save_folder": str(out / "save")}
    rf.RunFolder(hparams, {"seed": 3, **RUN_OPTION_DEFAULTS}).open().release()
    other = {"seed": 3, **RUN_OPTION_DEFAULTS, "max_grad_norm": 0.001}
    with pytest.raises(InputError, match=r"other settings \(max_grad_norm 5.0 -> 0.001\)"):
        rf.RunFolder(hparams, other).open()


def _manifests(tmp_path, rows, dev=(("d1", "s1", "1.0"),)):
    out = {}
    for key, table in (("train_csv", rows), ("dev_csv", dev)):
        path = tmp_path / f"{key}.csv"
        lines = ["ID,duration,wav,spk_id"] + [f"{i},{d},/x/{i}.wav,{s}" for i, s, d in table]
        path.write_text("\n".join(lines) + "\n")
        out[key] = str(path)
    return out


def test_data_fingerprint_ignores_where_the_data_lie(tmp_path):
    rows = [("u1", "s1", "1.0"), ("u2", "s2", "2.0")]
    a = rf.data_fingerprint(_manifests(tmp_path, rows))
    path = tmp_path / "train_csv.csv"
    path.write_text(path.read_text().replace("/x/", "/moved/"))
    assert rf.data_fingerprint(_manifests(tmp_path, rows)) == a
    b = rf.data_fingerprint(_manifests(tmp_path, rows + [("u3", "s3", "1.0")]))
    assert rf._data_differences(a, b) == ["train.csv 2 -> 3 utterances", "2 -> 3 training speakers"]
    c = rf.data_fingerprint(_manifests(tmp_path, [("u1", "s1", "1.0"), ("u2", "s2", "2.5")]))
    assert rf._data_differences(a, c) == ["train.csv 2 -> 2 utterances (other rows)"]


def _folder(tmp_path, rows, record_data=None, checkpoint=True):
    out = tmp_path / "out"
    (out / "save").mkdir(parents=True, exist_ok=True)
    if checkpoint:
        (out / "save" / "CKPT+1").mkdir(exist_ok=True)
        (out / "save" / "CKPT+1" / "CKPT.yaml").write_text("x: 1\n")
    manifests = _manifests(tmp_path, rows)
    if record_data is not None:
        record = {"settings": {}, "data": record_data}
        (out / rf.RECORD_FILE).write_text(json.dumps(record))
    hp = {"output_folder": str(out), "save_folder": str(out / "save")}
    folder = rf.RunFolder(hp, {}).open()
    return folder, manifests, out / "save" / "label_encoder.txt"


def _encoder(path, speakers):
    from speechbrain.dataio.encoder import CategoricalEncoder

    enc = CategoricalEncoder()
    enc.update_from_iterable(speakers)
    enc.save(path)


def test_label_encoder_of_other_speakers_is_refused(tmp_path):
    rows = [("u1", "s1", "1.0"), ("u2", "s2", "1.0")]
    folder, manifests, encoder = _folder(tmp_path, rows)
    _encoder(encoder, ["s1", "s9"])
    with pytest.raises(InputError) as err:
        folder.check_data(manifests)
    assert str(err.value).startswith(
        f"{encoder}: holds 2 speakers, the training data 2 (1 not in it: s2); this folder"
    )
    folder.release()


def test_empty_label_encoder_is_rebuilt_only_when_the_data_match(tmp_path, caplog):
    rows = [("u1", "s1", "1.0"), ("u2", "s2", "1.0")]
    data = rf.data_fingerprint(_manifests(tmp_path, rows))
    folder, manifests, encoder = _folder(tmp_path, rows, record_data=data)
    encoder.write_text("")
    folder.check_data(manifests)
    assert not encoder.exists() and "empty or unreadable; rebuilt from" in caplog.text
    folder.release()
    folder, manifests, encoder = _folder(tmp_path, rows)  # no record of the data
    (tmp_path / "out" / rf.RECORD_FILE).unlink()
    folder.record = None
    encoder.write_text("'s1' => 0\n")  # cut short
    with pytest.raises(InputError, match="empty or unreadable, and this folder has no record"):
        folder.check_data(manifests)
    folder.release()


def test_a_new_run_records_settings_and_data_once(tmp_path):
    rows = [("u1", "s1", "1.0"), ("u2", "s2", "1.0")]
    folder, manifests, _ = _folder(tmp_path, rows, checkpoint=False)
    folder.check_data(manifests)
    record = json.loads((tmp_path / "out" / rf.RECORD_FILE).read_text())
    assert record["data"] == rf.data_fingerprint(manifests) and record["settings"] == {}
    folder.release()


def test_a_resume_on_changed_manifests_is_refused_naming_them(tmp_path):
    """The manifests a run trained on changed before its resume (another run prepared
    the folder from another list): refused, naming the manifest and what changed."""
    rows = [("u1", "s1", "1.0"), ("u2", "s2", "1.0"), ("u3", "s2", "1.0")]
    recorded = rf.data_fingerprint(_manifests(tmp_path, rows))
    folder, manifests, _ = _folder(tmp_path, rows[:2], record_data=recorded)
    with pytest.raises(InputError) as info:
        folder.check_data(manifests)
    assert str(info.value).startswith(
        f"{tmp_path / 'out'}: this output folder holds a run trained on other data "
        f"({manifests['train_csv']} 3 -> 2 utterances); nothing was changed in it."
    )


def test_partial_checkpoints_are_removed_at_start(tmp_path):
    save = tmp_path / "save"
    for name, files in (("CKPT+a", ["CKPT.yaml", "m.ckpt"]), ("CKPT+b", ["CKPT.yaml.pending"])):
        (save / name).mkdir(parents=True)
        for f in files:
            (save / name / f).write_text("x")
    assert rf.remove_partial_checkpoints(save) == ["CKPT+b"]
    assert sorted(p.name for p in save.iterdir()) == ["CKPT+a"]


# --------------------------------------------------------------- logs on a full disk
def test_a_log_file_that_fails_is_one_note_not_a_traceback_per_line(tmp_path, capsys):
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.stream = open("/dev/full", "w")  # every write: ENOSPC
    root.addHandler(handler)
    folder = rf.RunFolder({"output_folder": str(tmp_path), "save_folder": str(tmp_path)}, {})
    try:
        folder.started()
        for i in range(3):
            logging.getLogger("x").warning("line %d", i)
    finally:
        root.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.count("note: cannot write the log file") == 1 and "Traceback" not in err
    assert "No space left on device" in err


def test_train_log_write_errors_name_the_file(tmp_path):
    from speechbrain.utils.train_logger import FileTrainLogger

    train_log = FileTrainLogger("/dev/full")
    folder = rf.RunFolder(
        {"output_folder": str(tmp_path), "save_folder": str(tmp_path), "train_logger": train_log},
        {},
    )
    folder.started()
    with pytest.raises(OSError) as err:
        train_log.log_stats({"epoch": 1}, train_stats={"loss": 1.0})
    assert err.value.filename == "/dev/full" and "No space left" in err.value.strerror


# ------------------------------------------------------------------------ options
def test_options_given_twice_and_precision_auto():
    with pytest.raises(InputError, match="--device is given twice \\(cpu and cuda:1\\)"):
        split_arguments(["mp.yaml", "--device", "cpu", "--device=cuda:1"])
    _, run_opts, overrides = split_arguments(["mp.yaml", "--precision=auto", "--noprogressbar"])
    assert overrides == "precision: auto" and run_opts.noprogressbar
    _, run_opts, overrides = split_arguments(["mp.yaml", "--precision", "bf16", "--lr", "-1"])
    assert run_opts.precision == "bf16" and overrides == "lr: -1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--precision", "fp8"], "--precision fp8: must be one of fp32, fp16, bf16 or auto"),
        (["--precision", "FP32"], "--precision FP32: must be one of fp32, fp16, bf16 or auto"),
        (["--eval_precision", "bad"], "--eval_precision bad: must be one of fp32, fp16, bf16"),
        (["--max_grad_norm", "abc"], "--max_grad_norm abc: must be a number"),
        (["--nonfinite_patience", "x"], "--nonfinite_patience x: must be an integer"),
        (["--device"], "--device: expected one argument"),
        ([], "no hparams file given"),
    ],
)
def test_speechbrain_parser_errors_are_one_input_error(args, message, capsys):
    argv = ["mp.yaml", *args] if args else []
    with pytest.raises(InputError) as err:
        split_arguments(argv)
    assert str(err.value) == message or str(err.value).startswith(message)
    assert capsys.readouterr().err == ""  # no argparse usage text


def test_run_options_that_break_a_run_are_range_checked():
    bad = {
        "--grad_accumulation_factor 0": "an integer of at least 1",  # divides by zero
        "--grad_accumulation_factor -1": "an integer of at least 1",  # gradient ascent
        "--max_grad_norm 0": "a number above 0",  # clips every gradient to zero
        "--max_grad_norm -1": "a number above 0",  # turns the update around
        "--optimizer_step_limit 0": "an integer of at least 1",  # trains nothing
        "--optimizer_step_limit 2.5": "an integer of at least 1",
        "--ckpt_interval_steps -2": "an integer of at least 0",
        "--ckpt_interval_minutes -1": "a number of at least 0",
    }
    for given, what in bad.items():
        with pytest.raises(InputError, match=f"must be {what}$") as err:
            split_arguments(["mp.yaml", *given.split()])
        assert str(err.value).startswith(given.split()[0] + " ")
    with pytest.raises(InputError, match="give one of them"):
        split_arguments(["mp.yaml", "--ckpt_interval_minutes", "5", "--ckpt_interval_steps", "9"])
    _, run_opts, _ = split_arguments(["mp.yaml", "--optimizer_step_limit", "7"])
    assert run_opts.optimizer_step_limit == 7  # an integer (SpeechBrain's parser: a string)
    _, run_opts, _ = split_arguments(["mp.yaml", "--max_grad_norm", "inf"])
    assert run_opts.max_grad_norm == float("inf")  # no clipping: fine
    assert check_values({"grad_accumulation_factor": 0}) == [
        "--grad_accumulation_factor 0: must be an integer of at least 1"
    ]  # the same keys in a yaml


def test_value_ranges():
    assert MIN_CROP_FRAMES == 4  # 4 * 160 + 240 = 880 >= 800 samples, the model's minimum
    problems = check_values(
        {
            "lr": 0,
            "number_of_epochs": 2.5,
            "crop_frames": 0,
            "num_workers": -1,
            "seed": "x",
            "augment_prob": 1.5,
            "snr_low": 20,
            "snr_high": 10,
            "utts_per_speaker": 3,
            "max_per_speaker": 2,
            "dev_share": 1.5,
            "emb_dim": "<x>",  # a !ref: checked where it comes from
        }
    )
    keys = [p.split()[0] for p in problems]
    assert keys == [
        "--lr",
        "--number_of_epochs",
        "--crop_frames",
        "--num_workers",
        "--seed",
        "--augment_prob",
        "--dev_share",
        "--snr_low",
        "--max_per_speaker",
    ], problems
    assert check_values({"lr": "1e-3", "number_of_epochs": "3", "crop_frames": 4}) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_and_precision_without_cuda():
    with pytest.raises(InputError, match="--device cuda:0: CUDA is not available on this"):
        check_device("cuda:0", "fp32")
    with pytest.raises(InputError, match="--precision fp16: float16 training needs a CUDA"):
        check_device(None, "fp16")
    with pytest.raises(InputError, match="--device gpu0: not a torch device"):
        check_device("gpu0", "fp32")
    check_device("cpu", "bf16")
    check_device(None, "fp32")


def test_a_file_system_without_hard_links_or_locks_still_gets_a_lock(tmp_path, monkeypatch):
    import fcntl

    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")

    def no_flock(f, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(run_lock.os, "link", no_link)
    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = rf.RunLock(tmp_path / rf.LOCK_FILE)
    lock.acquire()
    assert json.loads((tmp_path / rf.LOCK_FILE).read_text())["pid"] == os.getpid()
    owner = {"pid": 1, "host": "elsewhere"}
    (tmp_path / rf.LOCK_FILE).write_text(json.dumps(owner))
    with pytest.raises(InputError, match="on host elsewhere"):
        rf.RunLock(tmp_path / rf.LOCK_FILE).acquire()

"""data_prep: manifests, trial lists, error reports, reuse, convert, CLI failures."""

import csv
import errno
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep import audio_check
from data_prep.demo_corpus import generate_corpus
from data_prep.transcode import FfmpegNotFoundError, convert_tree
from data_prep.voxceleb import prepare_voxceleb
from maskproxy_losses.cli import main as cli_main
from maskproxy_losses.data.trials import read_trials
from maskproxy_losses.utils.errors import InputError

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def write_wav(path, seconds=0.2, sr=SR, channels=1):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = int(seconds * sr)
    data = np.random.default_rng(len(path)).normal(0, 0.1, (n, channels) if channels > 1 else n)
    sf.write(path, data, sr, subtype="PCM_16")


@pytest.fixture
def vox(tmp_path):
    """3 training speakers x 2 sessions x 2 utterances, 2 test speakers x 3 utterances."""
    train, test = tmp_path / "train", tmp_path / "test"
    lines = []
    for s in range(1, 4):
        for sess in ("s0", "s1"):
            for u in (1, 2):
                rel = f"id0000{s}/{sess}/0000{u}.wav"
                write_wav(str(train / rel))
                lines.append(f"id0000{s} {rel}\n")
    test_files = [f"id1000{s}/v0/0000{u}.wav" for s in (1, 2) for u in (1, 2, 3)]
    for rel in test_files:
        write_wav(str(test / rel))
    trials = [
        (1, test_files[0], test_files[1]),
        (0, test_files[0], test_files[3]),
        (1, test_files[4], test_files[5]),
        (0, test_files[2], test_files[5]),
    ]
    (tmp_path / "train_list.txt").write_text("".join(lines))
    (tmp_path / "trials.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in trials))
    return tmp_path


def prep(vox, **kw):
    args = dict(
        output_dir=str(vox / "out"),
        train_root=str(vox / "train"),
        test_root=str(vox / "test"),
        train_list=str(vox / "train_list.txt"),
        trials=str(vox / "trials.txt"),
        num_workers=1,
    )
    args.update(kw)
    return prepare_voxceleb(**args)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


def expect_error(vox, *fragments, **kw):
    with pytest.raises(InputError) as info:
        prep(vox, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not (vox / "out").exists(), "nothing may be written on error"
    return info.value


# ----------------------------------------------------------------------------- happy path


def test_outputs_layout(vox):
    out = prep(vox, dev_share=2)
    assert sorted(os.listdir(vox / "out")) == sorted(
        ["train.csv", "dev.csv", "dev_trials.txt", "test.csv", "trials.txt", "prep_options.json"]
        + [".prep.lock", ".readers.lock"]  # preparation's lock, runs' holds (run_lock.py)
    )
    train, dev = read_csv(out["train_csv"]), read_csv(out["dev_csv"])
    assert list(train[0]) == ["ID", "duration", "wav", "spk_id", "size", "mtime_ns"]
    assert {r["ID"] for r in train + dev} >= {"id00001--s0--00001", "id00003--s1--00002"}
    assert all(
        os.path.isabs(r["wav"]) and abs(float(r["duration"]) - 0.2) < 1e-6 for r in train + dev
    )
    for r in train + dev:  # the file as it was when prepared, for the checks on reuse
        st = os.stat(r["wav"])
        assert (int(r["size"]), int(r["mtime_ns"])) == (st.st_size, st.st_mtime_ns)
    for spk in ("id00001", "id00002", "id00003"):
        assert sum(r["spk_id"] == spk for r in train) == 2
        assert sum(r["spk_id"] == spk for r in dev) == 2
    test = read_csv(out["test_csv"])
    assert len(test) == 6 and {r["spk_id"] for r in test} == {"id10001", "id10002"}
    trials = [line.split() for line in open(out["trials"])]
    assert [t[0] for t in trials] == ["1", "0", "1", "0"]
    assert trials[0][1] == "../test/id10001/v0/00001.wav"  # relative to the output folder
    full = [os.path.abspath(os.path.join(vox / "out", p)) for t in trials for p in t[1:]]
    assert full[0] == str(vox / "test" / "id10001/v0/00001.wav")
    assert set(full) == {r["wav"] for r in test}


def test_dev_trials_balanced(vox):
    out = prep(vox, dev_share=2, n_dev_trials=100)
    spk = {r["wav"]: r["spk_id"] for r in read_csv(out["dev_csv"])}
    trials, problems = read_trials(out["dev_trials"])
    labels = [t[0] for t in trials]
    assert problems == [] and labels.count(1) == labels.count(0) == 3  # 3 speakers x 1 pair
    for label, _, _, a, b, _ in trials:
        assert (spk[a] == spk[b]) == (label == 1)


def test_no_dev_trials_is_warned(vox, caplog):
    lines = (vox / "train_list.txt").read_text().splitlines(keepends=True)
    (vox / "three.txt").write_text("".join(x for x in lines if "s1/00002" not in x))
    out = prep(vox, train_list=str(vox / "three.txt"), dev_share=2, n_dev_trials=100)
    assert read_trials(out["dev_trials"]) == ([], [])  # 3 utterances: 1 to dev each
    assert "no dev trials: 3 dev utterance(s) make no same-speaker pair" in caplog.text
    caplog.clear()
    prep(vox, output_dir=str(vox / "out4"), dev_share=2, n_dev_trials=100)
    assert "no dev trials" not in caplog.text


def test_non_voxceleb_test_paths_get_empty_speaker(vox):
    os.rename(vox / "test" / "id10001", vox / "test" / "alice")
    text = (vox / "trials.txt").read_text().replace("id10001", "alice")
    (vox / "trials.txt").write_text(text)
    out = prep(vox)
    assert {r["spk_id"] for r in read_csv(out["test_csv"])} == {"", "id10002"}


def test_directory_scan(vox):
    os.remove(vox / "train_list.txt")
    write_wav(str(vox / "train" / "id00004" / "a" / "x.flac"))
    out = prep(vox, train_list=None, dev_share=0)
    rows = read_csv(out["train_csv"])
    assert len(rows) == 13 and read_csv(out["dev_csv"]) == []
    assert {r["spk_id"] for r in rows} == {"id00001", "id00002", "id00003", "id00004"}
    assert "id00004--a--x" in {r["ID"] for r in rows}
    assert open(out["dev_trials"]).read() == ""


def test_round_trip_through_speechbrain(tmp_path):
    import speechbrain as sb
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain.dataio.dataio import read_audio
    from speechbrain.dataio.dataset import DynamicItemDataset

    corpus = generate_corpus(
        str(tmp_path / "c"),
        train_speakers=6,
        test_speakers=3,
        utterances=4,
        min_duration=0.5,
        max_duration=1.5,
        num_workers=1,
        n_trials=40,
    )
    out = prepare_voxceleb(
        str(tmp_path / "out"),
        corpus["wav_root"],
        train_list=corpus["train_list"],
        trials=corpus["trials"],
        dev_share=0.1,
        num_workers=1,
    )
    for key in ("train_csv", "dev_csv", "test_csv"):
        data = DynamicItemDataset.from_csv(out[key])

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("sig")
        def audio(wav):
            return read_audio(wav)

        data.add_dynamic_item(audio)
        data.set_output_keys(["id", "sig", "spk_id", "duration"])
        batch = PaddedBatch([data[i] for i in range(min(4, len(data)))])
        sig, rel_lens = batch.sig
        durations = batch.duration.tolist()
        assert sig.ndim == 2 and sig.shape[1] == max(round(d * SR) for d in durations)
        for length, duration in zip(rel_lens.tolist(), durations):
            assert round(length * sig.shape[1]) == round(duration * SR)
    assert len(DynamicItemDataset.from_csv(out["train_csv"])) == 6 * 2  # 2 of 4 held out as dev


def test_reuse_when_unchanged_and_redo_when_changed(vox):
    out = prep(vox)
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in out.items()}
    prep(vox)
    assert mtimes == {k: os.stat(p).st_mtime_ns for k, p in out.items()}
    prep(vox, seed=7)  # other arguments
    assert os.stat(out["train_csv"]).st_mtime_ns != mtimes["train_csv"]
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in out.items()}
    lines = (vox / "train_list.txt").read_text().splitlines(keepends=True)
    (vox / "train_list.txt").write_text("".join(lines[:-1]))  # inputs changed
    prep(vox, seed=7)
    assert os.stat(out["train_csv"]).st_mtime_ns != mtimes["train_csv"]
    assert len(read_csv(out["train_csv"])) + len(read_csv(out["dev_csv"])) == 11
    os.remove(out["trials"])  # a missing output is rebuilt
    prep(vox, seed=7)
    assert os.path.isfile(out["trials"])
    leftovers = [n for n in os.listdir(vox / "out") if n.startswith(".tmp")]
    assert leftovers == []


# ----------------------------------------------------------------------------- bad input


def test_wrong_field_count_in_train_list(vox):
    append(vox / "train_list.txt", "id00001 id00001/s0/00001.wav extra\n")
    expect_error(vox, f"{vox / 'train_list.txt'}:13: expected 2 fields 'spk_id path', got 3")


def test_missing_file(vox):
    append(vox / "train_list.txt", "id00001 id00001/s0/00009.wav\n")
    expect_error(
        vox, f"{vox / 'train_list.txt'}:13: missing file {vox / 'train'}/id00001/s0/00009.wav"
    )


def test_unreadable_empty_wrong_rate_stereo_and_short_audio(vox):
    base = vox / "train" / "id00001" / "s0"
    (base / "garbage.wav").write_bytes(b"this is not audio")
    sf.write(str(base / "empty.wav"), np.zeros(0), SR, subtype="PCM_16")
    write_wav(str(base / "narrow.wav"), sr=8000)
    write_wav(str(base / "stereo.wav"), channels=2)
    write_wav(str(base / "short.wav"), seconds=799 / SR)
    write_wav(str(base / "just.wav"), seconds=800 / SR)  # MIN_SAMPLES: accepted
    for name in ("garbage", "empty", "narrow", "stereo", "short", "just"):
        append(vox / "train_list.txt", f"id00001 id00001/s0/{name}.wav\n")
    lst = vox / "train_list.txt"
    err = expect_error(
        vox,
        f"{lst}:13: unreadable audio {base}/garbage.wav",
        f"{lst}:14: empty audio {base}/empty.wav",
        f"{lst}:15: sample rate 8000 Hz, expected 16000: {base}/narrow.wav",
        f"{lst}:16: 2 channels, expected mono: {base}/stereo.wav",
        f"{lst}:17: too short to embed: 799 samples, at least 800 (50 ms) needed: {base}/short.wav",
    )
    assert len(err.problems) == 5 and str(err).startswith("5 problem(s) in the input:")


def test_duplicate_ids(vox):
    append(vox / "train_list.txt", "id00001 id00001/s0/00001.wav\n")
    expect_error(
        vox,
        f"{vox / 'train_list.txt'}:13: duplicate ID id00001--s0--00001 "
        f"(first at {vox / 'train_list.txt'}:1)",
    )


def test_trials_outside_root_bad_label_and_fields(vox):
    write_wav(str(vox / "elsewhere.wav"))
    t = vox / "trials.txt"
    append(t, "1 ../elsewhere.wav id10001/v0/00001.wav\n")
    append(t, f"0 {vox / 'elsewhere.wav'} id10001/v0/00001.wav\n")
    append(t, "2 id10001/v0/00001.wav id10001/v0/00002.wav\n")
    append(t, "1 id10001/v0/00001.wav\n")
    expect_error(
        vox,
        f"{t}:5: ../elsewhere.wav is not under the test root {vox / 'test'}",
        f"{t}:6: {vox / 'elsewhere.wav'} is not under the test root",
        f"{t}:7: label must be 0 or 1, got '2'",
        f"{t}:8: expected 3 fields 'label path1 path2', got 2",
    )


def test_missing_trial_file_reported_once_per_file(vox):
    t = vox / "trials.txt"
    append(t, "1 id10001/v0/00009.wav id10001/v0/00001.wav\n")
    append(t, "0 id10001/v0/00009.wav id10002/v0/00001.wav\n")
    err = expect_error(vox, f"{t}:5: missing file {vox / 'test'}/id10001/v0/00009.wav")
    assert err.problems == [f"{t}:5: missing file {vox / 'test'}/id10001/v0/00009.wav"]


def test_report_lists_first_20_then_a_count(vox):
    append(vox / "train_list.txt", "".join(f"id00001 id00001/s9/{i:05d}.wav\n" for i in range(25)))
    err = expect_error(vox, "25 problem(s) in the input:", "... and 5 more")
    assert len(str(err).splitlines()) == 1 + 20 + 1


def test_missing_list_file_and_roots(vox):
    err = expect_error(vox, trials=str(vox / "nope.txt"), test_root=str(vox / "none"))
    assert err.problems == [
        f"{vox / 'nope.txt'}: list file not found",
        f"{vox / 'none'}: test root is not a folder",
    ]
    err = expect_error(vox, train_list=str(vox / "train"))
    assert err.problems == [f"{vox / 'train'}: is a folder, not a list file"]


def test_skip_bad_writes_the_rest_and_logs_the_report(vox, caplog):
    append(vox / "train_list.txt", "id00001 id00001/s0/00009.wav\nbroken\n")
    append(vox / "trials.txt", "1 id10001/v0/00009.wav id10001/v0/00001.wav\n3 a b\n")
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        out = prep(vox, skip_bad=True)
    report = caplog.text
    assert f"{vox / 'train_list.txt'}:13: missing file" in report
    assert f"{vox / 'train_list.txt'}:14: expected 2 fields" in report
    assert report.index(":13: missing file") < report.index(":14: expected")  # sorted by line
    assert f"{vox / 'trials.txt'}:5: missing file" in report
    assert f"{vox / 'trials.txt'}:6: label must be 0 or 1, got '3'" in report
    rows = read_csv(out["train_csv"]) + read_csv(out["dev_csv"])
    assert len(rows) == 12
    assert len(open(out["trials"]).readlines()) == 4
    assert len(read_csv(out["test_csv"])) == 6


def test_parallel_header_reads_match_serial(tmp_path):
    paths = []
    for i in range(600):
        paths.append(str(tmp_path / f"{i}.wav"))
        write_wav(paths[-1], seconds=(480 + i) / SR)
    paths.append(str(tmp_path / "missing.wav"))
    serial = audio_check.probe_all(paths, 1)
    assert audio_check.probe_all(paths, num_workers=2, chunk=64) == serial
    assert serial[0][1].startswith("too short to embed: 480 samples")  # 0.03 s
    st = os.stat(paths[400])
    assert serial[400] == (880 / SR, None, (st.st_size, st.st_mtime_ns))
    assert serial[-1][1].startswith("missing file") and serial[-1][2] is None


# ----------------------------------------------------------------------------- convert


def test_convert_without_ffmpeg_gives_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FfmpegNotFoundError, match="apt-get install ffmpeg"):
        convert_tree(str(tmp_path), str(tmp_path / "out"))
    assert cli_main(["transcode", str(tmp_path), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: ffmpeg was not found on PATH;")


FAKE_FFMPEG = """#!{python}
import shutil, sys
args = sys.argv[1:]
src, dst = args[args.index("-i") + 1], args[-1]
with open({log!r}, "a") as f:
    f.write(src + "\\n")
if "bad" in src:
    sys.exit("cannot decode " + src)
shutil.copyfile(src, dst)
"""


def test_convert_with_fake_ffmpeg_is_parallel_and_resumable(tmp_path, monkeypatch):
    bindir, src, dst = tmp_path / "bin", tmp_path / "m4a", tmp_path / "wav"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    fake = bindir / "ffmpeg"
    fake.write_text(FAKE_FFMPEG.format(python=sys.executable, log=str(log)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    for rel in ("id00001/a/00001.m4a", "id00001/a/00002.m4a", "id00002/b/00001.m4a"):
        write_wav(str(src / rel.replace(".m4a", ".wav")))
        os.rename(src / rel.replace(".m4a", ".wav"), src / rel)
    (src / "id00002" / "b" / "bad.m4a").write_bytes(b"x")
    (src / "notes.txt").write_text("not audio")

    result = convert_tree(str(src), str(dst), num_workers=2)
    assert result["converted"] == 3 and result["skipped"] == 0
    assert len(result["failed"]) == 1 and "cannot decode" in result["failed"][0]
    assert sf.info(str(dst / "id00001/a/00002.wav")).samplerate == SR
    assert not (dst / "id00002/b/bad.wav").exists()
    assert not [n for _, _, files in os.walk(dst) for n in files if n.startswith(".")]

    log.write_text("")
    result = convert_tree(str(src), str(dst), num_workers=2)
    assert result["skipped"] == 3 and result["converted"] == 0
    assert log.read_text().split() == [str(src / "id00002/b/bad.m4a")]
    # a symbolic link loop is walked once; a link into another speaker is not converted
    (src / "id00001" / "a" / "loop").symlink_to(src / "id00001")
    (src / "id00002" / "b" / "x.m4a").symlink_to(src / "id00001" / "a" / "00001.m4a")
    result = convert_tree(str(src), str(dst), num_workers=2)
    assert result["skipped"] == 3 and result["converted"] == 0
    assert len(result["failed"]) == 2 and "cannot decode" in result["failed"][1]
    assert result["failed"][0] == (
        f"{src / 'id00002' / 'b' / 'x.m4a'}: a symbolic link out of the speaker folder id00002 "
        f"(to {src / 'id00001' / 'a' / '00001.m4a'}); not read: copy the audio in, or link "
        "the speaker's whole folder"
    )


# ----------------------------------------------------------------------------- paths round-trip


def spaced_vox(vox, base):
    """Move the ``vox`` fixture's train/test trees and lists under ``base``."""
    base.mkdir(parents=True)
    for name in ("train", "test", "train_list.txt", "trials.txt"):
        os.rename(vox / name, base / name)
    return dict(
        train_root=str(base / "train"),
        test_root=str(base / "test"),
        train_list=str(base / "train_list.txt"),
        trials=str(base / "trials.txt"),
    )


def test_spaces_and_non_ascii_round_trip(vox):
    base = vox / "my data ü" / "corpüs"
    args = spaced_vox(vox, base)
    out = prep(vox, output_dir=str(vox / "my data ü" / "out"), dev_share=2, **args)
    out_dir = vox / "my data ü" / "out"
    csv_wavs = {
        k: [r["wav"] for r in read_csv(out[k])] for k in ("train_csv", "dev_csv", "test_csv")
    }
    assert all(" " in w and "ü" in w for ws in csv_wavs.values() for w in ws)
    expected_test = {
        str(base / "test" / rel)
        for rel in (line.split()[i] for line in open(args["trials"]) for i in (1, 2))
    }
    assert set(csv_wavs["test_csv"]) == expected_test
    for key, csv_key in (("dev_trials", "dev_csv"), ("trials", "test_csv")):
        lines = open(out[key], encoding="utf-8").read().splitlines()
        assert lines and all(len(line.split()) == 3 for line in lines)
        trials, problems = read_trials(out[key])  # relative to the list's own folder
        assert problems == [] and len(trials) == len(lines)
        for t in trials:
            for rel, full in ((t[1], t[3]), (t[2], t[4])):
                assert full == os.path.abspath(os.path.join(out_dir, rel))
                assert full in csv_wavs[csv_key]
    assert open(out["trials"], encoding="utf-8").readline() == (
        "1 ../corpüs/test/id10001/v0/00001.wav ../corpüs/test/id10001/v0/00002.wav\n"
    )


def test_spaced_root_outside_the_output_folder_is_refused(vox):
    args = spaced_vox(vox, vox / "my data")
    with pytest.raises(InputError) as info:
        prep(vox, **args)
    root = vox / "my data" / "train"
    assert str(info.value) == (
        f"{root}: the path from the output folder {vox / 'out'} to the train root is "
        "'../my data/train', with whitespace; trial lists store paths relative to the output "
        f"folder and split lines at whitespace. Put the output folder inside {vox / 'my data'}, "
        "or reach the data through a path without whitespace (e.g. a symlink)."
    )
    assert not (vox / "out").exists()


def test_file_name_with_whitespace_is_refused_by_file(vox):
    os.remove(vox / "train_list.txt")
    bad = vox / "train" / "id00001" / "s0" / "a b.wav"
    write_wav(str(bad))
    rel = "../train/id00001/s0/a b.wav"
    err = expect_error(vox, train_list=None)
    assert err.problems == [
        f"{bad}: {bad} has whitespace in its path relative to the output "
        f"folder ({rel!r}); trial lists cannot hold it: rename it"
    ]
    out = prep(vox, train_list=None, skip_bad=True)
    assert str(bad) not in {r["wav"] for r in read_csv(out["train_csv"]) + read_csv(out["dev_csv"])}


# ----------------------------------------------------------------------------- trial-list checks


def test_one_class_trial_list_is_refused(vox):
    t = vox / "trials.txt"
    lines = t.read_text().splitlines(keepends=True)
    t.write_text("".join(line for line in lines if line.startswith("1")))
    err = expect_error(vox)
    assert err.problems == [
        f"{t}: all 2 trials have label 1; EER and minDCF need both target "
        "(1) and non-target (0) trials"
    ]
    t.write_text("".join(line for line in lines if line.startswith("0")))
    assert expect_error(vox).problems[0].startswith(f"{t}: all 2 trials have label 0;")
    t.write_text(lines[0] + "0 id10001/v0/00009.wav id10002/v0/00001.wav\n")
    with pytest.raises(InputError, match=r"trials.txt: all 1 trials have label 1"):
        prep(vox, skip_bad=True)  # the non-target's file is missing: one class is left
    t.write_text(lines[1] + "1 id10001/v0/00009.wav id10001/v0/00001.wav\n")
    with pytest.raises(InputError, match=r"trials.txt: all 1 trials have label 0"):
        prep(vox, skip_bad=True)
    assert not (vox / "out").exists()


def test_duplicate_trials_warned_with_file_line_and_conflicts_refused(vox, caplog):
    t = vox / "trials.txt"
    append(t, "1 id10001/v0/00002.wav id10001/v0/00001.wav\n")  # line 1, reversed
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        out = prep(vox)
    warning = (
        f"{t}:5: duplicate trial id10001/v0/00002.wav / id10001/v0/00001.wav "
        f"(first at {t}:1); kept once"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [warning]
    assert len(open(out["trials"]).readlines()) == 4
    record = json.loads((vox / "out" / "prep_options.json").read_text())
    assert record["warnings"] == [warning]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        prep(vox)  # reused outputs: the warning is repeated
    assert warning in caplog.text
    append(t, "0 id10001/v0/00001.wav id10001/v0/00002.wav\n")
    with pytest.raises(InputError) as info:
        prep(vox)
    assert info.value.problems == [
        f"{t}:6: trial id10001/v0/00001.wav / id10001/v0/00002.wav has label 0 but label 1 at {t}:1"
    ]


def test_non_utf8_lists_are_named_by_line(vox):
    with open(vox / "train_list.txt", "ab") as f:
        f.write(b"id00001 id00001/s0/caf\xe9.wav\n")
    with open(vox / "trials.txt", "ab") as f:
        f.write(b"1 \xff.wav id10001/v0/00001.wav\n")
    err = expect_error(vox)
    assert err.problems == [
        f"{vox / 'train_list.txt'}:13: not UTF-8 text (byte 0xe9 at column 23); "
        "save the list as UTF-8",
        f"{vox / 'trials.txt'}:5: not UTF-8 text (byte 0xff at column 3); save the list as UTF-8",
    ]


# ----------------------------------------------------------------------------- environment


class read_only:
    """A folder made unwritable: chmod 0555, or ``chattr +i`` for root (who ignores modes)."""

    def __init__(self, folder):
        self.folder = str(folder)
        # What creating a file there fails with: EACCES (mode), EPERM (immutable).
        self.reason = os.strerror(errno.EACCES if os.geteuid() != 0 else errno.EPERM)

    def __enter__(self):
        if os.geteuid() != 0:
            os.chmod(self.folder, 0o555)
        elif subprocess.run(["chattr", "+i", self.folder], capture_output=True).returncode:
            pytest.skip("root without chattr: cannot make a read-only folder")
        return self

    def __exit__(self, *exc):
        if os.geteuid() != 0:
            os.chmod(self.folder, 0o755)
        else:
            subprocess.run(["chattr", "-i", self.folder], check=True)


def test_output_folder_checked_before_reading_audio(vox):
    append(vox / "train_list.txt", "id00001 id00001/s0/00009.wav\n")  # would be reported later
    (vox / "out").mkdir()
    with read_only(vox / "out") as ro, pytest.raises(InputError) as info:
        prep(vox)
    assert str(info.value) == (
        f"{vox / 'out'}: the output folder is not writable "
        f"({ro.reason}); choose another folder or fix its permissions"
    )
    assert os.listdir(vox / "out") == []
    (vox / "file").write_text("x")
    with pytest.raises(InputError) as info:
        prep(vox, output_dir=str(vox / "file"))
    assert str(info.value) == (
        f"{vox / 'file'}: the output folder is an existing file, not a "
        "folder; pass the path of a folder"
    )
    with pytest.raises(InputError) as info:
        prep(vox, output_dir=str(vox / "file" / "sub"))
    assert str(info.value) == (
        f"{vox / 'file' / 'sub'}: cannot create the output folder: "
        f"{vox / 'file'} is a file, not a folder"
    )


def test_outputs_follow_the_umask(vox):
    old = os.umask(0o027)
    try:
        out = prep(vox)
    finally:
        os.umask(old)
    modes = {
        os.path.basename(p): stat.S_IMODE(os.stat(p).st_mode)
        for p in list(out.values()) + [str(vox / "out" / "prep_options.json")]
    }
    assert set(modes.values()) == {0o640}, modes


def python_m(*args, cwd=REPO, env=None, **kw):
    """Start ``python -m <args>`` with this checkout on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    env.pop("MASKPROXY_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def test_cli_failures_one_error_line_exit_2(vox, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("MASKPROXY_DEBUG", raising=False)
    base = [
        "--train-list",
        str(vox / "train_list.txt"),
        "--train-root",
        str(vox / "train"),
        "--trials",
        str(vox / "trials.txt"),
        "--test-root",
        str(vox / "test"),
        "--num-workers",
        "1",
        "--output-dir",
    ]
    bad_list = tmp_path / "bad_list.txt"
    bad_list.write_text((vox / "train_list.txt").read_text() + "id00001 a b\n")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes(b"id00001 id00001/s0/\xe9.wav\n")
    (tmp_path / "a_file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    bad_line = f"{bad_list}:13: expected 2 fields 'spk_id path', got 3"
    cases = [
        (base + [str(tmp_path / "o1"), "--train-list", str(bad_list)], bad_line),
        (
            base + [str(tmp_path / "o2"), "--train-list", str(latin)],
            f"{latin}:1: not UTF-8 text (byte 0xe9 at column 20); save the list as UTF-8",
        ),
        (
            base + [str(tmp_path / "o3"), "--trials", str(tmp_path / "none.txt")],
            f"{tmp_path / 'none.txt'}: list file not found",
        ),
        (
            base + [str(tmp_path / "a_file")],
            f"{tmp_path / 'a_file'}: the output folder is an "
            "existing file, not a folder; pass the path of a folder",
        ),
        (
            base + [str(ro)],
            f"{ro}: the output folder is not writable ({read_only(ro).reason}); "
            "choose another folder or fix its permissions",
        ),
    ]
    with read_only(ro):
        for argv, message in cases:
            assert cli("prepare", *argv)[::2] == (2, f"error: {message}\n"), argv
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    with pytest.raises(InputError, match=re.escape(bad_line)):  # --debug: the traceback
        cli("prepare", *cases[0][0], "--debug")
    monkeypatch.setenv("MASKPROXY_DEBUG", "1")
    with pytest.raises(InputError, match=re.escape(bad_line)):
        cli("prepare", *cases[0][0])
    monkeypatch.delenv("MASKPROXY_DEBUG")
    code, out, _ = cli("prepare", "--help")
    assert code == 0 and "--train-list" in out
    # The underscore spelling of an option still works, with a note.
    code, _, err = cli("prepare", *[a.replace("--train-list", "--train_list") for a in base])
    assert code == 2 and err.startswith("note: --train_list is now spelled --train-list\n")

    # The same through a real process: exit status 2, one line on stderr, no traceback.
    proc = subprocess.run(
        [sys.executable, "-m", "data_prep.voxceleb", *cases[0][0]],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, f"error: {bad_line}\n", "")


def children(pid):
    """Process ids of the children of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def write_tiny_wavs(root, n_spk, per_spk):
    """``n_spk x per_spk`` 0.05 s wav files (one header + data, written as bytes); list lines."""
    buf = __import__("io").BytesIO()
    sf.write(buf, np.full(800, 0.1), SR, subtype="PCM_16", format="WAV")
    data, lines = buf.getvalue(), []
    for s in range(n_spk):
        os.makedirs(root / f"id{s:05d}" / "s0")
        os.makedirs(root / f"id{s:05d}" / "s1")
        for u in range(per_spk):
            rel = f"id{s:05d}/s{u % 2}/{u:05d}.wav"
            (root / rel).write_bytes(data)
            lines.append(f"id{s:05d} {rel}\n")
    return lines


def test_kill_9_mid_run_then_rerun_cleans_up(tmp_path):
    root, out = tmp_path / "wav", tmp_path / "out"
    (tmp_path / "list.txt").write_text("".join(write_tiny_wavs(root, 60, 50)))  # 3000 files
    args = [
        "data_prep.voxceleb",
        "--train-list",
        str(tmp_path / "list.txt"),
        "--train-root",
        str(root),
        "--output-dir",
        str(out),
        "--dev-share",
        "10",
        "--num-workers",
        "2",
    ]
    proc = python_m(*args, start_new_session=True)
    while proc.poll() is None and not children(proc.pid):  # header-reading workers started
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its workers, mid-run
    assert proc.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "prep_options.json").exists()  # not marked done
    out.mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / f".tmp-{dead.pid}-0badc0de-train.csv").write_text("half")  # a killed write
    old = os.umask(0o022)
    try:
        assert cli_main(["prepare", *args[1:]]) == 0
    finally:
        os.umask(old)
    names = sorted(n for n in os.listdir(out) if not n.endswith(".lock"))
    assert names == ["dev.csv", "dev_trials.txt", "prep_options.json", "train.csv"]
    assert {stat.S_IMODE(os.stat(out / n).st_mode) for n in names} == {0o644}
    assert len(read_csv(out / "train.csv")) + len(read_csv(out / "dev.csv")) == 3000


# ------------------------------------------------------ non-finite audio, links, reuse


def test_float_wav_with_nan_or_inf_is_refused_by_line(vox, caplog):
    """Only float files can hold NaN / Inf, so only they are read in full (PCM: header)."""
    x = np.random.default_rng(0).normal(0, 0.1, 3200)
    x[100], bad = np.nan, vox / "train" / "id00001" / "s0" / "00001.wav"
    sf.write(bad, x, SR, subtype="FLOAT")
    y = x.copy()
    y[100], inf = 0.0, vox / "test" / "id10001" / "v0" / "00002.wav"
    y[3000] = np.inf
    sf.write(inf, y, SR, subtype="DOUBLE")
    expect_error(
        vox,
        f"train_list.txt:1: non-finite sample (NaN/Inf) at sample 100 (0.006 s): {bad}",
        f"trials.txt:1: non-finite sample (NaN/Inf) at sample 3000 (0.188 s): {inf}",
    )
    out = prep(vox, skip_bad=True, dev_share=0)  # --skip-bad drops them
    assert str(bad) not in {r["wav"] for r in read_csv(out["train_csv"])}
    assert str(inf) not in {r["wav"] for r in read_csv(out["test_csv"])}
    x[100] = 0.0
    sf.write(bad, x, SR, subtype="FLOAT")  # a finite float file is accepted
    assert str(bad) in {
        r["wav"] for r in read_csv(prep(vox, dev_share=0, skip_bad=True)["train_csv"])
    }


def test_tree_scan_never_follows_links_out_of_a_speaker_or_round_a_loop(vox, caplog):
    root = vox / "train"
    (root / "id00001" / "s0" / "loop").symlink_to(root / "id00001")  # a loop: walked once
    (root / "id00001" / "s1" / "again").symlink_to(root / "id00001" / "s0")  # a second path
    # a link into another speaker's folder would relabel its audio
    (root / "id00002" / "s0" / "stolen.wav").symlink_to(root / "id00003" / "s0" / "00001.wav")
    (root / "id00002" / "far").symlink_to(vox / "test")  # foreign audio
    (root / "id00004").symlink_to(root / "id00003")  # a speaker that is another one
    elsewhere = vox / "elsewhere" / "id00005"  # a speaker folder that is a link: fine
    write_wav(str(elsewhere / "s0" / "00001.wav"))
    write_wav(str(elsewhere / "s0" / "00002.wav"))
    (root / "id00005").symlink_to(elsewhere)
    err = expect_error(vox, train_list=None, trials=None)
    assert sorted(p.split(": ", 1)[1][:60] for p in err.problems) == sorted(
        [
            "a symbolic link out of the speaker folder id00002 (to " + str(vox)[:6],
            "a symbolic link out of the speaker folder id00002 (to " + str(vox)[:6],
            "the speaker folder id00004 is the folder of speaker id00003 ",
        ]
    ), err.problems
    caplog.set_level(logging.WARNING)
    out = prep(vox, train_list=None, trials=None, skip_bad=True, dev_share=0)
    ids = sorted(r["ID"] for r in read_csv(out["train_csv"]))
    want = [
        f"id0000{s}--{sess}--0000{u}" for s in (1, 2, 3) for sess in ("s0", "s1") for u in (1, 2)
    ]
    assert ids == sorted(want + ["id00005--s0--00001", "id00005--s0--00002"])  # 4 x 3 + 2
    assert "already walked through another path" in caplog.text


def test_reuse_restats_every_listed_file(vox):
    out = prep(vox)
    test_rows = read_csv(out["test_csv"])
    gone = test_rows[1]["wav"]
    os.remove(gone)
    with pytest.raises(InputError) as info:
        prep(vox)
    assert str(info.value) == (
        f"{out['test_csv']}:3: missing since data preparation: {gone}; prepare again "
        f"(maskproxy prepare ... --force, or delete {vox / 'out' / 'prep_options.json'})"
    )
    train_rows = read_csv(out["train_csv"])
    changed = train_rows[0]["wav"]
    write_wav(changed, seconds=0.3)  # replaced by another file
    with pytest.raises(InputError) as info:
        prep(vox)
    assert info.value.problems[0].startswith(
        f"{out['train_csv']}:2: changed since data preparation (size "
    )
    assert len(info.value.problems) == 2
    out = prep(vox, skip_bad=True)  # prepares again, without the missing file
    assert gone not in {r["wav"] for r in read_csv(out["test_csv"])}
    assert {r["wav"]: r["duration"] for r in read_csv(out["train_csv"])}.get(changed) in (
        None,
        "0.300000",
    )


def test_ctrl_c_during_header_reads_is_one_line_and_exit_130(tmp_path):
    root, out = tmp_path / "wav", tmp_path / "out"
    (tmp_path / "list.txt").write_text("".join(write_tiny_wavs(root, 60, 50)))  # 3000 files
    proc = python_m(
        "maskproxy_losses",
        *("prepare", "--train-list", tmp_path / "list.txt", "--train-root", root),
        *("--output-dir", out, "--num-workers", "2"),
        start_new_session=True,
    )
    while proc.poll() is None and not children(proc.pid):  # header-reading workers started
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the CLI and its workers
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Traceback" not in err
    assert not (out / "prep_options.json").exists()


# ------------------------------------------------ a manifest folder that runs train on
def _hold_in_subprocess(folder, output):
    """A process that holds ``folder``'s manifests as a running training run does."""
    code = (
        "import sys, time\n"
        "from maskproxy_losses.training.run_lock import hold_manifests, preparing_manifests\n"
        "with preparing_manifests(sys.argv[1]):\n"
        "    hold_manifests(sys.argv[1], sys.argv[2])\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(folder), str(output)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline() == "held\n"
    return proc


def test_manifests_a_run_holds_are_reused_but_never_rewritten(vox, caplog):
    """Two runs on one manifest folder (issue: run A trained on run B's list): while a run
    holds the manifests, a preparation from another list is refused before reading any
    audio, naming the run; one from the same list reuses them; once the run is gone the
    other list is prepared."""
    prep(vox, dev_share=2)
    out = vox / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    fewer = vox / "fewer.txt"
    fewer.write_text("".join((vox / "train_list.txt").read_text().splitlines(True)[:-1]))
    holder = _hold_in_subprocess(out, "/runs/A")
    try:
        with pytest.raises(InputError) as info:
            prep(vox, dev_share=2, train_list=str(fewer))
        assert str(info.value).startswith(
            f"{out}: another run (pid {holder.pid}, started "
        ) and "output folder /runs/A) trains on these manifests" in str(info.value)
        with caplog.at_level(logging.INFO):
            prep(vox, dev_share=2)  # the same list: reused beside the run
        assert "up to date; skipping data preparation" in caplog.text
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    again = prep(vox, dev_share=2, train_list=str(fewer))
    assert len(read_csv(again["train_csv"]) + read_csv(again["dev_csv"])) == 11  # of 12

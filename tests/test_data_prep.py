"""data_prep.voxceleb: manifests, trial lists, error reports, reuse, convert."""

import csv
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from data_prep import voxceleb
from data_prep.demo_corpus import generate_corpus
from data_prep.voxceleb import FfmpegNotFoundError, PrepError, convert_tree, prepare_voxceleb

SR = 16000


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
    trials = [(1, test_files[0], test_files[1]), (0, test_files[0], test_files[3]),
              (1, test_files[4], test_files[5]), (0, test_files[2], test_files[5])]
    (tmp_path / "train_list.txt").write_text("".join(lines))
    (tmp_path / "trials.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in trials))
    return tmp_path


def prep(vox, **kw):
    args = dict(output_dir=str(vox / "out"), train_root=str(vox / "train"),
                test_root=str(vox / "test"), train_list=str(vox / "train_list.txt"),
                trials=str(vox / "trials.txt"), num_workers=1)
    args.update(kw)
    return prepare_voxceleb(**args)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


def expect_error(vox, *fragments, **kw):
    with pytest.raises(PrepError) as info:
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
        ["train.csv", "dev.csv", "dev_trials.txt", "test.csv", "trials.txt", "prep_options.json"])
    train, dev = read_csv(out["train_csv"]), read_csv(out["dev_csv"])
    assert list(train[0]) == ["ID", "duration", "wav", "spk_id"]
    assert {r["ID"] for r in train + dev} >= {"id00001--s0--00001", "id00003--s1--00002"}
    assert all(os.path.isabs(r["wav"]) and abs(float(r["duration"]) - 0.2) < 1e-6 for r in train + dev)
    for spk in ("id00001", "id00002", "id00003"):
        assert sum(r["spk_id"] == spk for r in train) == 2
        assert sum(r["spk_id"] == spk for r in dev) == 2
    test = read_csv(out["test_csv"])
    assert len(test) == 6 and {r["spk_id"] for r in test} == {"id10001", "id10002"}
    trials = [line.split() for line in open(out["trials"])]
    assert [t[0] for t in trials] == ["1", "0", "1", "0"]
    assert all(os.path.isabs(p) and os.path.isfile(p) for t in trials for p in t[1:])
    assert trials[0][1] == str(vox / "test" / "id10001/v0/00001.wav")


def test_dev_trials_balanced(vox):
    out = prep(vox, dev_share=2, n_dev_trials=100)
    spk = {r["wav"]: r["spk_id"] for r in read_csv(out["dev_csv"])}
    trials = [line.split() for line in open(out["dev_trials"])]
    labels = [int(t[0]) for t in trials]
    assert labels.count(1) == labels.count(0) == 3  # 3 speakers x 1 pair each
    for label, a, b in trials:
        assert (spk[a] == spk[b]) == (label == "1")


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

    corpus = generate_corpus(str(tmp_path / "c"), train_speakers=6, test_speakers=3, utterances=4,
                             min_duration=0.5, max_duration=1.5, num_workers=1, n_trials=40)
    out = prepare_voxceleb(str(tmp_path / "out"), corpus["wav_root"], train_list=corpus["train_list"],
                           trials=corpus["trials"], dev_share=0.1, num_workers=1)
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
    expect_error(vox, f"{vox / 'train_list.txt'}:13: missing file {vox / 'train'}/id00001/s0/00009.wav")


def test_unreadable_empty_wrong_rate_and_stereo_audio(vox):
    base = vox / "train" / "id00001" / "s0"
    (base / "garbage.wav").write_bytes(b"this is not audio")
    sf.write(str(base / "empty.wav"), np.zeros(0), SR, subtype="PCM_16")
    write_wav(str(base / "narrow.wav"), sr=8000)
    write_wav(str(base / "stereo.wav"), channels=2)
    for name in ("garbage", "empty", "narrow", "stereo"):
        append(vox / "train_list.txt", f"id00001 id00001/s0/{name}.wav\n")
    lst = vox / "train_list.txt"
    err = expect_error(
        vox,
        f"{lst}:13: unreadable audio {base}/garbage.wav",
        f"{lst}:14: empty audio {base}/empty.wav",
        f"{lst}:15: sample rate 8000 Hz, expected 16000: {base}/narrow.wav",
        f"{lst}:16: 2 channels, expected mono: {base}/stereo.wav",
    )
    assert len(err.problems) == 4 and str(err).startswith("4 problem(s) in the input:")


def test_duplicate_ids(vox):
    append(vox / "train_list.txt", "id00001 id00001/s0/00001.wav\n")
    expect_error(vox, f"{vox / 'train_list.txt'}:13: duplicate ID id00001--s0--00001 "
                      f"(first at {vox / 'train_list.txt'}:1)")


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
    assert len(err.problems) == 1


def test_report_lists_first_20_then_a_count(vox):
    append(vox / "train_list.txt", "".join(f"id00001 id00001/s9/{i:05d}.wav\n" for i in range(25)))
    err = expect_error(vox, "25 problem(s) in the input:", "... and 5 more")
    assert len(str(err).splitlines()) == 1 + 20 + 1


def test_missing_list_file(vox):
    expect_error(vox, f"{vox / 'nope.txt'}: list file not found", trials=str(vox / "nope.txt"))


def test_skip_bad_writes_the_rest_and_logs_the_report(vox, caplog):
    append(vox / "train_list.txt", "id00001 id00001/s0/00009.wav\nbroken\n")
    append(vox / "trials.txt", "1 id10001/v0/00009.wav id10001/v0/00001.wav\n3 a b\n")
    with caplog.at_level(logging.WARNING, logger="data_prep.voxceleb"):
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


def test_cli_reports_bad_input_with_exit_2(vox, capsys):
    append(vox / "train_list.txt", "id00001 id00001/s0/00009.wav\n")
    args = ["--train-list", str(vox / "train_list.txt"), "--train-root", str(vox / "train"),
            "--trials", str(vox / "trials.txt"), "--test-root", str(vox / "test"),
            "--output-dir", str(vox / "out"), "--num-workers", "1"]
    assert voxceleb.main(args) == 2
    err = capsys.readouterr().err
    assert "error: 1 problem(s) in the input:" in err and ":13: missing file" in err
    assert "Traceback" not in err and not (vox / "out").exists()
    assert voxceleb.main(args + ["--skip-bad"]) == 0
    assert "train_csv:" in capsys.readouterr().out


def test_cli_help_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "data_prep.voxceleb", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--train-list" in proc.stdout and "convert" in proc.stdout


def test_parallel_header_reads_match_serial(tmp_path):
    paths = []
    for i in range(600):
        paths.append(str(tmp_path / f"{i}.wav"))
        write_wav(paths[-1], seconds=0.01 + i / SR)
    paths.append(str(tmp_path / "missing.wav"))
    assert voxceleb.probe_all(paths, num_workers=2, chunk=64) == voxceleb.probe_all(paths, 1)


# ----------------------------------------------------------------------------- convert


def test_convert_without_ffmpeg_gives_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FfmpegNotFoundError, match="apt-get install ffmpeg"):
        convert_tree(str(tmp_path), str(tmp_path / "out"))
    assert voxceleb.main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "ffmpeg was not found" in capsys.readouterr().err


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
    assert not [n for _, _, files in os.walk(dst) for n in files if n.endswith(".part")]

    log.write_text("")
    result = convert_tree(str(src), str(dst), num_workers=2)
    assert result["skipped"] == 3 and result["converted"] == 0
    assert log.read_text().split() == [str(src / "id00002/b/bad.m4a")]

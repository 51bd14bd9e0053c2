"""data_prep.demo_corpus: layout, list formats, determinism, reruns, baseline."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from data_prep import demo_corpus
from data_prep.demo_corpus import baseline_eer, baseline_scores, generate_corpus, speaker_plan
from maskproxy_losses.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]

SMALL = dict(
    train_speakers=6,
    test_speakers=4,
    utterances=4,
    min_duration=1.0,
    max_duration=1.0,
    n_trials=40,
    num_workers=1,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(str(tmp_path_factory.mktemp("corpus")), **SMALL)


def wav_files(root):
    return sorted(
        os.path.relpath(os.path.join(d, n), root) for d, _, files in os.walk(root) for n in files
    )


def test_layout_and_train_list(corpus):
    lines = [line.split() for line in open(corpus["train_list"])]
    assert len(lines) == 6 * 4 and all(len(f) == 2 for f in lines)
    assert lines[0] == ["id00001", "id00001/sess0/00001.wav"]
    speakers = {spk for spk, _ in lines}
    assert speakers == {f"id0000{i}" for i in range(1, 7)}
    for spk, rel in lines:
        assert rel.startswith(spk + "/sess") and rel.endswith(".wav")
        info = sf.info(os.path.join(corpus["wav_root"], rel))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (
            16000,
            1,
            "PCM_16",
            16000,
        )
    for spk in speakers:  # every speaker has 2+ sessions
        assert len({rel.split("/")[1] for s, rel in lines if s == spk}) >= 2
    assert len(wav_files(corpus["wav_root"])) == (6 + 4) * 4  # no temporary files left


def test_trials_balanced_and_disjoint_from_training(corpus):
    trials = [line.split() for line in open(corpus["trials"])]
    assert all(len(t) == 3 and t[0] in ("0", "1") for t in trials)
    labels = [t[0] for t in trials]
    assert labels.count("1") == labels.count("0") == 20
    train_spk = {line.split()[0] for line in open(corpus["train_list"])}
    for label, a, b in trials:
        spk_a, spk_b = a.split("/")[0], b.split("/")[0]
        assert spk_a.startswith("id1") and spk_a not in train_spk and spk_b not in train_spk
        assert (spk_a == spk_b) == (label == "1")
        assert os.path.isfile(os.path.join(corpus["wav_root"], a))
    cross = [a.split("/")[1] != b.split("/")[1] for label, a, b in trials if label == "1"]
    assert sum(cross) >= len(cross) // 2  # targets across sessions first


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    tiny = dict(train_speakers=2, test_speakers=2, utterances=2, min_duration=0.5, max_duration=0.5)
    a = generate_corpus(str(tmp_path / "a"), seed=3, num_workers=1, **tiny)
    b = generate_corpus(str(tmp_path / "b"), seed=3, num_workers=2, **tiny)
    c = generate_corpus(str(tmp_path / "c"), seed=4, num_workers=1, **tiny)
    files = wav_files(a["wav_root"])
    assert files == wav_files(b["wav_root"])
    _, mismatch, errors = filecmp.cmpfiles(a["wav_root"], b["wav_root"], files, shallow=False)
    assert mismatch == errors == []
    for key in ("train_list", "trials"):
        assert open(a[key]).read() == open(b[key]).read()
    first = files[0]
    assert (
        open(os.path.join(a["wav_root"], first), "rb").read()
        != open(os.path.join(c["wav_root"], first), "rb").read()
    )


def test_rerun_is_a_no_op_and_an_interrupted_run_is_finished(tmp_path):
    tiny = dict(
        train_speakers=2,
        test_speakers=2,
        utterances=2,
        min_duration=0.5,
        max_duration=0.5,
        num_workers=1,
    )
    paths = generate_corpus(str(tmp_path), **tiny)
    files = wav_files(paths["wav_root"])
    stamp = {f: os.stat(os.path.join(paths["wav_root"], f)).st_mtime_ns for f in files}
    original = open(os.path.join(paths["wav_root"], files[0]), "rb").read()
    time.sleep(0.01)
    generate_corpus(str(tmp_path), **tiny)
    assert stamp == {f: os.stat(os.path.join(paths["wav_root"], f)).st_mtime_ns for f in files}

    # Simulate an interruption: marker gone, progress record left, one file missing.
    marker = tmp_path / demo_corpus.MARKER
    os.replace(marker, tmp_path / demo_corpus.IN_PROGRESS)
    os.remove(os.path.join(paths["wav_root"], files[0]))
    generate_corpus(str(tmp_path), **tiny)
    assert open(os.path.join(paths["wav_root"], files[0]), "rb").read() == original
    assert os.stat(os.path.join(paths["wav_root"], files[1])).st_mtime_ns == stamp[files[1]]
    assert marker.exists() and not (tmp_path / demo_corpus.IN_PROGRESS).exists()
    assert json.loads(marker.read_text())["seed"] == 0

    generate_corpus(str(tmp_path), **dict(tiny, utterances=3))  # other arguments: regenerated
    assert len(wav_files(paths["wav_root"])) == 4 * 3


def test_baseline_small_corpus_is_not_trivial(corpus):
    scores, labels = baseline_scores(corpus["trials"], corpus["wav_root"])
    assert scores.shape == labels.shape == (40,)
    assert ((scores >= -1 - 1e-9) & (scores <= 1 + 1e-9)).all()
    assert 0.0 < baseline_eer(corpus["trials"], corpus["wav_root"]) < 0.6


def test_cli(tmp_path, cli):
    args = [
        "--output-dir",
        str(tmp_path),
        "--train-speakers",
        "1",
        "--test-speakers",
        "2",
        "--utterances",
        "2",
        "--min-duration",
        "0.5",
        "--max-duration",
        "0.5",
        "--num-workers",
        "1",
        "--n-trials",
        "4",
        "--baseline",
    ]
    code, out, _ = cli("demo-corpus", *args)
    assert code == 0
    assert "train_list:" in out and "baseline EER (mean log-mel cosine):" in out


def test_cli_bad_input_and_output_one_error_line_exit_2(tmp_path, cli, monkeypatch):
    monkeypatch.delenv("MASKPROXY_DEBUG", raising=False)
    (tmp_path / "a_file").write_text("x")
    cases = [
        (
            ["--output-dir", str(tmp_path / "a_file")],
            f"{tmp_path / 'a_file'}: the output folder "
            "is an existing file, not a folder; pass the path of a folder",
        ),
        (
            ["--output-dir", str(tmp_path / "a_file" / "d")],
            f"{tmp_path / 'a_file' / 'd'}: cannot "
            f"create the output folder: {tmp_path / 'a_file'} is a file, not a folder",
        ),
        (
            ["--output-dir", str(tmp_path / "d"), "--utterances", "1"],
            "need utterances >= 2, 1-9999 train and 2-9999 test speakers",
        ),
        (
            ["--output-dir", str(tmp_path / "d"), "--min-duration", "0.1"],
            "need 0.25 <= min_duration <= max_duration (seconds)",
        ),
    ]
    for argv, message in cases:
        code, _, err = cli("demo-corpus", *argv)
        assert (code, err) == (2, f"error: {message}\n")
    assert not (tmp_path / "d").exists()
    with pytest.raises(InputError, match="need utterances >= 2"):
        cli("demo-corpus", *cases[2][0], "--debug")


def test_kill_9_leaves_no_partial_wav_and_a_rerun_finishes(tmp_path):
    args = dict(
        train_speakers=3,
        test_speakers=2,
        utterances=6,
        min_duration=1.0,
        max_duration=1.5,
        num_workers=1,
        n_trials=10,
    )
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.demo_corpus", "--output-dir", str(tmp_path), *argv],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    first = tmp_path / "wav" / "id00001"

    def visible():
        return [f for f in wav_files(tmp_path / "wav") if not os.path.basename(f).startswith(".")]

    while proc.poll() is None and len(visible() if first.is_dir() else []) < 2:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / demo_corpus.MARKER).exists()
    plans = [speaker_plan(0, g, i, 6, 1.0, 1.5) for g, n in ((0, 3), (1, 2)) for i in range(n)]
    frames = {rel: int(round(d * 16000)) for p in plans for rel, _, d in p["utts"]}

    def check_complete():
        for rel in visible():  # every visible wav is whole
            assert sf.info(str(tmp_path / "wav" / rel)).frames == frames[rel], rel
        return visible()

    assert 2 <= len(check_complete()) < len(frames)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = first / "sess0" / f".tmp-{dead.pid}-0badc0de-00009.wav"
    stale.write_bytes(b"RIFF half")  # what a kill mid-write leaves
    generate_corpus(str(tmp_path), **args)
    assert sorted(check_complete()) == sorted(frames) == wav_files(tmp_path / "wav")
    assert (tmp_path / demo_corpus.MARKER).exists()


@pytest.mark.slow
def test_default_corpus_baseline_eer_in_range(default_corpus):
    _, paths = default_corpus
    eer = baseline_eer(paths["trials"], paths["wav_root"])
    print(f"default corpus: baseline EER {100 * eer:.2f}%")
    assert 0.15 <= eer <= 0.35
    assert len(open(paths["train_list"]).readlines()) == 60 * 20
    assert len(open(paths["trials"]).readlines()) == 4000

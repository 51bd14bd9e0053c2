"""``maskproxy extract``: parts, N processes, kill -9 + resume, and refused foreign parts,
against direct encoder calls and uninterrupted runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import ROOT, tiny_model_dir

from maskproxy_losses.cli import main as cli_main
from maskproxy_losses.data.audio import read_wav
from maskproxy_losses.inference.model_dir import load_encoder

N_FILES = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Two tiny models and 40 files of 0.5 to 4 s listed in a wav.scp (relative paths)."""
    base = tmp_path_factory.mktemp("extract")
    models = [tiny_model_dir(base / f"model{seed}", seed) for seed in (0, 1)]
    rng = np.random.default_rng(0)
    (base / "wav").mkdir()
    lines = []
    for i in range(N_FILES):
        n = int(16000 * rng.uniform(0.5, 4.0))
        t = np.arange(n) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(n)
        sf.write(base / "wav" / f"f{i:02d}.wav", x, 16000, subtype="PCM_16")
        lines.append(f"utt{i:02d} wav/f{i:02d}.wav\n")
    (base / "wav.scp").write_text("".join(lines))
    return {"base": base, "models": models, "scp": base / "wav.scp"}


def _argv(env, out, *extra, model=0):
    return [
        "extract",
        env["models"][model],
        "--wav-scp",
        env["scp"],
        "--output-dir",
        out,
        "--precision",
        "fp32",
        *extra,
    ]


def _cli(argv, capsys):
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _load(out):
    """``{key: embedding}`` of a job's merged index, in its order."""
    return dict(kaldiio.load_scp(str(Path(out) / "embeddings.scp")).items())


def _same(a, b):
    assert list(a) == list(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def _subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def test_embeddings_are_the_encoders_file_by_file(env, tmp_path, capsys):
    """``--batch-seconds 0`` (one file per batch, no padding), 2 loader workers, 6 parts
    of (at most) 7: the merged index holds every key in list order with the encoder's
    embedding of the file alone; Kaldi's and kaldiio's readers find float vectors."""
    out = tmp_path / "job"
    code, text, err = _cli(
        _argv(env, out, "--batch-seconds", 0, "--part-size", 7, "--num-workers", 2), capsys
    )
    assert code == 0, err
    assert "6 parts embedded now (40 files, 0 skipped)" in text and "index:" in text
    got = _load(out)
    assert list(got) == [f"utt{i:02d}" for i in range(N_FILES)]
    encoder = load_encoder(env["models"][0])
    for i in range(N_FILES):
        wav = read_wav(env["base"] / "wav" / f"f{i:02d}.wav")
        want = encoder.encode_batch(wav[None]).reshape(-1).numpy()
        np.testing.assert_allclose(got[f"utt{i:02d}"], want, rtol=1e-5, atol=1e-6)
    assert got["utt00"].dtype == np.float32 and got["utt00"].shape == (16,)
    with open(out / "parts" / "part-000003.ark", "rb") as f:  # Kaldi binary: "key \0BFV "
        assert f.read(12) == b"utt21 \0BFV \x04"
    records = [json.loads((out / "parts" / f"part-{j:06d}.json").read_text()) for j in range(6)]
    assert [(r["first"], r["embedded"]) for r in records] == [(j * 7, 7) for j in range(5)] + [
        (35, 5)
    ]


@pytest.mark.slow
def test_two_processes_equal_one_process(env, tmp_path, capsys):
    """torchrun, 2 processes (RANK / WORLD_SIZE), and ``--shard 1/2`` then ``0/2`` in this
    process: bit-identical embeddings to one process, each process embedding its parts."""
    torch.set_num_threads(1)  # as the torchrun processes (OMP_NUM_THREADS=1)
    common = ("--batch-seconds", 6, "--part-size", 6, "--num-workers", 1)
    code, _, err = _cli(_argv(env, tmp_path / "one", *common), capsys)
    assert code == 0, err
    one = _load(tmp_path / "one")
    assert len(one) == N_FILES
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "maskproxy_losses"]
    proc = subprocess.run(
        cmd + [str(a) for a in _argv(env, tmp_path / "two", *common)],
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _same(_load(tmp_path / "two"), one)
    shards = [
        json.loads((tmp_path / "two" / "parts" / f"part-{j:06d}.json").read_text())["shard"]
        for j in range(7)
    ]
    assert shards == [[j % 2, 2] for j in range(7)]  # parts 0, 2, 4, 6 on rank 0; 1, 3, 5 on 1
    for shard in ("1/2", "0/2"):
        code, text, err = _cli(_argv(env, tmp_path / "split", *common, "--shard", shard), capsys)
        assert code == 0, err
        assert ("index:" in text) == (shard == "0/2")  # merged by the last shard to finish
    _same(_load(tmp_path / "split"), one)


@pytest.mark.slow
def test_kill_and_resume_equals_an_uninterrupted_run(env, tmp_path, capsys):
    """kill -9 after 3 of 20 parts, rerun: finished parts are kept as they are (never
    embedded again), the rest are embedded, and the result equals an uninterrupted run."""
    torch.set_num_threads(1)
    common = ("--batch-seconds", 5, "--part-size", 2, "--num-workers", 1)
    code, _, err = _cli(_argv(env, tmp_path / "full", *common), capsys)
    assert code == 0, err
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "maskproxy_losses", *map(str, _argv(env, out, *common))]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    marker, deadline = out / "parts" / "part-000002.json", time.time() + 300
    while time.time() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.002)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (out / "parts").glob("*.json"))
    assert 3 <= len(done) < 20 and not (out / "embeddings.scp").exists()
    kept = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for name in done
        for p in (out / "parts").glob(name.replace(".json", ".*"))
    }
    code, text, err = _cli(_argv(env, out, *common), capsys)
    assert code == 0, err
    assert f"{20 - len(done)} parts embedded now" in text and f"{len(done)} finished before" in text
    for name, stamp in kept.items():  # the finished parts' files were not written again
        p = out / "parts" / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, name
    _same(_load(out), _load(tmp_path / "full"))
    assert not [p for p in (out / "parts").iterdir() if p.name.startswith(".tmp-")]


def test_parts_from_different_models_are_refused(env, tmp_path, capsys):
    out, other = tmp_path / "job", tmp_path / "other"
    common = ("--part-size", 10, "--num-workers", 0)
    assert _cli(_argv(env, out, *common, "--shard", "0/2"), capsys)[0] == 0
    # Another model in the same folder: refused before anything is embedded.
    code, _, err = _cli(_argv(env, out, *common, "--shard", "1/2", model=1), capsys)
    assert code == 2 and "parts from different models are refused" in err, err
    assert sorted(p.name for p in (out / "parts").glob("*.json")) == [
        "part-000000.json",
        "part-000002.json",
    ]
    # A part embedded with the other model, copied in: refused, not merged, not re-embedded.
    assert _cli(_argv(env, other, *common, model=1), capsys)[0] == 0
    for suffix in (".ark", ".scp", ".json"):
        shutil.copy(other / "parts" / f"part-000001{suffix}", out / "parts")
    code, _, err = _cli(_argv(env, out, *common, "--shard", "1/2"), capsys)
    assert code == 2 and "part-000001.json: a part embedded with model fingerprint" in err, err
    assert not (out / "embeddings.scp").exists()
    # Other options than the job's are refused too; the job's own ones finish it.
    (out / "parts" / "part-000001.json").unlink()
    code, _, err = _cli(_argv(env, out, "--part-size", 5), capsys)
    assert code == 2 and "part_size 10 (asked: 5)" in err, err
    code, text, err = _cli(_argv(env, out, *common, "--shard", "1/2"), capsys)
    assert code == 0 and "index:" in text, err
    assert len(_load(out)) == N_FILES


def test_bad_files_stop_the_part_or_are_skipped(env, tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    wav = env["base"] / "wav"
    nan = np.full(16000, 0.1, dtype=np.float32)
    nan[123] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    scp.write_text(
        f"a {wav}/f00.wav\nb {tmp_path}/missing.wav\nc {wav}/f01.wav\nd {tmp_path}/nan.wav\n"
    )
    argv = ["extract", env["models"][0], "--wav-scp", scp, "--precision", "fp32"]
    code, _, err = _cli(argv + ["--output-dir", tmp_path / "stop"], capsys)
    assert code == 2 and f"{scp}:2: missing file {tmp_path}/missing.wav" in err, err
    assert not list((tmp_path / "stop" / "parts").iterdir())  # found before any embedding
    lines = scp.read_text().splitlines(keepends=True)
    (tmp_path / "nan.scp").write_text(lines[0] + lines[3])
    nan_argv = ["extract", env["models"][0], "--wav-scp", tmp_path / "nan.scp"]
    code, _, err = _cli(nan_argv + ["--output-dir", tmp_path / "nan"], capsys)
    assert code == 2 and "nan.scp:2: " in err and "NaN" in err, err
    code, text, err = _cli(argv + ["--output-dir", tmp_path / "skip", "--skip-bad"], capsys)
    assert code == 0 and "(2 files, 2 skipped)" in text, err
    assert list(_load(tmp_path / "skip")) == ["a", "c"]
    skipped = (tmp_path / "skip" / "skipped.txt").read_text().splitlines()
    assert skipped[0] == f"b\t{scp}:2: missing file {tmp_path}/missing.wav"
    assert skipped[1].startswith(f"d\t{scp}:4: ") and "NaN" in skipped[1]


def test_a_missing_file_in_the_last_part_stops_the_job_before_any_part(env, tmp_path, capsys):
    scp = tmp_path / "wav.scp"
    lines = env["scp"].read_text().splitlines()
    wrong = f"utt99 {env['base']}/wav/f03.wav extra"  # a third column: no such path
    scp.write_text("\n".join(f"{k} {env['base']}/{p}" for k, p in (x.split() for x in lines)))
    scp.write_text(scp.read_text() + "\n" + wrong + "\n")
    out = tmp_path / "out"
    argv = ["extract", env["models"][0], "--wav-scp", scp, "--output-dir", out]
    code, _, err = _cli(argv + ["--part-size", "8", "--precision", "fp32"], capsys)
    assert code == 2, err
    assert err.strip() == f"error: {scp}:{N_FILES + 1}: missing file {wrong.split(' ', 1)[1]}"
    assert not list((out / "parts").iterdir())


@pytest.mark.parametrize(
    "text, message",
    [
        ("a x.wav\na y.wav\n", "wav.scp:2: key a repeats "),
        ("a sox x.wav -t wav - |\n", "wav.scp:1: piped commands are not read"),
        ("just-one-field\n", "wav.scp:1: expected 'key wav_path'"),
    ],
)
def test_wav_scp_lines_are_checked(env, tmp_path, capsys, text, message):
    (tmp_path / "wav.scp").write_text(text)
    argv = ["extract", env["models"][0], "--wav-scp", tmp_path / "wav.scp"]
    code, _, err = _cli(argv + ["--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and message in err, err


def test_shard_option_is_checked(env, tmp_path, capsys):
    code, _, err = _cli(_argv(env, tmp_path / "out", "--shard", "2/2"), capsys)
    assert code == 2 and "--shard 2/2: expected i/N with 0 <= i < N" in err


def test_a_moved_job_is_merged_again(env, tmp_path, capsys):
    """The index names the arks by absolute path; ``merge`` in the new place renames them."""
    from maskproxy_losses.inference.extract import merge

    common = ("--part-size", 16, "--num-workers", 0, "--batch-seconds", 0)
    assert _cli(_argv(env, tmp_path / "job", *common), capsys)[0] == 0
    want = _load(tmp_path / "job")
    shutil.move(tmp_path / "job", tmp_path / "moved")
    assert merge(tmp_path / "moved") == str(tmp_path / "moved" / "embeddings.scp")
    assert str(tmp_path / "job") not in (tmp_path / "moved" / "embeddings.scp").read_text()
    _same(_load(tmp_path / "moved"), want)


def test_other_rates_and_stereo_are_resampled_unless_refused(env, tmp_path, capsys):
    """A 44.1 kHz stereo copy (scipy's polyphase resampler, not the package's) embeds as
    its 16 kHz original to within the tolerance tests/test_audio_conversion.py states
    (cosine distance 1e-5); ``--no-resample`` refuses it, and a job keeps its choice."""
    from scipy.signal import resample_poly

    x, _ = sf.read(env["base"] / "wav" / "f03.wav", dtype="float32")
    up = resample_poly(x, 441, 160).astype(np.float32)
    sf.write(tmp_path / "f03_44k.wav", np.stack([up, up], axis=1), 44100, subtype="FLOAT")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"orig {env['base'] / 'wav' / 'f03.wav'}\ncopy {tmp_path / 'f03_44k.wav'}\n")
    argv = ["extract", env["models"][0], "--wav-scp", scp, "--precision", "fp32"]
    code, _, err = _cli([*argv, "--output-dir", tmp_path / "on"], capsys)
    assert code == 0, err
    emb = _load(tmp_path / "on")
    a, b = (emb[k] / np.linalg.norm(emb[k]) for k in ("orig", "copy"))
    assert 1 - float(a @ b) < 1e-5
    code, _, err = _cli([*argv, "--output-dir", tmp_path / "off", "--no-resample"], capsys)
    assert code == 2 and f"{scp}:2: sample rate 44100 Hz, expected 16000" in err, err
    code, _, err = _cli([*argv, "--output-dir", tmp_path / "on", "--no-resample"], capsys)
    assert code == 2 and "resample True (asked: False)" in err, err


def test_an_incomplete_job_record_is_named(env, tmp_path, capsys):
    out = tmp_path / "job"
    out.mkdir()
    (out / "job.json").write_text('{"format": "maskproxy-extract", "version": 1}')
    code, _, err = _cli(_argv(env, out, "--num-workers", 0), capsys)
    assert code == 2 and err.count("\n") == 1 and "KeyError" not in err, err
    assert err.startswith(f"error: {out / 'job.json'}: an incomplete maskproxy-extract job")


def test_an_output_dir_whose_job_files_are_the_list_is_refused(env, tmp_path, capsys):
    out = tmp_path / "job"
    out.mkdir()
    scp = out / "embeddings.scp"
    scp.write_text(env["scp"].read_text().replace("wav/", f"{env['base']}/wav/"))
    argv = ["extract", env["models"][0], "--wav-scp", scp, "--output-dir", out]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and err == (
        f"error: {scp}: is an input of this run (the wav scp); choose another --output-dir\n"
    )
    assert os.listdir(out) == ["embeddings.scp"]

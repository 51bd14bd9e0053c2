"""The embed / enrol / identify command and verify_pair against direct encoder calls."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from maskproxy_losses.cli import main as cli_main
from maskproxy_losses.data.audio import read_wav
from maskproxy_losses.inference.api import embed_files, verify_pair
from maskproxy_losses.inference.embedding import model_fingerprint
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.inference.model_dir import load_encoder
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.scoring.calibration import Calibration, bayes_threshold

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = {"ann": ["ann0.wav", "ann1.wav"], "bo": ["bo0.wav", "sub/bo1.wav"], "cy": ["cy0.wav"]}


def _tiny_model(path, seed):
    torch.manual_seed(seed)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval()
    return str(export_model(path, model))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("embed_cli")
    model_dir = _tiny_model(base / "model", 0)
    rng = np.random.default_rng(1)
    (base / "wavs" / "sub").mkdir(parents=True)
    for i, names in enumerate(SPEAKERS.values()):
        for j, name in enumerate(names):  # a tone per speaker plus noise, 0.6 to 1.1 s
            t = np.arange(int(16000 * (0.6 + 0.25 * i + 0.25 * j))) / 16000
            x = 0.3 * np.sin(2 * np.pi * (200 + 900 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(base / "wavs" / name, x, 16000, subtype="FLOAT")
    sf.write(base / "wavs" / ".hidden.wav", np.zeros(16000), 16000)
    sf.write(base / "short.wav", np.zeros(200), 16000)
    encoder = load_encoder(model_dir)
    direct = {}  # one file at a time, no batching code involved
    for names in SPEAKERS.values():
        for name in names:
            wav = read_wav(base / "wavs" / name)
            direct[name] = encoder.encode_batch(wav[None]).reshape(-1).numpy()
    return {"base": base, "model": model_dir, "direct": direct}


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _run(argv, capsys, precision="fp32"):
    """``maskproxy ARGV`` in this process: (exit code, stdout, stderr). The references are
    float32 embeddings, so the precision is pinned unless ``precision`` is None."""
    argv = [str(a) for a in argv] + (["--precision", precision] if precision else [])
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_list_matches_the_encoder_and_hits_the_cache(env, tmp_path, capsys, monkeypatch):
    base = env["base"]
    names = ["ann0.wav", "sub/bo1.wav", "cy0.wav", "ann0.wav"]  # a repeated file too
    (base / "list.txt").write_text("# test list\n" + "\n".join(f"wavs/{n}" for n in names) + "\n")
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    # The command line (embed is the default subcommand). --batch-seconds 0 puts one
    # file in each batch: no zero padding, so the result must equal the one-file encoder call
    # up to float rounding (padding in shared batches only moves the front end's edge frames,
    # see tests/test_embedding.py).
    argv = [
        "embed",
        env["model"],
        "--wav-list",
        base / "list.txt",
        "--output",
        "out/emb.npz",
        "--cache-dir",
        cache,
        "--batch-seconds",
        "0",
    ]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "4 files, 16 dims; embeddings 0 from cache, 3 computed" in out
    with np.load(tmp_path / "out" / "emb.npz") as z:
        assert z["paths"].tolist() == [f"wavs/{n}" for n in names]
        assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (4, 16)
        want = np.stack([env["direct"][n] for n in names])
        np.testing.assert_allclose(z["embeddings"], want, rtol=1e-5, atol=1e-5)
    # the verification recipe's cache layout: <cache_dir>/<fingerprint[:16]>/full_max300s
    fingerprint = model_fingerprint(env["model"])
    assert list((cache / fingerprint[:16] / "full_max300s").glob("shard-*.npz"))
    stats = {}
    again = embed_files(
        env["model"],
        [base / "wavs" / n for n in names],
        cache_dir=cache,
        stats=stats,
        precision="fp32",
    )
    assert (stats["hits"], stats["computed"]) == (3, 0)
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-5)
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "embeddings 3 from cache, 0 computed" in out


def test_dir_takes_every_audio_file_sorted(env, tmp_path, capsys):
    out = tmp_path / "dir.npz"
    code, _, _ = _run(
        [
            "embed",
            env["model"],
            "--dir",
            env["base"] / "wavs",
            "--output",
            out,
            "--no-cache",
            "--batch-seconds",
            "0",
        ],
        capsys,
    )
    assert code == 0
    with np.load(out) as z:
        rel = [os.path.relpath(p, env["base"] / "wavs") for p in z["paths"].tolist()]
        assert rel == sorted(["ann0.wav", "ann1.wav", "bo0.wav", "cy0.wav", "sub/bo1.wav"])
        np.testing.assert_allclose(
            z["embeddings"], np.stack([env["direct"][n] for n in rel]), rtol=1e-5, atol=1e-5
        )


@pytest.fixture(scope="module")
def enrolled(env):
    base = env["base"]
    lines = [f"{spk} wavs/{n}" for spk, names in SPEAKERS.items() for n in names]
    (base / "enrol.txt").write_text("\n".join(lines) + "\n")
    out = base / "speakers.npz"
    assert (
        cli_main(
            [
                "enrol",
                env["model"],
                "--speakers",
                base / "enrol.txt",
                "--output",
                out,
                "--no-cache",
                "--batch-seconds",
                "0",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    return out


def test_enrol_stores_the_mean_of_normalised_embeddings(env, enrolled):
    with np.load(enrolled) as z:
        assert z["speaker_ids"].tolist() == list(SPEAKERS)
        assert z["counts"].tolist() == [2, 2, 1]
        assert str(z["model_fingerprint"]) == model_fingerprint(env["model"])
        for spk, model in zip(SPEAKERS, z["models"]):
            want = np.mean([_unit(env["direct"][n]) for n in SPEAKERS[spk]], axis=0)
            np.testing.assert_allclose(model, want, rtol=1e-5, atol=1e-5)


def test_a_repeated_enrolment_line_counts_once_and_is_warned(env, tmp_path, capsys):
    base = env["base"]
    (tmp_path / "enrol.txt").write_text(
        f"ann {base}/wavs/ann0.wav\nann {base}/wavs/ann1.wav\nann {base}/wavs/ann0.wav\n"
        f"bo {base}/wavs/ann1.wav\n"
    )
    argv = ["enrol", env["model"], "--speakers", tmp_path / "enrol.txt"]
    code, _, err = _run([*argv, "--output", tmp_path / "s.npz", "--no-cache"], capsys)
    enrol = tmp_path / "enrol.txt"
    assert code == 0 and f"warning: {enrol}:3: repeats {enrol}:1; kept once" in err, err
    assert f"warning: {enrol}:4: {base}/wavs/ann1.wav is also enrolled for ann at {enrol}:2" in err
    with np.load(tmp_path / "s.npz") as z:
        assert z["counts"].tolist() == [2, 1]  # ann0 counted once
        want = np.mean([_unit(env["direct"][n]) for n in SPEAKERS["ann"]], axis=0)
        np.testing.assert_allclose(z["models"][0], want, rtol=1e-5, atol=1e-5)


def _read_tsv(path):
    lines = Path(path).read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _expected_scores(env, test_names):
    models = np.stack(
        [np.mean([_unit(env["direct"][n]) for n in SPEAKERS[s]], 0) for s in SPEAKERS]
    )
    test = np.stack([env["direct"][n] for n in test_names])
    return _unit(test) @ _unit(models).T


def test_identify_ranks_speakers_by_cosine_with_calibrated_llrs(env, enrolled, tmp_path, capsys):
    # A copy of the model dir has the same fingerprint (contents, not place) and, here, a
    # calibration.json; the calibration is no part of the fingerprint.
    model = tmp_path / "calibrated"
    shutil.copytree(env["model"], model)
    Calibration(scale=12.0, offset=-9.0).save(model / "calibration.json")
    tests = ["ann1.wav", "sub/bo1.wav"]
    wavs = [env["base"] / "wavs" / n for n in tests]
    for model_dir, calibrated in ((env["model"], False), (model, True)):
        out = tmp_path / f"id-{calibrated}.tsv"
        code, stdout, _ = _run(
            [
                "identify",
                model_dir,
                "--speakers",
                enrolled,
                *wavs,
                "--top-k",
                "2",
                "--output",
                out,
                "--no-cache",
                "--batch-seconds",
                "0",
            ],
            capsys,
        )
        assert code == 0 and "3 enrolled speakers, top 2" in stdout
        header, rows = _read_tsv(out)
        assert header == ["path", "rank", "speaker", "score"] + ["llr", "decision"] * calibrated
        assert len(rows) == 4
        expected = _expected_scores(env, tests)
        for i, wav in enumerate(wavs):
            mine = [r for r in rows if r[0] == str(wav)]
            assert [r[1] for r in mine] == ["1", "2"]
            ids = list(SPEAKERS)
            scores = [float(r[3]) for r in mine]
            for r, s in zip(mine, scores):
                assert abs(s - expected[i, ids.index(r[2])]) < 1e-5
            assert scores[0] >= scores[1] and abs(scores[0] - expected[i].max()) < 1e-5
            if calibrated:
                for r in mine:
                    llr = 12.0 * expected[i, ids.index(r[2])] - 9.0
                    assert abs(float(r[4]) - llr) < 1e-3
                    assert r[5] == ("accept" if llr >= bayes_threshold(0.01) else "reject")


def test_identify_refuses_speakers_enrolled_with_another_model(env, enrolled, tmp_path, capsys):
    other = _tiny_model(tmp_path / "other", 1)
    code, _, err = _run(
        ["identify", other, "--speakers", enrolled, env["base"] / "wavs" / "cy0.wav", "--no-cache"],
        capsys,
    )
    assert code == 2 and f"error: {enrolled}: enrolled with another model" in err


def test_verify_pair_scores_the_cosine_and_decides_with_calibration(env, tmp_path):
    a, b = env["base"] / "wavs" / "ann0.wav", env["base"] / "wavs" / "bo0.wav"
    want = float(_unit(env["direct"]["ann0.wav"]) @ _unit(env["direct"]["bo0.wav"]))
    plain = verify_pair(env["model"], a, b, precision="fp32")
    assert abs(plain.score - want) < 1e-5 and plain.llr is None and plain.accept is None
    model = tmp_path / "calibrated"
    shutil.copytree(env["model"], model)
    for offset, accept in ((-100.0, False), (100.0, True)):
        Calibration(scale=3.0, offset=offset).save(model / "calibration.json")
        res = verify_pair(model, a, b, p_target=0.05, precision="fp32")
        assert abs(res.llr - (3.0 * want + offset)) < 1e-4 and res.accept is accept
        assert res.threshold == pytest.approx(np.log(0.95 / 0.05))


# bfloat16 keeps 8 significant bits (unit roundoff 2**-9, about 0.002). The encoder's ~40
# rounded layers, accumulating in float32, move a length-normalised embedding by 0.3-0.7 %
# (relative L2; measured on the tiny model here and on the full ResNetSE34L) and its cosine
# with the float32 one stays above 0.99998. The bounds below leave 4x room for other
# inputs and CPUs while still catching a wrong path (a random vector is ~1.4 away).
BF16_REL_L2 = 0.03
BF16_SCORE = 0.01


def _rel_l2(a, b):
    a, b = _unit(a), _unit(b)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def test_bf16_embeddings_stay_close_to_float32(env, tmp_path, capsys):
    out = tmp_path / "bf16.npz"
    wavs = [env["base"] / "wavs" / n for n in env["direct"]]
    (tmp_path / "list.txt").write_text("\n".join(map(str, wavs)) + "\n")
    argv = [
        "embed",
        env["model"],
        "--wav-list",
        tmp_path / "list.txt",
        "--output",
        out,
        "--no-cache",
    ]
    code, stdout, _ = _run(argv, capsys, precision="bf16")
    assert code == 0, stdout
    with np.load(out) as z:
        want = np.stack(list(env["direct"].values()))
        err = _rel_l2(z["embeddings"], want)
        assert err.max() < BF16_REL_L2 and err.max() > 0  # bf16 really ran, and stayed close
    a, b = wavs[0], wavs[2]
    ref = float(_unit(env["direct"]["ann0.wav"]) @ _unit(env["direct"]["bo0.wav"]))
    assert abs(verify_pair(env["model"], a, b, precision="bf16").score - ref) < BF16_SCORE


@pytest.mark.precision
def test_auto_precision_follows_the_cpu(env, tmp_path, capsys):
    """``--precision auto`` (the default) is bf16 where the CPU has native bfloat16 (or
    ``MASKPROXY_CPU_BF16=1`` says so) with its own cache folder, fp32 elsewhere."""
    from maskproxy_losses.utils.precision import native_bf16

    stats = {}
    names = ["ann0.wav", "cy0.wav"]
    emb = embed_files(
        env["model"], [env["base"] / "wavs" / n for n in names], cache_dir=tmp_path, stats=stats
    )
    want = np.stack([env["direct"][n] for n in names])
    if native_bf16("cpu"):
        assert stats["precision"] == "bf16" and stats["cache"].endswith("full_max300s_bf16")
        assert 0 < _rel_l2(emb, want).max() < BF16_REL_L2
    else:
        assert stats["precision"] == "fp32" and stats["cache"].endswith("full_max300s")
        np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)


def _bad_inputs(env, tmp):
    base = env["base"]
    (tmp / "bad.txt").write_text("wavs/ann0.wav\nwavs/missing.wav\n\nshort.wav\n")
    shutil.copy(tmp / "bad.txt", base / "bad.txt")
    (tmp / "empty.txt").write_text("# nothing\n\n")
    (tmp / "emptydir").mkdir()
    (tmp / "notnpz.npz").write_text("hello\n")
    (base / "enrol_bad.txt").write_text("ann wavs/ann0.wav\nbo\n")
    untrusted = tmp / "untrusted"
    shutil.copytree(env["model"], untrusted)
    with open(untrusted / "hyperparams.yaml", "a") as f:
        f.write("\nextra: !apply:math.sqrt [4.0]\n")
    wav, model = base / "wavs" / "ann0.wav", env["model"]
    out = ["--output", tmp / "o.npz", "--no-cache"]
    return [
        (
            ["embed", tmp / "nomodel", "--wav-list", base / "bad.txt", *out],
            f"{tmp / 'nomodel'}: model directory not found",
        ),
        (["embed", untrusted, "--dir", base / "wavs", *out], "refusing to load it"),
        (
            ["embed", model, "--wav-list", base / "bad.txt", *out],
            f"{base / 'bad.txt'}:2: missing file",
        ),
        (
            ["embed", model, "--wav-list", base / "bad.txt", *out],
            f"{base / 'bad.txt'}:4: too short",
        ),
        (["embed", model, "--wav-list", tmp / "empty.txt", *out], "the wav list names no files"),
        (
            ["embed", model, "--dir", tmp / "emptydir", *out],
            f"{tmp / 'emptydir'}: no .wav or .flac",
        ),
        (
            [
                "embed",
                model,
                "--wav-list",
                base / "bad.txt",
                "--output",
                tmp / "empty.txt" / "o.npz",
            ],
            f"{tmp / 'empty.txt'}: the output folder is an existing file",
        ),
        (
            ["enrol", model, "--speakers", base / "enrol_bad.txt", *out],
            f"{base / 'enrol_bad.txt'}:2: expected 'speaker_id wav_path'",
        ),
        (
            ["identify", model, "--speakers", tmp / "notnpz.npz", wav],
            f"{tmp / 'notnpz.npz'}: not a speakers file",
        ),
        (
            ["identify", model, "--speakers", tmp / "notnpz.npz", wav, "--top-k", "0"],
            "argument --top-k: must be at least 1, got 0",
        ),
        (["idenitfy", model, "--speakers", tmp / "notnpz.npz"], "did you mean 'identify'?"),
        (
            ["embed", model, "--dir", tmp / "emptydir", "--outptu", "x"],
            "unknown option '--outptu'; did you mean '--output'?",
        ),
    ]


def test_bad_input_gives_one_error_line_and_exit_2(env, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MASKPROXY_DEBUG", raising=False)
    for argv, message in _bad_inputs(env, tmp_path):
        code, _, err = _run(argv, capsys)
        assert code == 2 and err.startswith("error: ") and message in err, (argv, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o.npz").exists()
    # the untrusted directory loads when the user says they trust it
    code, out, _ = _run(
        [
            "embed",
            tmp_path / "untrusted",
            "--dir",
            env["base"] / "wavs",
            "--output",
            tmp_path / "t.npz",
            "--no-cache",
            "--trust-model-dir",
        ],
        capsys,
    )
    assert code == 0 and (tmp_path / "t.npz").is_file()


def test_command_line_module_exits_2_without_traceback(env, tmp_path):
    (tmp_path / "list.txt").write_text(f"{env['base'] / 'wavs' / 'ann0.wav'}\nnope.wav\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskproxy_losses",
            "embed",
            env["model"],
            "--wav-list",
            "list.txt",
            "--output",
            "o.npz",
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MASKPROXY_DEBUG": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: list.txt:2: missing file nope.wav"), proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.npz").exists()


def test_wav_list_with_a_bom(tmp_path):
    from maskproxy_losses.inference.inputs import read_wav_list

    path = tmp_path / "list.txt"
    path.write_bytes("\ufeffa.wav\n# comment\n\nsub/b.wav\n".encode("utf-8"))
    assert read_wav_list(path) == [
        ("a.wav", str(tmp_path / "a.wav"), f"{path}:1"),
        ("sub/b.wav", str(tmp_path / "sub/b.wav"), f"{path}:4"),
    ]


def test_nan_audio_never_reaches_a_speaker_model_or_a_ranking(env, tmp_path, capsys):
    """A float wav with NaN samples (refused by the probe) and one with absurd finite
    samples (refused at its NaN embedding) are named by their list line; --skip-bad drops
    them and the speaker keeps the model of its good utterances."""
    base = env["base"]
    x = np.random.default_rng(3).normal(0, 0.1, 12000)
    x[500] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "huge.wav", np.where(np.arange(12000) % 2, 1e20, -1e20), 16000, "FLOAT")
    lines = [f"ann {base / 'wavs' / n}" for n in SPEAKERS["ann"]] + [
        f"ann {tmp_path / 'nan.wav'}",
        f"bo {base / 'wavs' / 'bo0.wav'}",
        f"bo {tmp_path / 'huge.wav'}",
    ]
    (tmp_path / "enrol.txt").write_text("\n".join(lines) + "\n")
    argv = ["enrol", env["model"], "--speakers", tmp_path / "enrol.txt", "--no-cache"]
    code, _, err = _run([*argv, "--output", tmp_path / "s.npz"], capsys)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "s.npz").exists()
    assert err.startswith(f"error: {tmp_path / 'enrol.txt'}:3: non-finite sample (NaN/Inf)")
    code, _, err = _run([*argv, "--output", tmp_path / "s.npz", "--skip-bad"], capsys)
    assert code == 0, err
    assert f"enrol.txt:3: non-finite sample (NaN/Inf) at sample 500 (0.031 s): {tmp_path}" in err
    assert f"enrol.txt:5: non-finite embedding (NaN/Inf) of {tmp_path / 'huge.wav'}" in err
    with np.load(tmp_path / "s.npz") as z:
        assert z["counts"].tolist() == [2, 1] and np.isfinite(z["models"]).all()
        want = np.mean([_unit(env["direct"][n]) for n in SPEAKERS["ann"]], axis=0)
        np.testing.assert_allclose(z["models"][0], want, rtol=1e-5, atol=1e-5)
    ident = ["identify", env["model"], "--speakers", tmp_path / "s.npz", "--no-cache"]
    wavs = [base / "wavs" / "ann1.wav", tmp_path / "huge.wav"]
    code, _, err = _run([*ident, *wavs], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"error: argument 2: non-finite embedding (NaN/Inf) of {tmp_path / 'huge.wav'}" in err
    code, out, err = _run([*ident, *wavs, "--skip-bad"], capsys)
    assert code == 0 and "huge.wav" not in out and "argument 2: non-finite embedding" in err
    assert [row.split("\t")[:3] for row in out.splitlines()[1:]] == [
        [str(wavs[0]), "1", "ann"],
        [str(wavs[0]), "2", "bo"],
    ]


def test_an_output_that_is_an_input_is_refused_before_any_work(env, tmp_path, capsys):
    """--output naming the list, an audio file, the speakers file or a file of the model
    directory: one error line, exit 2, the input untouched."""
    base, model = env["base"], Path(env["model"])
    wav_list = tmp_path / "list.txt"
    wav_list.write_text(f"{base / 'wavs' / 'ann0.wav'}\n")
    speakers = tmp_path / "enrol.txt"
    speakers.write_text(f"ann {base / 'wavs' / 'ann0.wav'}\n")
    npz = tmp_path / "speakers.npz"
    npz.write_bytes(b"not read: the check comes first")
    ckpt = model / "embedding_model.ckpt"
    audio = base / "wavs" / "ann0.wav"
    cases = [
        (["embed", model, "--wav-list", wav_list, "--output", wav_list], wav_list, "the wav list"),
        (["embed", model, "--wav-list", wav_list, "--output", audio], audio, "audio file"),
        (["embed", model, "--dir", base / "wavs", "--output", audio], audio, "audio file"),
        (["embed", model, "--wav-list", wav_list, "--output", ckpt], ckpt, "model directory"),
        (["enrol", model, "--speakers", speakers, "--output", speakers], speakers, "speaker list"),
        (
            ["identify", model, "--speakers", npz, "--wav-list", wav_list, "--output", wav_list],
            wav_list,
            "the wav list",
        ),
        (["identify", model, "--speakers", npz, audio, "--output", npz], npz, "speakers file"),
    ]
    for argv, out, what in cases:
        before = Path(out).read_bytes()
        code, _, err = _run([*argv, "--no-cache"], capsys)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert err.startswith(f"error: {out}: ") and what in err and "--output" in err, err
        assert Path(out).read_bytes() == before

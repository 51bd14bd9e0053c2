"""The verification recipe end to end on a tiny generated corpus with a random model."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.demo_corpus import generate_corpus
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.scoring.metrics import compute_eer, compute_min_dcf

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
SCRIPT = RECIPE / "speaker_verification_cosine.py"
HPARAMS = RECIPE / "hparams" / "verification.yaml"

_spec = importlib.util.spec_from_file_location("speaker_verification_cosine", SCRIPT)
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("verification")
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 32), blocks=(1, 1, 1, 1), emb_dim=32).eval()
    model_dir = export_model(base / "model", model, frontend="fbank")
    corpus = base / "corpus"
    generate_corpus(
        str(corpus),
        train_speakers=3,
        test_speakers=4,
        utterances=3,
        min_duration=1.0,
        max_duration=2.0,
        num_workers=1,
        n_trials=40,
    )
    return {"base": base, "model": model_dir, "corpus": corpus, "cache": base / "cache"}


def _argv(setup, out, *extra, cache=None):
    return [
        str(HPARAMS),
        "--pretrained_path",
        str(setup["model"]),
        "--data_folder",
        str(setup["corpus"]),
        "--output_folder",
        str(setup["base"] / out),
        "--cache_dir",
        str(cache or setup["cache"]),
        "--device",
        "cpu",
        *extra,
    ]


def _read_scores(path):
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    return np.array([int(r[0]) for r in rows]), np.array([float(r[1]) for r in rows]), rows


def _shards(cache):
    return {p: p.stat().st_mtime_ns for p in Path(cache).rglob("shard-*.npz")}


def test_end_to_end_and_cache(setup):
    # 1. default: prepares the manifests of the corpus, cosine scoring
    metrics = sv.verify(_argv(setup, "out_cos"))
    out = setup["base"] / "out_cos"
    for name in ("scores.txt", "metrics.json", "det_and_scores.png"):
        assert (out / name).is_file()
    assert (setup["corpus"] / "manifests" / "trials.txt").is_file()
    labels, scores, rows = _read_scores(out / "scores.txt")
    n_lines = len((setup["corpus"] / "manifests" / "trials.txt").read_text().split("\n")) - 1
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_trials"] == len(rows) == n_lines == metrics["n_trials"]
    assert saved["n_target"] == labels.sum()
    eer, threshold = compute_eer(scores, labels)
    assert (saved["EER"], saved["EER_threshold"]) == (100 * eer, threshold)  # percent
    for p in (0.01, 0.05):
        assert (saved[f"minDCF_{p}"], saved[f"minDCF_{p}_threshold"]) == compute_min_dcf(
            scores, labels, p
        )
    assert np.all(np.abs(scores) <= 1 + 1e-9)
    assert saved["embedding_cache"]["computed"] == 12 and saved["embedding_cache"]["hits"] == 0
    first = _shards(setup["cache"])

    # 2. another scoring option, same embeddings: the test files come from the cache
    metrics = sv.verify(_argv(setup, "out_snorm", "--norm", "snorm"))
    assert metrics["embedding_cache"]["hits"] == 12
    assert metrics["embedding_cache"]["computed"] == metrics["options"]["cohort"]["utterances"]
    after = _shards(setup["cache"])
    assert all(after[p] == t for p, t in first.items())  # old shards untouched
    labels2, scores2, _ = _read_scores(setup["base"] / "out_snorm" / "scores.txt")
    assert (labels2 == labels).all() and not np.allclose(scores2, scores)

    # 3. the 10-crop protocol embeds crops (a separate cache), with AS-norm ...
    crop = ["--score_mode", "ten_crop", "--num_crops", "3", "--crop_frames", "50"]
    metrics = sv.verify(_argv(setup, "out_crop", *crop, "--norm", "asnorm", "--cohort_top_n", "2"))
    assert metrics["embedding_cache"]["hits"] == 0 and metrics["options"]["num_crops"] == 3
    assert metrics["options"]["cohort"]["top_n"] == 2
    # 4. ... and rescoring it without normalisation computes nothing
    before = _shards(setup["cache"])
    metrics = sv.verify(_argv(setup, "out_crop2", *crop))
    assert metrics["embedding_cache"]["computed"] == 0
    assert _shards(setup["cache"]) == before
    _, s_crop, _ = _read_scores(setup["base"] / "out_crop2" / "scores.txt")
    assert np.all(s_crop <= 0)  # minus a mean distance


@pytest.mark.precision
def test_auto_precision_follows_the_cpu(setup, tmp_path):
    """``precision: auto`` embeds under bfloat16 autocast where the CPU has native bfloat16
    (or ``MASKPROXY_CPU_BF16=1`` says so), in a cache folder of its own; fp32 elsewhere."""
    from maskproxy_losses.utils.precision import native_bf16

    want = "bf16" if native_bf16("cpu") else "fp32"
    metrics = sv.verify(_argv(setup, "out_auto", cache=tmp_path))
    assert metrics["options"]["precision"] == want
    folders = {p.parent.name for p in tmp_path.rglob("shard-*.npz")}
    assert folders == {"full_max300s" + ("_bf16" if want == "bf16" else "")}
    fp32 = sv.verify(_argv(setup, "out_fp32", "--precision", "fp32", cache=tmp_path))
    assert fp32["options"]["precision"] == "fp32"  # SpeechBrain's --precision wins
    gap = abs(metrics["EER"] - fp32["EER"])
    assert gap == 0 if want == "fp32" else gap < 10  # 40 trials: one trial moves it 5 points


def _write_trials(setup, name, lines):
    path = setup["base"] / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _wavs(setup):
    return sorted(str(p) for p in (setup["corpus"] / "wav").rglob("id1*/**/*.wav"))


def _expect_exit2(setup, capsys, trials, *extra):
    assert sv.main(_argv(setup, "out_bad", "--trials_file", str(trials), *extra)) == 2
    return capsys.readouterr().err


def test_bad_input(setup, capsys):
    w = _wavs(setup)
    bad_wav = setup["base"] / "garbage.wav"
    bad_wav.write_bytes(b"not audio at all" * 10)
    trials = _write_trials(
        setup,
        "bad.txt",
        [
            f"1 {w[0]} {w[1]}",
            f"0 {w[0]} {setup['base']}/missing.wav",
            f"2 {w[0]} {w[3]}",
            f"1 {w[0]}",
            f"0 {w[0]} {bad_wav}",
            f"0 {w[0]} {w[5]}",
        ],
    )
    err = _expect_exit2(setup, capsys, trials)
    assert f"{trials}:2: missing file" in err
    assert f"{trials}:3: label must be 0 or 1, got '2'" in err
    assert f"{trials}:4: expected 3 fields" in err
    assert f"{trials}:5: unreadable audio" in err
    assert "Traceback" not in err

    # --skip_bad: lines 1 and 6 are scored, the 4 others reported
    metrics = sv.verify(
        _argv(setup, "out_skip", "--trials_file", str(trials), "--skip_bad", "True")
    )
    assert metrics["n_trials"] == 2 and metrics["skipped"]["count"] == 4
    assert len((setup["base"] / "out_skip" / "scores.txt").read_text().splitlines()) == 2
    assert "skipped 4 bad entries" in capsys.readouterr().out

    one_class = _write_trials(setup, "one.txt", [f"1 {w[0]} {w[1]}", f"1 {w[2]} {w[3]}"])
    assert "all 2 trials have label 1" in _expect_exit2(setup, capsys, one_class)
    empty = _write_trials(setup, "empty.txt", [])
    assert "no trials to score" in _expect_exit2(setup, capsys, empty)
    # skipping bad lines can leave one class only
    assert "all 1 trials" in _expect_exit2(
        setup,
        capsys,
        _write_trials(setup, "b2.txt", [f"1 {w[0]} {w[1]}", f"0 {w[0]} /nope.wav"]),
        "--skip_bad",
        "True",
    )


def test_relative_paths_and_test_csv(setup):
    w = _wavs(setup)
    root = setup["corpus"] / "wav"
    rel = [str(Path(p).relative_to(root)) for p in w]
    trials = _write_trials(setup, "rel.txt", [f"1 {rel[0]} {rel[1]}", f"0 {rel[0]} {rel[4]}"])
    m = sv.verify(_argv(setup, "out_rel", "--trials_file", str(trials), "--test_root", str(root)))
    assert m["n_trials"] == 2 and m["embedding_cache"]["computed"] == 0  # cached already
    ids = [r.replace("/", "--")[:-4] for r in rel]
    trials = _write_trials(setup, "ids.txt", [f"1 {ids[0]} {ids[1]}", f"0 {ids[0]} {ids[4]}"])
    test_csv = setup["corpus"] / "manifests" / "test.csv"
    m2 = sv.verify(
        _argv(setup, "out_ids", "--trials_file", str(trials), "--test_csv", str(test_csv))
    )
    assert m2["EER"] == m["EER"]
    assert (
        _read_scores(setup["base"] / "out_ids" / "scores.txt")[1].tolist()
        == _read_scores(setup["base"] / "out_rel" / "scores.txt")[1].tolist()
    )


def test_subprocess_exit_code(setup, tmp_path):
    w = _wavs(setup)
    trials = _write_trials(setup, "sub.txt", [f"1 {w[0]} {w[1]}", f"x {w[0]} {w[2]}"])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *_argv(setup, "out_sub", "--trials_file", str(trials))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"{trials}:2: label must be 0 or 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_calibration_from_the_model_directory(setup, tmp_path):
    import shutil

    from maskproxy_losses.scoring.calibration import Calibration, calibration_metrics

    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    Calibration(scale=12.0, offset=-3.0).save(model / "calibration.json")
    setup = dict(setup, model=model)
    metrics = sv.verify(_argv(setup, "out_cal"))
    labels, raw, _ = _read_scores(setup["base"] / "out_cal" / "scores.txt")
    want = calibration_metrics(raw, labels, Calibration(scale=12.0, offset=-3.0))
    for key in ("Cllr", "minCllr", "actDCF_0.01", "actDCF_0.05"):
        assert metrics[key] == pytest.approx(want[key], rel=1e-12), key
    assert metrics["options"]["calibration"] == str(model / "calibration.json")
    sv.verify(_argv(setup, "out_llr", "--calibrated_scores", "True"))
    _, llr, _ = _read_scores(setup["base"] / "out_llr" / "scores.txt")
    np.testing.assert_allclose(llr, 12.0 * raw - 3.0, rtol=1e-12)
    # normalised scores are not what the calibration was fitted on: not applied
    m = sv.verify(_argv(setup, "out_sn", "--norm", "snorm"))
    assert m["options"]["calibration"] is None and "Cllr" not in m and "minCllr" in m


def test_model_directory_and_trial_ids_are_checked_before_embedding(
    setup, tmp_path, capsys, monkeypatch
):
    """A corrupt calibration.json / qmf.json of the model directory, a training output
    folder given as the model, and a trial ID that is not in --test_csv: one error line
    naming the file (and line), before any file is embedded (they came after it)."""
    import shutil

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before the check")

    monkeypatch.setattr(sv, "score", embedded)
    w = _wavs(setup)
    trials = _write_trials(setup, "model_checks.txt", [f"1 {w[0]} {w[1]}", f"0 {w[0]} {w[4]}"])

    def refused(model, *extra):
        argv = _argv(dict(setup, model=model), "out_mc", "--trials_file", trials, *extra)
        code = sv.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err[-2000:]
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err[-2000:]
        return errors[0]

    for name in ("calibration.json", "qmf.json"):
        model = tmp_path / name.split(".")[0]
        shutil.copytree(setup["model"], model)
        (model / name).write_text('{"format": 1,\n "scale": 2.0,\n oops\n}\n')
        assert refused(model).startswith(f"error: {model / name}:3: not valid JSON")

    run = tmp_path / "run"  # a training output folder: the recipe's yaml, the model in model/
    shutil.copytree(setup["model"], run / "model")
    (run / "hyperparams.yaml").write_text("a: &id001 [1]\nb: *id001\n")
    assert refused(run) == f"error: {run}: is a training output folder; use {run / 'model'}"

    root = setup["corpus"] / "wav"
    ids = [str(Path(p).relative_to(root)).replace("/", "--")[:-4] for p in w[:2]]
    trials = _write_trials(
        setup, "unknown_id.txt", [f"1 {ids[0]} {ids[1]}", f"0 {ids[0]} id99999--sess0--00001"]
    )
    test_csv = setup["corpus"] / "manifests" / "test.csv"
    assert refused(setup["model"], "--test_csv", test_csv) == (
        f"error: {trials}:2: id99999--sess0--00001 is not an ID in {test_csv} (nor a file)"
    )


def test_embedding_map(setup):
    sv.verify(_argv(setup, "out_map", "--embedding_map", "True"))
    png = setup["base"] / "out_map" / "embedding_map.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_short_manifest_rows_are_named(tmp_path):
    from maskproxy_losses.data.trials import read_manifest_wavs, read_speaker_wavs
    from maskproxy_losses.utils.errors import InputError

    path = tmp_path / "train.csv"
    path.write_text("ID,duration,wav,spk_id\nu1,1.0,/a.wav,s1\nu2\n")
    with pytest.raises(InputError, match=f"{path}:3: expected 4 fields"):
        read_speaker_wavs(path)
    with pytest.raises(InputError, match=f"{path}:3: expected 4 fields"):
        read_manifest_wavs(path)


@pytest.mark.parametrize("mode", ["cosine", "ten_crop"])
def test_a_file_that_embeds_to_nan_is_named_or_skipped_never_cached(setup, capsys, mode):
    """Finite but absurd float samples pass the probe and overflow the front end: the run
    stops naming the trial line, or with --skip_bad scores the rest; the cache stays clean."""
    import soundfile as sf

    from maskproxy_losses.inference.embedding import EmbeddingCache

    w = _wavs(setup)
    huge = setup["base"] / "huge.wav"
    sf.write(huge, np.where(np.arange(16000) % 2, 1e20, -1e20), 16000, subtype="FLOAT")
    lines = [f"1 {w[0]} {w[1]}", f"0 {w[0]} {huge}", f"0 {w[0]} {w[5]}", f"1 {w[4]} {w[5]}"]
    trials = _write_trials(setup, f"huge_{mode}.txt", lines)
    cache = setup["base"] / f"cache_nan_{mode}"
    argv = _argv(setup, "out_nan", "--trials_file", str(trials), "--score_mode", mode, cache=cache)
    assert sv.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {trials}:2: non-finite embedding (NaN/Inf) of {huge}" in err
    assert "Traceback" not in err
    metrics = sv.verify([*argv, "--skip_bad", "True"])
    assert metrics["n_trials"] == 3 and metrics["skipped"]["count"] == 1
    assert np.isfinite(metrics["EER"])
    labels, scores, rows = _read_scores(setup["base"] / "out_nan" / "scores.txt")
    assert labels.tolist() == [1, 0, 1] and np.isfinite(scores).all()
    for folder in {p.parent for p in cache.rglob("shard-*.npz")}:
        table = EmbeddingCache(folder).table
        assert len(table) == 4 and all(np.isfinite(e).all() for e in table.values())


@pytest.mark.slow
def test_a_million_trials_over_few_files_cost_memory_per_file_not_per_trial(setup, tmp_path):
    """1,000,000 trials over 12 files with a 512-d model: the run's peak RSS exceeds that
    of a 100-trial run over the same files by the trial records, the scores and the
    metrics' sorting (about 550 MB with these long test paths), not by [n_trials, D]
    gathers (two of 1M x 512 float64: 8 GB). The absolute figure is in
    docs/reliability.md (benchmarks/bench_long_list.py)."""
    import textwrap

    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=512).eval()
    model_dir = export_model(tmp_path / "model512", model, frontend="fbank")
    w = _wavs(setup)
    rng = np.random.default_rng(0)

    def peak_kib(n):
        a, b = rng.integers(0, len(w), n), rng.integers(0, len(w), n)
        lines = [f"{int(i % 2 == j % 2)} {w[i]} {w[j]}\n" for i, j in zip(a, b)]
        (tmp_path / f"t{n}.txt").write_text("".join(lines))
        argv = _argv(setup, f"out_{n}", "--trials_file", str(tmp_path / f"t{n}.txt"))
        argv[argv.index("--pretrained_path") + 1] = str(model_dir)
        argv += ["--precision", "fp32"]
        code = textwrap.dedent(
            f"""
            import resource, runpy, sys
            sys.argv = [{str(SCRIPT)!r}] + {argv!r}
            try:
                runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
            except SystemExit as stop:
                assert not stop.code, stop.code
            print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return int(proc.stdout.split("peak_kib")[1].split()[0])

    small, large = peak_kib(100), peak_kib(1_000_000)
    assert (large - small) * 1024 < 1e9, (small, large)  # 1 KB per trial at most


def test_option_twice_and_a_missing_device_are_one_line(setup, capsys):
    argv = _argv(setup, "out_opts", "--score_mode", "cosine", "--score_mode=ten_crop")
    assert sv.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --score_mode is given twice (cosine and ten_crop)")
    if not torch.cuda.is_available():
        argv = _argv(setup, "out_opts")
        argv[argv.index("--device") + 1] = "cuda:0"
        assert sv.main(argv) == 2
        err = capsys.readouterr().err
        assert "error: --device cuda:0: CUDA is not available" in err and "Traceback" not in err


def test_44k_stereo_trial_files_are_resampled_unless_refused(setup, capsys):
    """A trial list naming 44.1 kHz stereo copies (scipy's resampler, channels differing)
    scores as the 16 kHz originals do; --resample False refuses them."""
    import soundfile as sf
    from scipy.signal import resample_poly

    w = _wavs(setup)
    copies = []
    for i, path in enumerate(w[:4]):
        x, _ = sf.read(path, dtype="float64")
        up = resample_poly(x, 441, 160)
        noise = 0.002 * np.random.default_rng(i).standard_normal(up.size)
        copies.append(setup["base"] / f"stereo44k_{i}.wav")
        sf.write(copies[-1], np.stack([up + noise, up - noise], 1), 44100, subtype="FLOAT")
    rows = [(1, 0, 1), (0, 0, 2), (0, 1, 3), (1, 2, 3)]
    orig = _write_trials(setup, "orig16k.txt", [f"{lab} {w[a]} {w[b]}" for lab, a, b in rows])
    conv = _write_trials(setup, "conv44k.txt", [f"{lab} {copies[a]} {w[b]}" for lab, a, b in rows])
    sv.verify(_argv(setup, "out_16k", "--trials_file", str(orig), "--precision", "fp32"))
    sv.verify(_argv(setup, "out_44k", "--trials_file", str(conv), "--precision", "fp32"))
    s16 = _read_scores(setup["base"] / "out_16k" / "scores.txt")[1]
    s44 = _read_scores(setup["base"] / "out_44k" / "scores.txt")[1]
    # Measured: at most 1.4e-5 apart, while the 4 trials' scores spread over 8.4e-4.
    assert np.abs(s44 - s16).max() < min(5e-5, np.ptp(s16) / 10)
    err = _expect_exit2(setup, capsys, conv, "--resample", "False")  # cached: refused anyway
    assert f"{conv}:1: sample rate 44100 Hz, expected 16000: {copies[0]}" in err

#!/usr/bin/env python3
"""Peak memory of the verification recipe on a long trial list over few files.

    .venv/bin/python benchmarks/bench_long_list.py [--trials 1000000] [--files 16]

Writes ``--files`` random 2 s wavs, a small exported model and a ``--trials`` line trial
list over them, then runs ``speaker_verification_cosine.py`` in a subprocess and reports
its peak resident memory (``ru_maxrss``) and seconds. The baseline, run the same way in
the same call, is the recipe with the former one-pass cosine scoring (two ``[n_trials,
D]`` float64 gathers), patched in; the target is a run within 1 GB at 1,000,000 trials,
whatever the embedding size.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "VoxCeleb" / "MaskProxy" / "speaker_verification_cosine.py"
HPARAMS = ROOT / "recipes" / "VoxCeleb" / "MaskProxy" / "hparams" / "verification.yaml"

ONE_PASS = """
import numpy as np
from maskproxy_losses.scoring import cosine

def one_pass(emb, e, t, chunk=None):  # the scoring before issue 21: whole-list gathers
    emb = cosine.l2_normalize(cosine._as_np(emb).astype(np.float64))
    return np.einsum("ij,ij->i", emb[np.asarray(e)], emb[np.asarray(t)])

cosine.cosine_scores = one_pass
"""


def setup(base, n_files, n_trials, emb_dim):
    from maskproxy_losses.inference.export import export_model
    from maskproxy_losses.models.resnetse34l import ResNetSE34L

    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=emb_dim)
    model_dir = export_model(base / "model", model.eval())
    rng = np.random.default_rng(0)
    wavs = []
    for i in range(n_files):
        wavs.append(base / "wav" / f"id{i:05d}" / "a.wav")
        wavs[-1].parent.mkdir(parents=True)
        sf.write(wavs[-1], rng.normal(0, 0.1, 32000), 16000, subtype="PCM_16")
    a, b = rng.integers(0, n_files, n_trials), rng.integers(0, n_files, n_trials)
    labels = (a % 2 == b % 2).astype(int)  # both classes
    with open(base / "trials.txt", "w") as f:
        for lab, i, j in zip(labels, a, b):
            f.write(f"{lab} id{i:05d}/a.wav id{j:05d}/a.wav\n")
    return model_dir


def run(base, model_dir, patch):
    argv = [
        str(HPARAMS),
        *("--pretrained_path", str(model_dir), "--trials_file", str(base / "trials.txt")),
        *("--test_root", str(base / "wav"), "--output_folder", str(base / "out")),
        *("--cache_dir", str(base / "cache"), "--device", "cpu", "--precision", "fp32"),
    ]
    code = (patch if patch else "") + textwrap.dedent(
        f"""
        import resource, runpy, sys
        sys.argv = [{str(SCRIPT)!r}] + {argv!r}
        try:
            runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
        except SystemExit as stop:
            code = stop.code
        print("peak_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        sys.exit(code)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=base
    )
    seconds = time.perf_counter() - t
    peak = [int(line.split()[1]) for line in proc.stdout.splitlines() if line[:8] == "peak_kib"]
    return proc, seconds, peak[0] if peak else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--emb-dim", type=int, default=512)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        model_dir = setup(base, args.files, args.trials, args.emb_dim)
        rows = [("chunked (this code)", "")]
        if not args.skip_baseline:
            rows.append(("one-pass gathers (before)", ONE_PASS))
        print(f"{args.trials} trials over {args.files} files, {args.emb_dim}-d embeddings")
        for name, patch in rows:
            proc, seconds, peak = run(base, model_dir, patch)
            if proc.returncode != 0:
                print(f"{name}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
                continue
            gb = peak * 1024 / 1e9
            print(f"{name}: peak RSS {peak / 1024:.0f} MiB ({gb:.2f} GB), {seconds:.1f} s")


if __name__ == "__main__":
    main()

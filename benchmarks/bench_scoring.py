#!/usr/bin/env python3
"""Time verification scoring at VoxCeleb1-O scale and embedding extraction on CPU.

    .venv/bin/python benchmarks/bench_scoring.py [--threads 2] [--skip-extraction]

Scoring uses synthetic data of the real sizes: 4,874 files x 512-d embeddings, 37,720
trials, a 5,994-speaker cohort (targets: cosine + EER + minDCF < 1 s, AS-norm < 10 s).
Baselines timed in the same run: a per-trial Python loop (cosine) and per-trial cohort
scoring (AS-norm), both on a subset and extrapolated. Extraction: a full-size
ResNetSE34L exported with the fbank front end, on 8 s random waveforms. Each figure is
the best of 3 runs (the machine may be shared).
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from maskproxy_losses.data.trials import index_trials
from maskproxy_losses.scoring import cosine as scoring

N_FILES, DIM, N_TRIALS, N_COHORT, TOP_N = 4874, 512, 37720, 5994, 300


def timed(fn, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_scoring(rng):
    paths = [f"/data/voxceleb1/id{i // 122:05d}/video/{i:05d}.wav" for i in range(N_FILES)]
    table = {p: rng.normal(size=DIM).astype(np.float32) for p in paths}
    a, b = rng.integers(0, N_FILES, N_TRIALS), rng.integers(0, N_FILES, N_TRIALS)
    pairs = [(paths[i], paths[j]) for i, j in zip(a, b)]
    labels = rng.integers(0, 2, N_TRIALS)

    def cosine():
        keys, e, t = index_trials(pairs)
        emb = np.stack([table[k] for k in keys])
        return scoring.cosine_scores(emb, e, t), emb, e, t

    def metrics():
        return (
            metrics.compute_eer(scores, labels),
            metrics.compute_min_dcf(scores, labels, 0.01),
            metrics.compute_min_dcf(scores, labels, 0.05),
        )

    cos_sec, (scores, emb, e, t) = timed(cosine)
    met_sec, _ = timed(metrics)
    loop_sec, _ = timed(
        lambda: [
            float(table[x] @ table[y] / np.linalg.norm(table[x]) / np.linalg.norm(table[y]))
            for x, y in pairs
        ]
    )
    print(
        f"{N_TRIALS} trials / {N_FILES} files: cosine scores {cos_sec:.3f} s (per-trial loop "
        f"baseline {loop_sec:.3f} s, x{loop_sec / cos_sec:.1f}) + EER + 2 x minDCF "
        f"{met_sec:.3f} s = {cos_sec + met_sec:.3f} s (target < 1 s)"
    )

    cohort = rng.normal(size=(N_COHORT, DIM)).astype(np.float32)
    as_sec, _ = timed(lambda: scoring.score_norm(scores, emb, e, t, cohort, top_n=TOP_N))
    cn = scoring.l2_normalize(cohort)
    en = scoring.l2_normalize(emb)

    def per_trial(k):
        for i in range(k):
            for f in (e[i], t[i]):
                c = np.partition(cn @ en[f], -TOP_N)[-TOP_N:]
                c.mean(), c.std()

    base_sec, _ = timed(lambda: per_trial(100))
    base_sec *= N_TRIALS / 100
    print(
        f"AS-norm (top {TOP_N} of {N_COHORT} cohort speakers): {as_sec:.2f} s "
        f"(target < 10 s); per-trial cohort scoring baseline {base_sec:.1f} s "
        f"(x{base_sec / as_sec:.0f})"
    )

    crops = rng.normal(size=(N_FILES, 10, DIM)).astype(np.float32)
    tc_sec, _ = timed(lambda: scoring.ten_crop_scores(crops, e, t))
    print(f"10-crop scores (explicit 10 x 10 grid), {N_TRIALS} trials: {tc_sec:.2f} s")


def bench_extraction(n_utts=16, seconds=8.0, batch=8, n_crop=3):
    from speechbrain.inference.speaker import EncoderClassifier

    from maskproxy_losses.inference.export import export_model
    from maskproxy_losses.models.resnetse34l import ResNetSE34L

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(f"{tmp}/model", ResNetSE34L().eval(), frontend="fbank")
        enc = EncoderClassifier.from_hparams(source=f"{tmp}/model", savedir=f"{tmp}/save")
    wavs = torch.rand(n_utts, int(seconds * 16000)) * 0.2 - 0.1
    with torch.no_grad():
        enc.encode_batch(wavs[:2])  # warm-up
        sec, _ = timed(
            lambda: [enc.encode_batch(wavs[i : i + batch]) for i in range(0, n_utts, batch)]
        )
        full = n_utts / sec
        sec, _ = timed(
            lambda: [enc.encode_batch(scoring.make_crops(wavs[i], 400, 10)) for i in range(n_crop)]
        )
        crop = n_crop / sec
    print(
        f"extraction, ResNetSE34L on CPU ({torch.get_num_threads()} threads), {seconds:g} s "
        f"utterances: full {full:.1f} utt/s ({full * seconds:.0f}x real time); "
        f"10 crops x 4 s: {crop:.2f} utt/s"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-extraction", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_scoring(np.random.default_rng(0))
    if not args.skip_extraction:
        bench_extraction()


if __name__ == "__main__":
    main()

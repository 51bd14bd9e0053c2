#!/usr/bin/env python3
"""Time pair verification from Python: ``verify_pair`` (loads the model each call) against
a ``Verifier`` loaded once, on the same pairs, in the same run.

    .venv/bin/python benchmarks/bench_api.py [--pairs 10] [--threads 2] [--seconds 3]

A full-size ResNetSE34L (fbank front end, calibration.json) is exported to a temporary
folder; the pairs are a chain of random waveforms of ``--seconds`` (file i against file
i + 1, so each file is in two pairs, as an enrolment file is in many trials) written as
16 kHz wav files. Printed: the model load alone, and the time per pair of both (the
``Verifier``'s including its one load). Each figure is the best of 3 runs (the machine may
be shared); the ratio is the point (target: the ``Verifier`` at least 1.5x faster per
pair than ``verify_pair``).
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import soundfile as sf
import torch

from maskproxy_losses.inference.api import Verifier, load_model, verify_pair
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.scoring.calibration import Calibration


def best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    cal = Calibration(scale=10.0, offset=-5.0)
    model_dir = export_model(
        os.path.join(tmp, "model"),
        ResNetSE34L().eval(),
        extra_files={"calibration.json": json.dumps(cal.to_dict())},
    )
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.pairs + 1):
        paths.append(os.path.join(tmp, f"{i}.wav"))
        sf.write(paths[-1], rng.uniform(-0.3, 0.3, int(16000 * args.seconds)), 16000)
    pairs = [(paths[i], paths[i + 1]) for i in range(args.pairs)]

    def functions():
        return [verify_pair(model_dir, a, b, precision="fp32") for a, b in pairs]

    def loaded():
        verifier = Verifier(model_dir, precision="fp32")  # the load is part of the cost
        return [verifier.verify(a, b) for a, b in pairs]

    t_load = best_of(lambda: load_model(model_dir))
    t_func, t_obj = best_of(functions), best_of(loaded)
    n = len(pairs)
    print(f"{n} pairs of {args.seconds:g} s, {args.threads} threads, ResNetSE34L (fbank):")
    print(f"  load_model alone:                 {1000 * t_load:7.1f} ms")
    print(f"  verify_pair per pair:             {1000 * t_func / n:7.1f} ms")
    print(f"  Verifier (load once) per pair:    {1000 * t_obj / n:7.1f} ms")
    print(f"  ratio: {t_func / t_obj:.2f}x")


if __name__ == "__main__":
    main()

"""Throughput of the encoders (ResNetSE34L, ResNet34, ECAPA-TDNN at their published
widths and front-end sizes), float32 and the ``auto`` precision side by side.

Training step (forward + backward + Adam) and inference (eval, no_grad), each timed in
alternating blocks of ``--iters`` iterations: float32, then the precision that
``resolve_precision(--precision)`` picks (``auto``: bfloat16 autocast where the device
does bfloat16 natively, float32 elsewhere), ``--rounds`` times; alternating keeps slow
drifts of a shared machine out of the ratio. Prints the choice and its reason, the rates
per round and the ratio of the totals; with several ``--encoder`` values, each one's
training rate as a ratio to the first one's, timed in the same run.

Usage::

    python benchmarks/bench_encoder.py [--encoder resnetse34l resnet34 ecapa_tdnn]
        [--batch 128] [--frames 200] [--threads 2] [--precision auto|bf16|fp16|fp32]
        [--device cpu|cuda]
"""

import argparse
import time

import torch

from maskproxy_losses.models.ecapa_tdnn import ECAPA_TDNN
from maskproxy_losses.models.resnet34 import ResNet34
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.precision import autocast_for, resolve_precision


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(step, iters, device):
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return time.perf_counter() - start


def build(name, pooling="sap"):
    """``(model, n_mels)`` of encoder ``name`` as its recipe yaml builds it."""
    if name == "resnetse34l":
        return ResNetSE34L(n_mels=40, pooling=pooling), 40
    if name == "resnet34":
        return ResNet34(n_mels=80), 80
    return ECAPA_TDNN(input_size=80), 80


def compare(name, make_step, precisions, args):
    """Alternating timed blocks of ``make_step(precision)`` for each ``{label: precision}``
    of ``precisions``; print the rates and return ``{label: utt/s}``."""
    steps = {label: make_step(p) for label, p in precisions.items()}
    precisions = list(precisions)
    for p in precisions:  # warm-up (allocator, autocast weight casts, cuDNN choices)
        for _ in range(args.warmup):
            steps[p]()
    totals = dict.fromkeys(precisions, 0.0)
    for r in range(1, args.rounds + 1):
        rates = []
        for p in precisions:
            sec = _timed(steps[p], args.iters, args.device)
            totals[p] += sec
            rates.append(f"{p} {args.batch * args.iters / sec:8.1f} utt/s")
        print(f"  {name} round {r}: " + "  ".join(rates))
    n = args.batch * args.iters * args.rounds
    summary = "  ".join(f"{p} {n / totals[p]:8.1f} utt/s" for p in precisions)
    ratio = totals[precisions[0]] / totals[precisions[-1]]
    print(f"{name}: {summary}  ratio {precisions[-1]} / {precisions[0]} = {ratio:.2f}")
    return {p: n / totals[p] for p in precisions}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="utterances per batch")
    parser.add_argument("--frames", type=int, default=200, help="frames per utterance (200 = 2 s)")
    parser.add_argument(
        "--encoder",
        nargs="+",
        choices=["resnetse34l", "resnet34", "ecapa_tdnn"],
        default=["resnetse34l"],
        help="encoders to time (published widths; ResNetSE34L on 40 mels, the others on 80)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per precision")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per block")
    parser.add_argument("--rounds", type=int, default=2, help="alternating block pairs")
    parser.add_argument("--pooling", choices=["sap", "asp"], default="sap")
    parser.add_argument("--precision", default="auto", help="compared with fp32 (default auto)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    chosen, reason = resolve_precision(args.precision, args.device)
    # columns: label -> precision; with fp32 chosen both columns are float32 (the ratio
    # then shows the noise of the machine)
    precisions = {"fp32": "fp32", f"{args.precision}={chosen}": chosen}
    print(
        f"batch {args.batch} x {args.frames} frames on {args.device}, {args.threads} threads, "
        f"{args.warmup} warm-up + {args.rounds} x {args.iters} timed iterations per precision"
    )
    print(f"precision {args.precision!r} -> {chosen} ({reason})")
    train_rates = {}
    for name in args.encoder:
        model, n_mels = build(name, args.pooling)
        model = model.to(args.device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params:,} parameters, {n_mels} mels")
        feats = torch.randn(args.batch, args.frames, n_mels, device=args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def train_step(precision, model=model, feats=feats, optimizer=optimizer):
            def step():
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(precision, args.device):
                    loss = model(feats).float().pow(2).mean()  # losses stay float32
                loss.backward()
                optimizer.step()

            return step

        def infer_step(precision, model=model, feats=feats):
            def step():
                with torch.no_grad(), autocast_for(precision, args.device):
                    model(feats)

            return step

        model.train()
        train_rates[name] = compare(f"{name} train (fwd+bwd+Adam)", train_step, precisions, args)
        model.eval()
        compare(f"{name} infer (eval, no_grad)", infer_step, precisions, args)
    first = args.encoder[0]
    for name in args.encoder[1:]:
        ratios = "  ".join(
            f"{p} {train_rates[name][p] / train_rates[first][p]:.3f}" for p in precisions
        )
        print(f"training rate {name} / {first}: {ratios}")


if __name__ == "__main__":
    main()

"""CPU throughput of ResNetSE34L: training (forward + backward) and inference.

Usage::

    python benchmarks/bench_encoder.py [--batch 128] [--frames 200] [--threads 2]
"""

import argparse
import time

import torch

from maskproxy_losses.encoder import ResNetSE34L


def _timed(step, warmup, iters):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="utterances per batch")
    parser.add_argument("--frames", type=int, default=200, help="frames per utterance (200 = 2 s)")
    parser.add_argument("--n-mels", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--pooling", choices=["sap", "asp"], default="sap")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNetSE34L(n_mels=args.n_mels, pooling=args.pooling)
    feats = torch.randn(args.batch, args.frames, args.n_mels)
    print(f"ResNetSE34L({args.pooling}) parameters: {sum(p.numel() for p in model.parameters()):,}")
    print(f"batch {args.batch} x {args.frames} frames x {args.n_mels} mels, "
          f"{args.threads} threads, {args.warmup} warm-up + {args.iters} timed iterations")

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model(feats).pow(2).mean().backward()
        optimizer.step()

    sec = _timed(train_step, args.warmup, args.iters)
    print(f"train  (fwd+bwd+Adam): {sec * 1000:8.1f} ms/batch  {args.batch / sec:8.1f} utt/s")

    model.eval()

    def infer_step():
        with torch.no_grad():
            model(feats)

    sec = _timed(infer_step, args.warmup, args.iters)
    print(f"infer  (eval, no_grad): {sec * 1000:8.1f} ms/batch  {args.batch / sec:8.1f} utt/s")


if __name__ == "__main__":
    main()

"""Forward+backward time of every loss at the authors' size, against two baselines.

Baselines timed in the same run: the bare floor (``q @ P.T`` forward+backward with
``q: [B, D]`` and ``P: [C, D]`` both requiring grad) and SpeechBrain's AAM-softmax
(``LogSoftmaxWrapper(AdditiveAngularMargin(0.2, 30))`` over all ``2B`` utterances with
a cosine classifier of the same size). Prints each loss's median time and ratios.

    python benchmarks/bench_losses.py --threads 2
    python benchmarks/bench_losses.py --device cuda:0    # on a GPU (synchronised timings)
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from maskproxy_losses import build_loss


def median_ms(step, repeats, warmup, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speakers", type=int, default=200, help="B, speakers per batch")
    parser.add_argument("--utts", type=int, default=2, help="utterances per speaker")
    parser.add_argument("--classes", type=int, default=5994, help="C, training speakers")
    parser.add_argument("--dim", type=int, default=512, help="D, embedding size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, C, D, k = args.speakers, args.classes, args.dim, args.utts
    dev = torch.device(args.device)

    q = torch.randn(B, D, device=dev, requires_grad=True)
    P = torch.randn(C, D, device=dev, requires_grad=True)

    def floor():
        (q @ P.t()).sum().backward()

    emb = torch.randn(B * k, D, device=dev, requires_grad=True)
    labels = torch.randperm(C)[:B].repeat_interleave(k).to(dev)
    weight = torch.randn(C, D, device=dev, requires_grad=True)
    aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))

    def aam_step():
        cos = F.linear(F.normalize(emb), F.normalize(weight))
        aam(cos.unsqueeze(1), labels.unsqueeze(1)).backward()

    results = {"floor": median_ms(floor, args.repeats, args.warmup, dev)}
    results["aam_softmax"] = median_ms(aam_step, args.repeats, args.warmup, dev)
    for name in ("mp", "mp_balance", "mmp", "mmp_balance", "ap"):
        loss_fn = build_loss(name, C, D).to(dev)
        results[name] = median_ms(
            lambda f=loss_fn: f(emb, labels).backward(), args.repeats, args.warmup, dev
        )

    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"threads={args.threads}"
    print(f"B={B} x {k} utts, C={C}, D={D}, {where}, torch {torch.__version__}")
    print(f"{'':12s} {'ms':>8s} {'x floor':>8s} {'x AAM':>8s}")
    for name, ms in results.items():
        print(
            f"{name:12s} {ms:8.1f} {ms / results['floor']:8.2f} {ms / results['aam_softmax']:8.2f}"
        )


if __name__ == "__main__":
    main()

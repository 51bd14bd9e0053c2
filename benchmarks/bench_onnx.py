"""CPU inference throughput: onnxruntime on the exported ONNX graph vs PyTorch encode_batch.

For each front end a freshly initialised ResNetSE34L (default size) is exported with
``export_model`` and then with ``export_onnx``; or give ``--model-dir`` (e.g. a
converted authors' checkpoint). Both runtimes embed the same batch (default 16
waveforms of 4 s); timing blocks alternate between them so that load from other
processes hits both alike. Prints utt/s of each (median over blocks), the ratio,
the largest relative difference of the embeddings and the CPU model.

Usage::

    python benchmarks/bench_onnx.py [--batch 16] [--seconds 4] [--threads 2] [--blocks 5]
    python benchmarks/bench_onnx.py --model-dir exported/
"""

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from maskproxy_losses.inference.export import export_model
from maskproxy_losses.inference.onnx_export import OnnxEmbedder, export_onnx, relative_error
from maskproxy_losses.models.resnetse34l import ResNetSE34L


def cpu_model():
    """The CPU model name from lscpu (or /proc/cpuinfo, or platform)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _block(step, iters):
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def bench(model_dir, onnx_path, args, label):
    """Time both runtimes on one batch; print and return (torch utt/s, onnx utt/s)."""
    from speechbrain.inference.speaker import EncoderClassifier

    with tempfile.TemporaryDirectory() as save:
        classifier = EncoderClassifier.from_hparams(source=str(model_dir), savedir=save)
    classifier.eval()
    session = OnnxEmbedder(onnx_path, threads=args.threads)
    gen = torch.Generator().manual_seed(0)
    wavs = (torch.rand(args.batch, int(args.seconds * 16000), generator=gen) * 2 - 1) * 0.5
    wavs_np = wavs.numpy()

    def torch_step():
        with torch.no_grad():
            return classifier.encode_batch(wavs)

    def onnx_step():
        return session(wavs_np)

    _, err = relative_error(onnx_step(), torch_step().squeeze(1).numpy())
    for _ in range(args.warmup):
        torch_step()
        onnx_step()
    torch_sec, onnx_sec = [], []
    for _ in range(args.blocks):
        torch_sec.append(_block(torch_step, args.iters))
        onnx_sec.append(_block(onnx_step, args.iters))
    torch_ups = args.batch / statistics.median(torch_sec)
    onnx_ups = args.batch / statistics.median(onnx_sec)
    ratios = [t / o for t, o in zip(torch_sec, onnx_sec)]
    print(
        f"{label:>8}: PyTorch {torch_ups:7.1f} utt/s | onnxruntime {onnx_ups:7.1f} utt/s | "
        f"ratio ort/torch {onnx_ups / torch_ups:.2f} (per block {min(ratios):.2f}-"
        f"{max(ratios):.2f}) | max rel. diff {err:.2g}"
    )
    return torch_ups, onnx_ups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="a model directory (default: fresh ResNetSE34L)")
    parser.add_argument(
        "--frontend",
        choices=["fbank", "authors"],
        action="append",
        help="front end(s) of the fresh model (default: both); ignored with --model-dir",
    )
    parser.add_argument(
        "--dft",
        action="store_true",
        help="export the STFT with the ONNX DFT operator (export_onnx conv_stft=False)",
    )
    parser.add_argument("--batch", type=int, default=16, help="waveforms per batch")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each waveform")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per runtime")
    parser.add_argument("--blocks", type=int, default=5, help="alternating timing blocks")
    parser.add_argument("--iters", type=int, default=2, help="batches per timing block")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    print(
        f"CPU: {cpu_model()}; torch {torch.__version__}, onnxruntime "
        f"{__import__('onnxruntime').__version__}; {args.threads} threads"
    )
    print(
        f"batch {args.batch} x {args.seconds:g} s at 16 kHz, {args.warmup} warm-up, "
        f"{args.blocks} alternating blocks of {args.iters} batches; "
        f"STFT in the graph: {'ONNX DFT' if args.dft else 'conv1d'}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model_dir:
            runs = [(Path(args.model_dir), Path(args.model_dir).name)]
        else:
            runs = []
            for frontend in dict.fromkeys(args.frontend or ["fbank", "authors"]):
                torch.manual_seed(0)
                model = ResNetSE34L().eval()
                runs.append((export_model(tmp / frontend, model, frontend=frontend), frontend))
        for model_dir, label in runs:
            start = time.perf_counter()
            onnx_path = export_onnx(
                model_dir, tmp / f"{label}.onnx", overwrite=True, conv_stft=not args.dft
            )
            print(
                f"{label:>8}: exported in {time.perf_counter() - start:.1f} s "
                f"({onnx_path.stat().st_size / 1e6:.1f} MB)"
            )
            bench(model_dir, onnx_path, args, label)


if __name__ == "__main__":
    main()

"""``precision: auto`` on a GPU: float32 (TF32) unless bfloat16 is measured faster there.

On an H100 bfloat16 autocast made ResNetSE34L *slower* than float32 at the batch sizes
measured (``docs/results.md``), so native bfloat16 support does not decide. Before a
training run on a GPU, :func:`gpu_precision_probe` times a few steps of a copy of the
run's encoder at the run's batch shape (forward, backward, gradient clipping, SGD step:
what the recipe's step does besides the loss) in TF32 float32 and in bfloat16 with the
encoder in ``channels_last``, both with ``cudnn.benchmark``, and picks bfloat16 only
when it is at least ``margin`` (5 %) faster. The figures and the choice are written to
``<save_folder>/precision.json`` and reused when the run is resumed on the same GPU
with the same batch shape, so a resumed run keeps its precision. Under DDP (several
processes) nothing is measured: a saved choice is reused, else float32.

:func:`time_step` is the timing itself and runs on any device (the tests use the CPU).

Example
-------
>>> from maskproxy_losses import ResNetSE34L
>>> model = ResNetSE34L(channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1), emb_dim=8)
>>> rate = time_step(model, (4, 50, 40), "cpu", "fp32", steps=1, warmup=1)
>>> rate > 0
True
"""

import copy
import json
import os
import time
from pathlib import Path

import torch

from maskproxy_losses.utils.files import atomic_write_text

__all__ = ["time_step", "choose", "gpu_precision_probe", "PROBE_FILE"]

PROBE_FILE = "precision.json"


def time_step(model, shape, device, precision, steps=5, warmup=2, max_grad_norm=5.0):
    """Utterances per second of training steps of ``model`` (changed: give a copy) on
    random features of ``shape`` (batch, frames, mels) at ``precision`` (``fp32`` or
    ``bf16``): forward, backward, gradient clipping, SGD step with momentum."""
    device = torch.device(device)
    model = model.to(device).train()
    if precision == "bf16" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)
    feats = torch.randn(*shape, device=device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
            out = model(feats)
        out.float().square().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return shape[0] * steps / (time.perf_counter() - start)


def choose(rates, margin=1.05):
    """``(precision, why)`` from measured ``{"fp32": utt/s, "bf16": utt/s}``: ``bf16``
    only when at least ``margin`` times as fast as ``fp32``.

    >>> choose({"fp32": 1313.0, "bf16": 1112.0})[0], choose({"fp32": 100.0, "bf16": 180.0})[0]
    ('fp32', 'bf16')
    """
    fp32, bf16 = rates["fp32"], rates["bf16"]
    precision = "bf16" if bf16 >= margin * fp32 else "fp32"
    return precision, (
        f"measured {fp32:.0f} utt/s in float32 (TF32), {bf16:.0f} in bfloat16 "
        f"(channels_last): {'bfloat16 autocast' if precision == 'bf16' else 'float32'}"
    )


def _gpu_name(device):
    return torch.cuda.get_device_name(torch.device(device))


def gpu_precision_probe(hparams, device, steps=5, warmup=3):
    """A ``measure()`` for :func:`maskproxy_losses.utils.precision.resolve_precision`: the
    choice for ``hparams["embedding_model"]`` at the run's batch shape on the GPU
    ``device`` (see the module), saved in ``<save_folder>/precision.json``."""

    def measure():
        utts = hparams["utts_per_speaker"]
        utts = max(utts) if isinstance(utts, (list, tuple)) else utts
        shape = [hparams["speakers_per_batch"] * utts, hparams["crop_frames"] + 2]
        shape.append(hparams["n_mels"])
        key = {"gpu": _gpu_name(device), "shape": shape, "torch": torch.__version__}
        path = Path(hparams["save_folder"]) / PROBE_FILE
        try:
            saved = json.loads(path.read_text())
            if {k: saved.get(k) for k in key} == key:
                return saved["precision"], f"{saved['why']} (saved in {path})"
        except (OSError, ValueError, KeyError):
            pass
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return "fp32", "not measured under DDP (no saved choice): float32"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        model = hparams["embedding_model"]
        rates = {
            p: time_step(copy.deepcopy(model), shape, device, p, steps, warmup)
            for p in ("fp32", "bf16")
        }
        torch.cuda.empty_cache()
        precision, why = choose(rates)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {**key, "rates": rates, "precision": precision, "why": why}
        atomic_write_text(path, json.dumps(record, indent=2))
        return precision, why

    return measure

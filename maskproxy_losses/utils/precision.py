"""Numeric precision: ``auto`` picks what is fastest on the device, never slower than float32.

- **CPU**: bfloat16 autocast roughly doubles ResNetSE34L training throughput on CPUs with
  native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16: 1.93x float32 on a Xeon with
  AMX, ``docs/results.md``) and is far slower without it (0.15x on an AMD EPYC without
  it: the conversions are emulated). ``auto`` is ``bf16`` with native support, else
  ``fp32``.
- **GPU**: there native bfloat16 is not enough: on an H100 the bare encoder trained at
  1,313 utt/s in float32 against 1,112 in bfloat16 (40 utterances per batch), the recipe
  at 2,213 against 2,120 (120), so ``auto`` is float32 (which the training recipe runs
  as TF32) unless a measurement on that GPU finds bfloat16 faster: ``resolve_precision``
  takes that measurement as ``measure`` (the training recipe passes
  :func:`maskproxy_losses.training.precision_probe.gpu_precision_probe`); without one,
  ``fp32``.

Explicit values (``fp32``, ``bf16``, ``fp16``) pass through unchanged, with the reason in
words. The losses keep computing in float32 inside autocast (they cast their inputs
themselves).

``MASKPROXY_CPU_BF16=1`` (or ``0``) makes the CPU answer as if it had (or lacked) native
bfloat16, whatever ``/proc/cpuinfo`` says. It exists for the test suite, which runs its
precision-sensitive tests both ways on every machine (``./run_tests.sh``); subprocesses
inherit it, so command-line tools follow it too.

Example
-------
>>> precision, reason = resolve_precision("fp32", "cpu")
>>> precision, reason
('fp32', 'requested: fp32')
>>> resolve_precision("auto", "cpu")[0] in ("fp32", "bf16")
True
>>> with autocast_for("bf16", "cpu"):
...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
torch.bfloat16
"""

import contextlib
import dataclasses
import os
import sys

import torch

from maskproxy_losses.utils.errors import InputError

__all__ = [
    "PRECISIONS",
    "CPU_BF16_FLAGS",
    "CPU_BF16_ENV",
    "read_cpu_flags",
    "native_bf16",
    "resolve_precision",
    "autocast_for",
    "resolve_run_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bfloat16
CPU_BF16_ENV = "MASKPROXY_CPU_BF16"  # tests: 1 / 0 = as if the CPU had / lacked native bf16
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def read_cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags listed in ``/proc/cpuinfo`` (a set), or None where there is
    no such file (not Linux, or unreadable). Tests replace this function to simulate
    other CPUs."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        return None
    return set()


def _device(device):
    return torch.device(device if device is not None else "cpu")


def _forced_cpu_bf16():
    """True / False when ``MASKPROXY_CPU_BF16`` is set to 1 / 0, None when unset or empty."""
    value = os.environ.get(CPU_BF16_ENV, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise InputError(f"{CPU_BF16_ENV}={value!r}: expected 1, 0 or unset")
    return value == "1"


def _bf16_support(device):
    """``(native, why)`` for bfloat16 on ``device``."""
    device = _device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        with torch.cuda.device(index):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native, f"GPU {name} {'supports' if native else 'lacks'} native bfloat16"
    if device.type == "cpu":
        forced = _forced_cpu_bf16()
        if forced is not None:
            return forced, (
                f"CPU {'has' if forced else 'lacks'} native bfloat16 as set by "
                f"{CPU_BF16_ENV}={int(forced)}"
            )
        flags = read_cpu_flags()
        if flags is None:
            return False, "CPU bfloat16 support unknown (no /proc/cpuinfo)"
        found = [f for f in CPU_BF16_FLAGS if f in flags]
        if found:
            return True, f"CPU has {'/'.join(found)} (native bfloat16)"
        return False, (
            f"CPU lacks native bfloat16 (no {'/'.join(CPU_BF16_FLAGS)} in /proc/cpuinfo)"
        )
    return False, f"no bfloat16 detection for {device.type} devices"


def native_bf16(device="cpu"):
    """Whether ``device`` does bfloat16 arithmetic natively.

    CUDA: ``torch.cuda.is_bf16_supported`` without emulation; CPU: the Linux
    ``/proc/cpuinfo`` flags ``avx512_bf16`` or ``amx_bf16``; anything else: False.

    >>> native_bf16("meta")
    False
    """
    return _bf16_support(device)[0]


def resolve_precision(requested, device="cpu", measure=None):
    """``(precision, reason)``: ``requested`` (``auto``, ``fp32``, ``bf16`` or ``fp16``;
    None means ``auto``) made concrete for ``device``.

    ``auto``: on a CPU ``bf16`` where :func:`native_bf16` holds, else ``fp32``; on a GPU
    with native bfloat16 what ``measure()`` returns (``(precision, why)``, e.g. timed
    training steps), ``fp32`` without a measurement or native bfloat16.

    >>> resolve_precision("bf16", "cpu")
    ('bf16', 'requested: bf16')
    >>> resolve_precision("auto", "meta")
    ('fp32', 'auto: no bfloat16 detection for meta devices: float32')
    """
    value = "auto" if requested is None else str(requested).strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if value != "auto":
        return value, f"requested: {value}"
    native, why = _bf16_support(device)
    if native and _device(device).type == "cuda":
        if measure is None:
            return "fp32", f"auto: {why}, bfloat16 not measured faster here: float32"
        precision, measured = measure()
        return precision, f"auto: {why}; {measured}"
    if native:
        return "bf16", f"auto: {why}: bfloat16 autocast"
    return "fp32", f"auto: {why}: float32"


def autocast_for(precision, device="cpu"):
    """Context manager running the block under ``precision`` on ``device``: a no-op for
    ``fp32``, ``torch.autocast`` for ``bf16`` / ``fp16`` (``auto`` is resolved first).
    For inference code; training under SpeechBrain's ``Brain`` gets its autocast from
    the ``precision`` run option.

    >>> with autocast_for("fp32", "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    """
    precision, _ = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(device).type, dtype=_DTYPES[precision])


def resolve_run_precision(hparams, run_opts, device=None, key="precision", measure=None):
    """SpeechBrain run options with ``key`` (``precision`` or ``eval_precision``) made
    concrete, and the reason: a command-line value wins, then ``hparams[key]``, then
    ``auto``.

    SpeechBrain's ``--precision`` accepts only fp32 / fp16 / bf16, so ``auto`` lives in
    the hparams (``precision: auto``). The returned ``RunOptions`` mark ``key`` as
    given on the command line, so ``sb.Brain`` uses the resolved value whatever the
    hparams say. ``device`` defaults to the run's device (run option, hparams, then
    SpeechBrain's guess); ``measure`` goes to :func:`resolve_precision`.

    >>> from speechbrain.utils.run_opts import RunOptions
    >>> opts, why = resolve_run_precision({"precision": "fp32"}, RunOptions(), "cpu")
    >>> opts.precision, why
    ('fp32', 'requested: fp32')
    """
    from speechbrain.utils.distributed import infer_device
    from speechbrain.utils.run_opts import RunOptions

    if run_opts is None:
        run_opts = RunOptions()
    elif isinstance(run_opts, dict):
        run_opts = RunOptions.from_dictionary(run_opts)
    given = run_opts.overridden_args
    if device is None:
        if "device" in given and run_opts.device:
            device = run_opts.device
        else:
            device = hparams.get("device") or run_opts.device or infer_device()
    requested = getattr(run_opts, key) if key in given else hparams.get(key, "auto")
    precision, reason = resolve_precision(requested, device, measure)
    run_opts = dataclasses.replace(run_opts, **{key: precision}, overridden_args=given | {key})
    return run_opts, reason

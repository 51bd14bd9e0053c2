"""Dev / test embedding batches: whole files, padded, in length-bucketed batches.

- :func:`budget_batches`: indices longest first, grouped so that a batch's padded size
  (files x longest) stays within a budget of samples; a file longer than the budget is a
  batch of its own. The batched, cached ``Embedder`` uses it too.
- :class:`LengthBatches`: those batches as a DataLoader ``batch_sampler``.
- :func:`frame_pad`: the padding function of the verification collate. Its relative
  lengths count feature frames (``n // 160 + 1`` of a centred 10 ms STFT), in float64,
  so ``round(length * T)`` (the encoder) and SpeechBrain's ``make_padding_mask`` (the
  normalisation) both keep exactly the frames the file has alone: the masked encoder
  then gives a padded file the embedding it gets alone (``tests/test_dev_pass.py`` says
  within what tolerance).
- :func:`trial_files`: a manifest dataset reduced to the files a trial list uses.
- :func:`verification_loader_options`: the DataLoader options of a dev / test pass.

Example
-------
>>> budget_batches([5, 9, 3, 4], budget=12)   # 9 alone; 5 + 4 (2 x 5 = 10); 3
[[1], [0, 3], [2]]
>>> batch, lens = frame_pad([torch.zeros(480), torch.zeros(160)])
>>> batch.shape, lens.tolist()                  # 4 and 2 frames of 4
(torch.Size([2, 480]), [1.0, 0.5])
"""

import os

import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.data_utils import batch_pad_right

from maskproxy_losses.data.audio import HOP, SAMPLE_RATE
from maskproxy_losses.data.crops import auto_num_workers
from maskproxy_losses.utils.errors import InputError

__all__ = [
    "budget_batches",
    "LengthBatches",
    "frame_pad",
    "float32_lengths",
    "FrameCollate",
    "trial_files",
    "verification_loader_options",
    "auto_batch_seconds",
]


def budget_batches(lengths, budget, max_len=None):
    """Index batches of ``lengths`` (samples), longest first: a batch grows while ``(files +
    1) x longest`` stays within ``budget``; a length counts at most ``max_len``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, batch, longest = [], [], 0
    for i in order:
        n = lengths[i] if max_len is None else min(lengths[i], max_len)
        if batch and (len(batch) + 1) * max(longest, n) > budget:
            batches.append(batch)
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, n)
    if batch:
        batches.append(batch)
    return batches


class LengthBatches(torch.utils.data.Sampler):
    """``batch_sampler`` over a dataset whose item ``i`` has ``lengths[i]`` samples: the
    :func:`budget_batches` of ``batch_seconds`` of padded audio, the same every epoch."""

    def __init__(self, lengths, batch_seconds=400.0):
        self.batches = budget_batches(list(lengths), max(1, int(batch_seconds * SAMPLE_RATE)))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def frame_pad(tensors, hop=HOP):
    """``(batch, lengths)`` as SpeechBrain's ``batch_pad_right``, the relative lengths in
    feature frames: ``(n // hop + 1) / (N // hop + 1)`` for ``n`` samples padded to ``N``,
    float64 (see the module)."""
    batch, _ = batch_pad_right(list(tensors))
    longest = batch.shape[1] // hop + 1
    frames = torch.tensor([t.shape[0] // hop + 1 for t in tensors], dtype=torch.float64)
    return batch, frames / longest


def float32_lengths(lengths):
    """:func:`frame_pad`'s float64 relative lengths as float32, each rounded toward zero,
    so that ``length * T`` never exceeds a file's frames (a float32 rounded up would let
    SpeechBrain's ``make_padding_mask`` keep one padded frame) nor falls half a frame
    short: for models whose layers take float32 lengths only (SpeechBrain's ECAPA-TDNN).

    >>> x = torch.tensor([1 / 3], dtype=torch.float64)
    >>> bool(float32_lengths(x).double() <= x), float(float32_lengths(x) * 3) <= 1.0
    (True, True)
    """
    down = lengths.float()
    over = down.double() > lengths
    return torch.where(over, torch.nextafter(down, torch.zeros_like(down)), down)


class FrameCollate:
    """``collate_fn`` of the verification loader: SpeechBrain's ``PaddedBatch`` padded by
    :func:`frame_pad`."""

    def __call__(self, examples):
        return PaddedBatch(examples, padding_func=frame_pad)

    def __repr__(self):
        return "FrameCollate()"


def trial_files(dataset, trials):
    """``dataset`` (a manifest ``DynamicItemDataset`` with a ``wav`` column) reduced to the
    files ``trials`` (``Trial`` records) name, sorted by ``duration``."""
    used = {p for t in trials for p in (t.enrol_path, t.test_path)}
    return dataset.filtered_sorted(
        sort_key="duration", key_test={"wav": lambda wav: os.path.abspath(wav) in used}
    )


def auto_batch_seconds(value, device="cpu"):
    """Seconds of padded audio per dev / test batch: a number as given, or ``"auto"``: 100
    on a CPU (measured fastest there, ``benchmarks/bench_dev_pass.py``: 0.80x the time of
    one file at a time, where 400 s batches took 1.24x) and 400 on a GPU (larger batches
    keep it busy; not yet measured there).

    >>> auto_batch_seconds("auto", "cpu"), auto_batch_seconds("auto", "cuda:0"), auto_batch_seconds(30)
    (100.0, 400.0, 30.0)
    """
    if value == "auto":
        return 400.0 if str(device).startswith("cuda") else 100.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise InputError(f"verification_loader: batch_seconds must be auto or > 0, not {value!r}")
    return seconds


def verification_loader_options(dataset, options=None, device="cpu"):
    """DataLoader options of a dev / test pass over ``dataset`` (with a ``duration``
    column): :class:`LengthBatches` of ``options["batch_seconds"]`` seconds of padded
    audio (``auto``, the default: :func:`auto_batch_seconds`), :class:`FrameCollate`,
    ``options["num_workers"]`` loader workers (``auto`` by default, see
    :func:`~maskproxy_losses.data.crops.auto_num_workers`), pinned batches on CUDA."""
    options = dict(options or {})
    unknown = set(options) - {"batch_seconds", "num_workers"}
    if unknown:
        raise InputError(f"verification_loader: unknown option(s) {', '.join(sorted(unknown))}")
    lengths = [
        int(round(float(dataset.data[i]["duration"]) * SAMPLE_RATE)) for i in dataset.data_ids
    ]
    workers = auto_num_workers(options.get("num_workers", "auto"), device)
    return {
        "batch_sampler": LengthBatches(
            lengths, auto_batch_seconds(options.get("batch_seconds", "auto"), device)
        ),
        "collate_fn": FrameCollate(),
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": str(device).startswith("cuda"),
    }

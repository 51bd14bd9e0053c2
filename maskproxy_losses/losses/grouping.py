"""Group a mini-batch by speaker: one query and one anchor per speaker.

All the losses of this package share this step. Given only labels it runs on the
inputs' device with one host round trip: a single ``.tolist()`` that learns the number
of speakers in the batch and validates the input at the same time. Given a
:class:`SpeakerLayout` (where each speaker's utterances are, worked out on the host by
:func:`speaker_layout`, e.g. in the training collate, which has the labels anyway) it
makes no host round trip at all, so a training step can be queued on a GPU without
waiting for it (and compiled without a graph break).

Example
-------
>>> import torch
>>> emb = torch.tensor([[1., 0.], [0., 2.], [3., 0.], [0., 1.]])
>>> g = group_by_speaker(emb, torch.tensor([7, 3, 7, 3]), n_classes=10)
>>> g.labels.tolist()            # speakers in order of first appearance
[7, 3]
>>> g.queries.tolist()           # first utterance of each speaker, L2-normalised
[[1.0, 0.0], [0.0, 1.0]]
>>> g.anchors.tolist()           # mean of the remaining utterances
[[1.0, 0.0], [0.0, 1.0]]
>>> layout = speaker_layout([7, 3, 7, 3])   # the same grouping, decided on the host
>>> layout.first.tolist(), layout.slot.tolist(), layout.labels.tolist()
([0, 1], [0, 1, 0, 1], [7, 3])
>>> h = group_by_speaker(emb, torch.tensor([7, 3, 7, 3]), n_classes=10, layout=layout)
>>> torch.equal(h.anchors, g.anchors)
True
"""

import contextlib
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "SpeakerGroups",
    "SpeakerLayout",
    "speaker_layout",
    "group_by_speaker",
    "flatten_inputs",
    "no_autocast",
]


class SpeakerGroups(NamedTuple):
    """The batch grouped by speaker (``B`` speakers, order of first appearance)."""

    queries: torch.Tensor  # [B, D] first utterance of each speaker, L2-normalised
    anchors: torch.Tensor  # [B, D] mean of the speaker's other (normalised) utterances
    labels: torch.Tensor  # [B] class id of each speaker


class SpeakerLayout(NamedTuple):
    """Where each of the ``B`` speakers of a batch of ``N`` utterances is (order of first
    appearance); built on the host by :func:`speaker_layout`, moved with the batch."""

    first: torch.Tensor  # [B] long: index of each speaker's first utterance (its query)
    slot: torch.Tensor  # [N] long: the speaker (0 .. B-1) of every utterance
    labels: torch.Tensor  # [B] long: class id of each speaker
    rest: torch.Tensor  # [B] float32: utterances of the speaker minus one (>= 1)
    max_label: int  # the largest class id (checked against n_classes on the host)

    def to(self, *args, **kwargs):
        """The layout with its tensors moved like ``Tensor.to`` (``non_blocking`` too)."""
        return self._replace(**{k: getattr(self, k).to(*args, **kwargs) for k in _TENSORS})

    def pin_memory(self):
        """The layout with its tensors in pinned memory (DataLoader ``pin_memory``)."""
        return self._replace(**{k: getattr(self, k).pin_memory() for k in _TENSORS})


_TENSORS = ("first", "slot", "labels", "rest")


def speaker_layout(labels):
    """The :class:`SpeakerLayout` of integer speaker ``labels`` (any sequence, or a CPU
    tensor), computed on the host; ``ValueError`` for a negative label or a speaker with
    fewer than two utterances (a query needs an anchor).

    >>> speaker_layout([4, 4, 9, 9, 9]).rest.tolist()
    [1.0, 2.0]
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("empty batch")
    if labels.min() < 0:
        raise ValueError(f"label {labels.min()} is out of range [0, n_classes)")
    classes, first, slot, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    order = np.argsort(first, kind="stable")  # speakers in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    if counts.min() < 2:
        lone = classes[counts == 1][:5].tolist()
        raise ValueError(
            f"every speaker needs at least 2 utterances in a batch (a query and an "
            f"anchor); speaker label(s) {lone} appear only once. Use "
            f"maskproxy_losses.SpeakerBatchSampler to build the batches."
        )
    return SpeakerLayout(
        first=torch.from_numpy(first[order]),
        slot=torch.from_numpy(rank[slot.reshape(-1)]),
        labels=torch.from_numpy(classes[order]),
        rest=torch.from_numpy((counts[order] - 1).astype(np.float32)),
        max_label=int(labels.max()),
    )


def flatten_inputs(embeddings, labels):
    """Accept ``[N, D]`` or ``[N, 1, D]`` embeddings and ``[N]`` or ``[N, 1]`` labels."""
    if embeddings.dim() == 3 and embeddings.shape[1] == 1:
        embeddings = embeddings.squeeze(1)
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels.squeeze(1)
    if embeddings.dim() != 2:
        raise ValueError(
            f"embeddings must be [N, D] or [N, 1, D], got shape {tuple(embeddings.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be [N] or [N, 1] with N = {embeddings.shape[0]} "
            f"(the number of embeddings), got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer speaker ids, got dtype {labels.dtype}")
    return embeddings, labels


def group_by_speaker(embeddings, labels, n_classes, eps=1e-8, layout=None):
    """Split a batch into per-speaker queries and anchors.

    Arguments
    ---------
    embeddings : torch.Tensor
        Raw encoder outputs ``[N, D]`` (or ``[N, 1, D]``); normalised here.
    labels : torch.Tensor
        Integer speaker ids in ``[0, n_classes)``, ``[N]`` (or ``[N, 1]``).
    n_classes : int
        Number of training speakers ``C``.
    layout : SpeakerLayout, optional
        The grouping of ``labels`` worked out on the host (:func:`speaker_layout`), on the
        embeddings' device: no host round trip, and the embeddings are not checked for
        NaN / Inf here (the training loop's guard does that). None: worked out here.

    Returns
    -------
    SpeakerGroups
        Every speaker must have at least two utterances in the batch.
    """
    embeddings, labels = flatten_inputs(embeddings, labels)
    n = labels.shape[0]
    if n == 0:
        raise ValueError("empty batch")
    if layout is None:
        layout = _device_layout(embeddings, labels, n_classes)
    elif layout.slot.shape[0] != n or (  # compiled: no guard on a per-batch int
        not torch.compiler.is_compiling() and layout.max_label >= n_classes
    ):
        raise ValueError(
            f"the layout does not fit the batch: label {layout.max_label} for "
            f"{n_classes} classes, {layout.slot.shape[0]} slots for {n} utterances"
        )
    x = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(eps)
    queries = x[layout.first]
    sums = torch.zeros(layout.first.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    sums = sums.index_add(0, layout.slot, x)
    anchors = (sums - queries) / layout.rest.to(x.dtype).unsqueeze(1)
    return SpeakerGroups(queries, anchors, layout.labels)


def _device_layout(embeddings, labels, n_classes):
    """The :class:`SpeakerLayout` of ``labels`` worked out on their device, with one host
    round trip that also validates the labels and the embeddings."""
    n, device = labels.shape[0], labels.device
    labels = labels.long()
    safe = labels.clamp(0, n_classes - 1)

    counts = torch.zeros(n_classes, dtype=torch.long, device=device)
    counts.index_add_(0, safe, torch.ones_like(safe))
    first = torch.full((n_classes,), n, dtype=torch.long, device=device)
    first.scatter_reduce_(0, safe, torch.arange(n, device=device), reduce="amin")

    # The one synchronisation: batch size in speakers plus every validity check.
    stats = torch.stack(
        [
            (counts > 0).sum(),
            torch.where(counts > 0, counts, n + 1).min(),
            labels.min(),
            labels.max(),
            torch.isfinite(embeddings).all().long(),
        ]
    ).tolist()
    n_spk, min_count, lab_min, lab_max, finite = stats
    if lab_min < 0 or lab_max >= n_classes:
        bad = lab_min if lab_min < 0 else lab_max
        raise ValueError(f"label {bad} is out of range [0, {n_classes})")
    if not finite:
        raise ValueError("embeddings contain NaN or Inf")
    if min_count < 2:
        lone = torch.nonzero(counts == 1).flatten()[:5].tolist()
        raise ValueError(
            f"every speaker needs at least 2 utterances in a batch (a query and an "
            f"anchor); speaker label(s) {lone} appear only once. Use "
            f"maskproxy_losses.SpeakerBatchSampler to build the batches."
        )

    spk_labels = torch.argsort(first)[:n_spk]  # classes in order of first appearance
    slot = torch.empty(n_classes, dtype=torch.long, device=device)
    slot[spk_labels] = torch.arange(n_spk, device=device)
    rest = (counts[spk_labels] - 1).to(torch.float32)
    return SpeakerLayout(first[spk_labels], slot[labels], spk_labels, rest, lab_max)


def no_autocast(device):
    """Context that disables autocast on ``device`` (a no-op where autocast is unknown):
    the losses compute in float32 inside a bf16 / fp16 training step."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()

"""Group a mini-batch by speaker: one query and one anchor per speaker.

All the losses of this package share this step. It runs on the inputs' device
without host round trips except one: a single ``.tolist()`` that learns the number
of speakers in the batch and validates the input at the same time.

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
"""

import contextlib
from typing import NamedTuple

import torch

__all__ = ["SpeakerGroups", "group_by_speaker", "flatten_inputs", "no_autocast"]


class SpeakerGroups(NamedTuple):
    """The batch grouped by speaker (``B`` speakers, order of first appearance)."""

    queries: torch.Tensor  # [B, D] first utterance of each speaker, L2-normalised
    anchors: torch.Tensor  # [B, D] mean of the speaker's other (normalised) utterances
    labels: torch.Tensor  # [B] class id of each speaker


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


def group_by_speaker(embeddings, labels, n_classes, eps=1e-8):
    """Split a batch into per-speaker queries and anchors.

    Arguments
    ---------
    embeddings : torch.Tensor
        Raw encoder outputs ``[N, D]`` (or ``[N, 1, D]``); normalised here.
    labels : torch.Tensor
        Integer speaker ids in ``[0, n_classes)``, ``[N]`` (or ``[N, 1]``).
    n_classes : int
        Number of training speakers ``C``.

    Returns
    -------
    SpeakerGroups
        Every speaker must have at least two utterances in the batch.
    """
    embeddings, labels = flatten_inputs(embeddings, labels)
    n, device = labels.shape[0], labels.device
    if n == 0:
        raise ValueError("empty batch")
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
    utt_slot = slot[labels]

    x = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(eps)
    queries = x[first[spk_labels]]
    sums = torch.zeros(n_spk, x.shape[1], dtype=x.dtype, device=device)
    sums = sums.index_add(0, utt_slot, x)
    rest = (counts[spk_labels] - 1).to(x.dtype).unsqueeze(1)
    anchors = (sums - queries) / rest
    return SpeakerGroups(queries, anchors, spk_labels)


def no_autocast(device):
    """Context that disables autocast on ``device`` (a no-op where autocast is unknown):
    the losses compute in float32 inside a bf16 / fp16 training step."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()

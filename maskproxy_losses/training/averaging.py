"""Checkpoint averaging: the parameters of several checkpoints, averaged element-wise.

:func:`average_checkpoints` reads saved state dicts (SpeechBrain's ``*.ckpt`` files of a
module, or exported ``embedding_model.ckpt``) and returns their mean. Every floating
point entry is averaged, BatchNorm's ``running_mean`` / ``running_var`` included (in
float64, then cast back to the entry's dtype). Integer entries (BatchNorm's
``num_batches_tracked``) are averaged with floor division, ``sum // N``: they only count
updates and do not enter the forward pass of a model in eval mode.

:func:`select_checkpoints` picks the checkpoints of a recipe run to average: the ``n``
best by dev EER (``mode="best"``) or the ``n`` most recent end-of-epoch ones
(``mode="last"``). The recipe keeps at least ``n`` of each
(:func:`keep_kwargs`), and :func:`load_average` puts the average into the embedding model
after the best checkpoint is loaded for the final evaluation and export.

Example
-------
>>> import os, tempfile, torch
>>> d = tempfile.mkdtemp()
>>> for i in (1, 3):
...     torch.save({"w": torch.tensor([float(i)]), "n": torch.tensor(i)}, f"{d}/{i}.ckpt")
>>> avg = average_checkpoints([f"{d}/1.ckpt", f"{d}/3.ckpt"])
>>> avg["w"].tolist(), avg["n"].item()
([2.0], 2)
"""

import logging

import torch
from speechbrain.utils.checkpoints import ckpt_recency

__all__ = [
    "AVERAGE_MODES",
    "average_checkpoints",
    "select_checkpoints",
    "keep_kwargs",
    "load_average",
]

logger = logging.getLogger(__name__)

AVERAGE_MODES = ("best", "last")


def average_checkpoints(paths):
    """The element-wise mean of the state dicts saved at ``paths`` (see the module)."""
    paths = list(paths)
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    from maskproxy_losses.training.checkpointing import load_weights

    states = [load_weights(p) for p in paths]
    keys = list(states[0])
    for path, state in zip(paths[1:], states[1:]):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"{path}: its entries differ from those of {paths[0]}")
    averaged = {}
    for key in keys:
        first = states[0][key]
        if first.is_floating_point() or first.is_complex():
            total = sum(s[key].to(torch.float64) for s in states)
            averaged[key] = (total / len(states)).to(first.dtype)
        else:
            averaged[key] = sum(s[key] for s in states) // len(states)
    return averaged


def _end_of_epoch(ckpt):
    return "EER" in ckpt.meta


def select_checkpoints(checkpointer, n, mode="best"):
    """Up to ``n`` end-of-epoch checkpoints (those with a dev ``EER``) of ``checkpointer``:
    the lowest EERs first (``best``) or the newest first (``last``)."""
    if mode not in AVERAGE_MODES:
        raise ValueError(f"average_mode must be one of {AVERAGE_MODES}, got {mode!r}")
    if mode == "best":
        return checkpointer.find_checkpoints(min_key="EER", max_num_checkpoints=n)
    return checkpointer.find_checkpoints(
        importance_key=ckpt_recency, max_num_checkpoints=n, ckpt_predicate=_end_of_epoch
    )


def keep_kwargs(hparams):
    """``save_and_keep_only`` options: the best dev EER and the newest checkpoint, or with
    ``average_checkpoints: N`` > 1 the N best and the N newest."""
    n = int(getattr(hparams, "average_checkpoints", 0) or 0)
    return {"min_keys": ["EER"], "num_to_keep": max(n, 1), "importance_keys": []}


def load_average(checkpointer, hparams, key="embedding_model"):
    """With ``average_checkpoints: N`` > 1, load the mean of the selected checkpoints'
    ``key`` module into ``hparams.<key>`` and return the checkpoints used (else None)."""
    n = int(getattr(hparams, "average_checkpoints", 0) or 0)
    if n <= 1 or checkpointer is None:
        return None
    chosen = select_checkpoints(checkpointer, n, getattr(hparams, "average_mode", "best"))
    if not chosen:
        return None
    module = getattr(hparams, key)
    module.load_state_dict(average_checkpoints([c.paramfiles[key] for c in chosen]))
    logger.info(
        "%s: the average of %d checkpoint(s): %s",
        key,
        len(chosen),
        ", ".join(c.path.name for c in chosen),
    )
    return chosen

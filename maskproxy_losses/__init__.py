"""Masked Proxy (MP / MMP) speaker-verification losses, sampler, encoder and tools.

The names below are imported on first use, so that the light modules (``errors``,
``files``, ``audio``, ``trials``) and the command lines built on them start without
loading torch.

Example
-------
>>> import torch
>>> from maskproxy_losses import build_loss
>>> loss_fn = build_loss("mmp_balance", n_classes=100, emb_dim=16)
>>> emb = torch.randn(8, 1, 16)                       # SpeechBrain-style [N, 1, D]
>>> loss = loss_fn(emb, torch.tensor([3, 3, 9, 9, 1, 1, 42, 42]))
>>> sorted(name for name, _ in loss_fn.named_parameters())
['b', 'proxies', 'w']
"""

import importlib

# public name -> the module that defines it
_HOMES = {
    "LOSSES": "losses",
    "build_loss": "losses",
    "MaskedProxyLoss": "losses",
    "MultinomialMaskedProxyLoss": "losses",
    "AngularPrototypicalLoss": "losses",
    "AAMSoftmaxLoss": "losses",
    "SpeakerGroups": "losses",
    "group_by_speaker": "losses",
    "SpeakerBatchSampler": "sampler",
    "ResNetSE34L": "encoder",
    "build_frontend": "frontend",
    "export_model": "export",
}

__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))

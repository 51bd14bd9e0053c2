"""Masked Proxy (MP / MMP) speaker verification: losses, models, data, training, scoring,
inference.

The package is organised by role (see the README's "Layout"): ``losses/``, ``models/``,
``data/``, ``training/``, ``scoring/``, ``inference/``, ``utils/`` and ``cli/``. The names
below are imported on first use, so that the light modules (``utils.errors``,
``utils.files``, ``data.audio``, ``data.trials``) and the command lines built on them
start without loading torch.

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

__version__ = "0.2.0"

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
    "SpeakerBatchSampler": "data.sampler",
    "ResNetSE34L": "models.resnetse34l",
    "ResNet34": "models.resnet34",
    "ECAPA_TDNN": "models.ecapa_tdnn",
    "build_frontend": "models.frontend",
    "export_model": "inference.export",
    "SpeakerEmbedder": "inference.api",
    "Verifier": "inference.api",
}

__all__ = ["__version__", *_HOMES]


def __getattr__(name):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))

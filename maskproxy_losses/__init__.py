"""Masked Proxy (MP / MMP) speaker-verification losses, sampler, encoder and tools.

Example
-------
>>> import torch
>>> loss_fn = build_loss("mmp_balance", n_classes=100, emb_dim=16)
>>> emb = torch.randn(8, 1, 16)                       # SpeechBrain-style [N, 1, D]
>>> loss = loss_fn(emb, torch.tensor([3, 3, 9, 9, 1, 1, 42, 42]))
>>> sorted(name for name, _ in loss_fn.named_parameters())
['b', 'proxies', 'w']
"""

from .aam import AAMSoftmaxLoss
from .angular_proto import AngularPrototypicalLoss
from .encoder import ResNetSE34L
from .export import export_model
from .frontend import build_frontend
from .grouping import SpeakerGroups, group_by_speaker
from .mmp import MultinomialMaskedProxyLoss
from .mp import MaskedProxyLoss
from .sampler import SpeakerBatchSampler

__all__ = [
    "LOSSES",
    "build_loss",
    "MaskedProxyLoss",
    "MultinomialMaskedProxyLoss",
    "AngularPrototypicalLoss",
    "AAMSoftmaxLoss",
    "SpeakerBatchSampler",
    "ResNetSE34L",
    "build_frontend",
    "export_model",
    "SpeakerGroups",
    "group_by_speaker",
]

# trainfunc name -> loss class. The ``_balance`` variants share the math; they differ
# only in the batches the sampler builds (2 utterances per speaker instead of 2-3).
LOSSES = {
    "mp": MaskedProxyLoss,
    "mp_balance": MaskedProxyLoss,
    "mmp": MultinomialMaskedProxyLoss,
    "mmp_balance": MultinomialMaskedProxyLoss,
    "ap": AngularPrototypicalLoss,
    "aam": AAMSoftmaxLoss,
}



def build_loss(name, n_classes=None, emb_dim=None, **overrides):
    """Build a loss by name: ``mp``, ``mmp``, ``mp_balance``, ``mmp_balance``, ``ap``, ``aam``.

    ``n_classes`` and ``emb_dim`` size the proxies or the classifier (unused by
    ``ap``); ``overrides`` go to the constructor (``init_w``, ``init_b``,
    ``reg_weight``; ``margin``, ``scale`` for ``aam``).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    if cls is AngularPrototypicalLoss:
        return cls(**overrides)
    if n_classes is None or emb_dim is None:
        raise ValueError(f"loss {name!r} needs n_classes and emb_dim")
    return cls(n_classes, emb_dim, **overrides)

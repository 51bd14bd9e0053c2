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

from .encoder import ResNetSE34L
from .export import export_model
from .frontend import build_frontend
from .losses import (
    LOSSES,
    AAMSoftmaxLoss,
    AngularPrototypicalLoss,
    MaskedProxyLoss,
    MultinomialMaskedProxyLoss,
    SpeakerGroups,
    build_loss,
    group_by_speaker,
)
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

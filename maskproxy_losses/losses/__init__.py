"""The losses: Masked Proxy (MP), Multinomial Masked Proxy (MMP), and the
angular-prototypical (AP) and AAM-softmax baselines, built by name.

The math, in our own words, and the choices made where the authors' released code
was broken: ``docs/losses.md``.

Example
-------
>>> loss_fn = build_loss("mp_balance", n_classes=10, emb_dim=4)
>>> type(loss_fn).__name__
'MaskedProxyLoss'
"""

from .aam import AAMSoftmaxLoss
from .angular_proto import AngularPrototypicalLoss
from .grouping import SpeakerGroups, SpeakerLayout, group_by_speaker, speaker_layout
from .mmp import MultinomialMaskedProxyLoss
from .mp import MaskedProxyLoss

__all__ = [
    "LOSSES",
    "build_loss",
    "MaskedProxyLoss",
    "MultinomialMaskedProxyLoss",
    "AngularPrototypicalLoss",
    "AAMSoftmaxLoss",
    "SpeakerGroups",
    "SpeakerLayout",
    "group_by_speaker",
    "speaker_layout",
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

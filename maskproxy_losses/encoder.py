"""Old home of :class:`~maskproxy_losses.models.resnetse34l.ResNetSE34L`, kept because model
directories exported before 0.2 name ``maskproxy_losses.encoder.ResNetSE34L`` in their
``hyperparams.yaml``. New code imports from :mod:`maskproxy_losses.models.resnetse34l`.

>>> from maskproxy_losses.encoder import ResNetSE34L
>>> ResNetSE34L.__module__
'maskproxy_losses.models.resnetse34l'
"""

from maskproxy_losses.models.resnetse34l import ResNetSE34L  # noqa: F401

__all__ = ["ResNetSE34L"]

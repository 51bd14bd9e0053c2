"""Old home of the front ends in :mod:`maskproxy_losses.models.frontend`, kept because model
directories exported before 0.2 name ``maskproxy_losses.frontend.AuthorsFbank`` /
``InstanceNorm`` in their ``hyperparams.yaml``. New code imports from the new module.

>>> from maskproxy_losses.frontend import AuthorsFbank
>>> AuthorsFbank.__module__
'maskproxy_losses.models.frontend'
"""

from maskproxy_losses.models.frontend import AuthorsFbank, InstanceNorm  # noqa: F401

__all__ = ["AuthorsFbank", "InstanceNorm"]

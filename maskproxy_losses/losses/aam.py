"""SpeechBrain's AAM-softmax as a loss with the same interface as the MP losses.

A thin adapter (``loss_fn(embeddings, labels)`` and ``last_accuracy``) around
SpeechBrain's own pieces: the ECAPA cosine ``Classifier`` and
``LogSoftmaxWrapper(AdditiveAngularMargin(margin, scale))``, so the recipe trains
the ``aam`` baseline exactly like the other losses.

Example
-------
>>> import torch
>>> loss_fn = AAMSoftmaxLoss(n_classes=5, emb_dim=8)
>>> loss = loss_fn(torch.randn(4, 1, 8), torch.tensor([0, 1, 2, 3]))
>>> loss.dim(), loss_fn.classifier.weight.shape
(0, torch.Size([5, 8]))
"""

import torch
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

from .grouping import flatten_inputs

__all__ = ["AAMSoftmaxLoss"]


class AAMSoftmaxLoss(torch.nn.Module):
    """Additive angular margin softmax over ``n_classes`` speakers.

    Arguments
    ---------
    n_classes, emb_dim : int
        Number of training speakers and embedding dimension.
    margin, scale : float
        AAM margin and scale (SpeechBrain VoxCeleb recipe: 0.2 and 30).
    margin_schedule : object, optional
        Anything with a ``margin()`` method (e.g.
        :class:`~maskproxy_losses.training.schedules.WarmupExponentialLR`); in training mode each
        forward first sets the margin it returns (None: keep the current one).
    """

    def __init__(self, n_classes, emb_dim, margin=0.2, scale=30.0, margin_schedule=None):
        super().__init__()
        self.classifier = Classifier(input_size=emb_dim, out_neurons=n_classes)
        self.aam = LogSoftmaxWrapper(AdditiveAngularMargin(margin=margin, scale=scale))
        self.margin_schedule = margin_schedule
        self.last_accuracy = None

    @property
    def margin(self):
        """The current additive angular margin."""
        return self.aam.loss_fn.margin

    def set_margin(self, margin):
        """Change the margin (SpeechBrain's ``AdditiveAngularMargin`` precomputes its
        trigonometric constants, so they are rebuilt here)."""
        aam = self.aam.loss_fn
        if margin == aam.margin:
            return
        new = AdditiveAngularMargin(margin=margin, scale=aam.scale, easy_margin=aam.easy_margin)
        self.aam.loss_fn = new

    def forward(self, embeddings, labels, layout=None):
        """Return the scalar loss for embeddings ``[N, (1,) D]`` and labels ``[N, (1)]``
        (``layout`` is accepted for the recipe's sake and not needed: no grouping here)."""
        embeddings, labels = flatten_inputs(embeddings, labels)
        if self.training and self.margin_schedule is not None:
            margin = self.margin_schedule.margin()
            if margin is not None:
                self.set_margin(margin)
        cosine = self.classifier(embeddings.float().unsqueeze(1))  # [N, 1, C]
        loss = self.aam(cosine, labels.unsqueeze(1))
        self.last_accuracy = (cosine.detach().squeeze(1).argmax(1) == labels).float().mean()
        return loss

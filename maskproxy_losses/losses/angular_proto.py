"""Angular prototypical (AP) loss, the baseline MP extends (Chung et al., 2020).

Each speaker's query is scored against every anchor of the batch, ``w * cos + b``,
with cross-entropy towards its own anchor. No proxies, no regulariser.

Example
-------
>>> import torch
>>> loss_fn = AngularPrototypicalLoss()
>>> emb = torch.tensor([[1., 0.], [1., 0.1], [0., 1.], [0.1, 1.]])
>>> loss = loss_fn(emb, torch.tensor([0, 0, 1, 1]))
>>> float(loss_fn.last_accuracy)
1.0
"""

import torch
import torch.nn.functional as F

from .grouping import flatten_inputs, group_by_speaker, no_autocast

__all__ = ["AngularPrototypicalLoss"]


class AngularPrototypicalLoss(torch.nn.Module):
    """AP loss (trainfunc ``ap``): ``mean_s CE(w cos(q_s, a_t) + b, target s)``.

    Arguments
    ---------
    init_w, init_b : float
        Initial scale and bias, both learnable (defaults 10 and -5).
    """

    def __init__(self, init_w=10.0, init_b=-5.0, eps=1e-8):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(init_w)))
        self.b = torch.nn.Parameter(torch.tensor(float(init_b)))
        self.eps = eps
        self.last_accuracy = None

    def forward(self, embeddings, labels, layout=None):
        """Return the scalar loss for raw embeddings ``[N, (1,) D]`` and labels ``[N, (1)]``;
        ``layout``: their :class:`~maskproxy_losses.losses.grouping.SpeakerLayout` from the
        host (no host round trip), or None."""
        embeddings, labels = flatten_inputs(embeddings, labels)
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with no_autocast(embeddings.device):
            # Labels only group the batch here: any integer ids are fine.
            if layout is None:
                speakers, ids = torch.unique(labels, return_inverse=True)
                n_spk = len(speakers)
            else:  # speaker slots 0 .. B-1 as the ids
                n_spk = layout.first.shape[0]
                ids, layout = layout.slot, layout._replace(max_label=n_spk - 1)
            g = group_by_speaker(embeddings.to(dtype), ids, n_spk, self.eps, layout)
            anchors = g.anchors / g.anchors.norm(dim=1, keepdim=True).clamp_min(self.eps)
            w, b = self.w.to(dtype), self.b.to(dtype)
            logits = w * (g.queries @ anchors.t()) + b
            target = torch.arange(logits.shape[0], device=logits.device)
            loss = F.cross_entropy(logits, target)
            self.last_accuracy = (logits.detach().argmax(1) == target).to(dtype).mean()
        return loss

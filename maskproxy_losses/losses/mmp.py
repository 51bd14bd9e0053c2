"""Multinomial Masked Proxy (MMP) loss (trainfuncs ``mmp`` and ``mmp_balance``).

Every ``log(1 + sum exp(u))`` is computed as ``softplus(logsumexp(u))``, so nothing
overflows however large ``w`` grows (the released code used raw ``exp``).

Example
-------
>>> import torch
>>> loss_fn = MultinomialMaskedProxyLoss(n_classes=10, emb_dim=8)
>>> emb = torch.randn(7, 8, requires_grad=True)
>>> loss = loss_fn(emb, torch.tensor([2, 2, 2, 5, 5, 9, 9]))   # 3 + 2 + 2 utterances
>>> loss.backward()
>>> bool(torch.isfinite(loss))
True
"""

import torch

from .mp import MASKED, ProxyLossBase

__all__ = ["MultinomialMaskedProxyLoss"]


def log1p_exp(x):
    """``log(1 + exp(x))`` without overflow (softplus with no threshold)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def log1p_sum_exp(u, dim=None):
    """``log(1 + sum exp(u))`` over ``dim`` (all elements when None), stably."""
    return log1p_exp(torch.logsumexp(u.reshape(-1), 0) if dim is None else torch.logsumexp(u, dim))


class MultinomialMaskedProxyLoss(ProxyLossBase):
    """MMP loss: ``l_pos + l_proxy + l_pair + lambda * L_reg`` (``docs/losses.md``).

    Arguments
    ---------
    n_classes, emb_dim : int
        Number of training speakers and embedding dimension.
    init_w, init_b : float
        Initial scale and bias (defaults 10 and +5).
    reg_weight : float
        ``lambda`` (default 0.5).
    pos_reduction : str
        How the positive pairs enter ``l_pos``. ``"batch_log"`` (default, the released
        code): one log over the batch, ``log(1 + sum_s exp(b - w<q_s, a_s>))``, whose
        gradient goes mostly to the hardest positives. ``"per_speaker"``: one log per
        speaker, averaged, ``mean_s log(1 + exp(b - w<q_s, a_s>))``, as proxy-anchor-style
        losses do (every positive pair gets its own sigmoid-weighted gradient).
    learn_scale, learn_bias : bool
        True (default, the released code): ``w`` / ``b`` are learned with everything
        else. False: they stay at ``init_w`` / ``init_b`` (no update, no weight decay).
        Both False fix the cosine threshold ``b / w`` that separates the positive from
        the negative terms, as proxy-anchor-style losses fix their margin; learned, the
        threshold drifts towards 1 (``docs/losses.md``).
    """

    POS_REDUCTIONS = ("batch_log", "per_speaker")

    def __init__(
        self,
        n_classes,
        emb_dim,
        init_w=10.0,
        init_b=5.0,
        reg_weight=0.5,
        pos_reduction="batch_log",
        learn_scale=True,
        learn_bias=True,
    ):
        super().__init__(n_classes, emb_dim, init_w, init_b, reg_weight)
        self.w.requires_grad_(bool(learn_scale))  # no grad: no update, no weight decay
        self.b.requires_grad_(bool(learn_bias))
        if pos_reduction not in self.POS_REDUCTIONS:
            raise ValueError(
                f"pos_reduction must be one of {self.POS_REDUCTIONS}, got {pos_reduction!r}"
            )
        self.pos_reduction = pos_reduction

    def objective(self, groups, dtype):
        w, b = self.w.to(dtype), self.b.to(dtype)
        wq = w * groups.queries
        lse_proxy, max_proxy, present = self.masked_proxy_lse(wq, groups, dtype)
        anchors_n = groups.anchors / groups.anchors.norm(dim=1, keepdim=True).clamp_min(self.eps)
        z_anchor = wq @ anchors_n.t()  # [B, B]: w <q_s, â_t>
        pos = z_anchor.diagonal()
        n_spk = z_anchor.shape[0]
        eye = torch.eye(n_spk, dtype=torch.bool, device=z_anchor.device)

        if self.pos_reduction == "batch_log":
            loss_pos = log1p_sum_exp(b - pos)
        else:
            loss_pos = log1p_exp(b - pos).mean()
        loss_pair = log1p_sum_exp((z_anchor - b).masked_fill(eye, MASKED), 1).mean()
        loss = loss_pos + loss_pair
        if n_spk < self.n_classes:  # absent classes exist
            # lse_proxy is logsumexp over the absent classes: log(1 + sum exp(z - b))
            loss = loss + log1p_exp(lse_proxy - b).mean()
        loss = loss + self.reg_weight * self.regulariser(groups, present, w, -b)
        with torch.no_grad():  # w > 0, so the argmax of the logits is that of <q, m>
            correct = (pos >= z_anchor.amax(1)) & (pos > max_proxy)
        return loss, correct

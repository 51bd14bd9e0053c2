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
    """

    def __init__(self, n_classes, emb_dim, init_w=10.0, init_b=5.0, reg_weight=0.5):
        super().__init__(n_classes, emb_dim, init_w, init_b, reg_weight)

    def objective(self, groups, dtype):
        w, b = self.w.to(dtype), self.b.to(dtype)
        wq = w * groups.queries
        lse_proxy, max_proxy, present = self.masked_proxy_lse(wq, groups, dtype)
        anchors_n = groups.anchors / groups.anchors.norm(dim=1, keepdim=True).clamp_min(self.eps)
        z_anchor = wq @ anchors_n.t()  # [B, B]: w <q_s, â_t>
        pos = z_anchor.diagonal()
        n_spk = z_anchor.shape[0]
        eye = torch.eye(n_spk, dtype=torch.bool, device=z_anchor.device)

        loss_pos = log1p_sum_exp(b - pos)
        loss_pair = log1p_sum_exp((z_anchor - b).masked_fill(eye, MASKED), 1).mean()
        loss = loss_pos + loss_pair
        if n_spk < self.n_classes:  # absent classes exist
            # lse_proxy is logsumexp over the absent classes: log(1 + sum exp(z - b))
            loss = loss + log1p_exp(lse_proxy - b).mean()
        loss = loss + self.reg_weight * self.regulariser(groups, present, w, -b)
        with torch.no_grad():  # w > 0, so the argmax of the logits is that of <q, m>
            correct = (pos >= z_anchor.amax(1)) & (pos > max_proxy)
        return loss, correct

"""Masked Proxy (MP) loss, and the proxy machinery MMP shares with it.

Math: ``docs/losses.md`` (Lian et al., Interspeech 2021). The proxies of
the speakers present in the batch are masked: their columns of the query-proxy
logits are replaced by the batch's own anchors. The masking is done by filling
``B`` columns of the ``[B, C]`` product in place and scoring the anchors through a
separate ``[B, B]`` product, so no ``[C, D]`` copy of the proxies and no one-hot
matrix is ever built.

Example
-------
>>> import torch
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> loss_fn = MaskedProxyLoss(n_classes=10, emb_dim=8)
>>> emb = torch.randn(6, 8, requires_grad=True)
>>> loss = loss_fn(emb, torch.tensor([0, 0, 4, 4, 7, 7]))
>>> loss.backward()
>>> loss.dim(), 0.0 <= float(loss_fn.last_accuracy) <= 1.0
(0, True)
"""

import torch
import torch.nn.functional as F

from .grouping import flatten_inputs, group_by_speaker, no_autocast

__all__ = ["ProxyLossBase", "MaskedProxyLoss"]

# Fill value for masked logits: exp() of it underflows to 0 in float32 and float64
# while staying finite, so an all-masked row never produces a NaN gradient.
MASKED = -1e30


class ProxyLossBase(torch.nn.Module):
    """Learnable proxies ``[C, D]`` plus scale ``w`` and bias ``b``.

    Subclasses implement :meth:`objective` on the grouped batch. The top-1 accuracy
    of the last call is kept (detached, on device) in ``last_accuracy``.
    """

    def __init__(self, n_classes, emb_dim, init_w, init_b, reg_weight=0.5, eps=1e-8):
        super().__init__()
        if n_classes < 1 or emb_dim < 1:
            raise ValueError(f"n_classes and emb_dim must be positive, got {n_classes}, {emb_dim}")
        self.n_classes, self.emb_dim = int(n_classes), int(emb_dim)
        self.proxies = torch.nn.Parameter(torch.empty(n_classes, emb_dim))
        torch.nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self.w = torch.nn.Parameter(torch.tensor(float(init_w)))
        self.b = torch.nn.Parameter(torch.tensor(float(init_b)))
        self.reg_weight = float(reg_weight)
        self.eps = eps
        self.last_accuracy = None

    def extra_repr(self):
        return f"n_classes={self.n_classes}, emb_dim={self.emb_dim}, reg_weight={self.reg_weight}"

    def forward(self, embeddings, labels, layout=None):
        """Return the scalar loss for raw embeddings ``[N, (1,) D]`` and labels ``[N, (1)]``;
        ``layout``: their :class:`~maskproxy_losses.losses.grouping.SpeakerLayout` from the
        host (no host round trip), or None."""
        embeddings, labels = flatten_inputs(embeddings, labels)
        if embeddings.shape[1] != self.emb_dim:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]}, the loss was built "
                f"for emb_dim={self.emb_dim}"
            )
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        # The loss always runs in float32 (or float64): autocast is switched off here.
        with no_autocast(embeddings.device):
            groups = group_by_speaker(
                embeddings.to(dtype), labels, self.n_classes, self.eps, layout
            )
            loss, correct = self.objective(groups, dtype)
        self.last_accuracy = correct.to(dtype).mean().detach()
        return loss

    def masked_proxy_lse(self, w_queries, groups, dtype):
        """Row-wise logsumexp of ``w <q_s, p_c>`` over the classes absent from the batch.

        Returns ``(lse [B], row max [B], normalised proxies of the present classes
        [B, D])``; see :class:`MaskedProxyLSE`.
        """
        return MaskedProxyLSE.apply(w_queries, self.proxies.to(dtype), groups.labels, self.eps)

    def regulariser(self, groups, present, w, b):
        """``mean_s CE(w <a_s, p_label(t)> + b, target s)``: pulls present proxies to anchors."""
        r = w * (groups.anchors @ present.t()) + b
        return F.cross_entropy(r, torch.arange(r.shape[0], device=r.device))

    def objective(self, groups, dtype):  # pragma: no cover - abstract
        raise NotImplementedError


class MaskedProxyLoss(ProxyLossBase):
    """MP loss (trainfuncs ``mp`` and ``mp_balance``): ``L_MP + lambda * L_reg``.

    Arguments
    ---------
    n_classes : int
        Number of training speakers (rows of ``proxies``).
    emb_dim : int
        Embedding dimension.
    init_w, init_b : float
        Initial scale and bias (defaults 10 and -5).
    reg_weight : float
        ``lambda``, the weight of the proxy regulariser (default 0.5).
    """

    def __init__(self, n_classes, emb_dim, init_w=10.0, init_b=-5.0, reg_weight=0.5):
        super().__init__(n_classes, emb_dim, init_w, init_b, reg_weight)

    def objective(self, groups, dtype):
        w, b = self.w.to(dtype), self.b.to(dtype)
        wq = w * groups.queries
        lse_proxy, max_proxy, present = self.masked_proxy_lse(wq, groups, dtype)
        z_anchor = wq @ groups.anchors.t()  # [B, B]: w <q_s, a_t>
        target = z_anchor.diagonal()
        lse = torch.logaddexp(lse_proxy, torch.logsumexp(z_anchor, 1))
        # b shifts every logit of a row alike, so it cancels; kept for the exact formula.
        loss_mp = ((lse + b) - (target + b)).mean()
        loss = loss_mp + self.reg_weight * self.regulariser(groups, present, w, b)
        with torch.no_grad():  # w > 0, so the argmax of the logits is that of <q, m>
            correct = (target >= z_anchor.amax(1)) & (target > max_proxy)
        return loss, correct


class MaskedProxyLSE(torch.autograd.Function):
    """Fused ``logsumexp_c(w <q_s, p_c / ||p_c||>)`` over absent classes, with its gradient.

    Inputs: ``w_queries [B, D]`` (already scaled by ``w``), raw ``proxies [C, D]`` and
    the ``B`` distinct class ids present in the batch, whose columns are masked.
    Outputs: ``lse [B]``, the row maxima ``[B]`` (no gradient; for the accuracy) and
    the normalised proxies of the present classes ``[B, D]`` (for the regulariser).

    Autograd through ``normalize`` + ``mm`` + ``index_fill`` + ``logsumexp`` would
    build a normalised ``[C, D]`` copy, a ``[C, D]`` zero gradient for the gather and
    several ``[B, C]`` temporaries; this does one product forward, two backward, and
    folds the normalisation into a column scale and one ``[C, D]`` update.
    """

    @staticmethod
    def forward(ctx, w_queries, proxies, labels, eps):
        inv_norm = proxies.norm(dim=1).clamp_min(eps).reciprocal()
        logits = (w_queries @ proxies.t()).mul_(inv_norm)
        logits.index_fill_(1, labels, MASKED)
        row_max = logits.amax(1, keepdim=True)
        expd = (logits - row_max).exp_()
        total = expd.sum(1, keepdim=True)
        lse = (total.log() + row_max).squeeze(1)
        present = proxies[labels] * inv_norm[labels].unsqueeze(1)
        ctx.save_for_backward(w_queries, proxies, labels, inv_norm, logits, expd, total)
        row_max = row_max.squeeze(1)
        ctx.mark_non_differentiable(row_max)
        return lse, row_max, present

    @staticmethod
    def backward(ctx, grad_lse, _grad_max, grad_present):
        w_queries, proxies, labels, inv_norm, logits, expd, total = ctx.saved_tensors
        # d lse / d logits = softmax; chain through the column scale 1/||p_c||.
        grad = (expd * (grad_lse.unsqueeze(1) / total)).mul_(inv_norm)
        grad.index_fill_(1, labels, 0.0)  # masked columns carry no gradient
        grad_q = grad @ proxies
        # d/dp_c of <x, p_c>/||p_c|| = (x - <x, p_c>/||p_c|| * p_c/||p_c||) / ||p_c||
        col = torch.einsum("bc,bc->c", grad, logits)
        grad_p = grad.t() @ w_queries
        grad_p.addcmul_(proxies, (-col * inv_norm).unsqueeze(1))
        # The gathered, normalised rows for the regulariser.
        p_sel, n_sel = proxies[labels], inv_norm[labels].unsqueeze(1)
        dot = (grad_present * p_sel).sum(1, keepdim=True)
        grad_p.index_add_(0, labels, grad_present * n_sel - dot * n_sel.pow(3) * p_sel)
        return grad_q, grad_p, None, None

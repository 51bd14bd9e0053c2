"""Naive reference implementations of the losses, written straight from the spec.

Deliberately different from the package: Python loops over speakers and classes, the
masked centres ``m_c`` built explicitly, plain ``log(1 + sum(exp))``. Only for tests,
in float64 on tiny inputs.
"""

import math

import torch


def _groups(emb, labels):
    x = emb / emb.norm(dim=1, keepdim=True)
    order = []
    for lab in labels.tolist():
        if lab not in order:
            order.append(lab)
    queries, anchors = [], []
    for lab in order:
        rows = [i for i, y in enumerate(labels.tolist()) if y == lab]
        queries.append(x[rows[0]])
        anchors.append(torch.stack([x[i] for i in rows[1:]]).mean(0))
    return order, torch.stack(queries), torch.stack(anchors)


def _ce(logits, target):
    return -logits[target] + torch.logsumexp(logits, 0)


def mp_loss(emb, labels, proxies, w, b, lam=0.5):
    order, q, a = _groups(emb, labels)
    p = proxies / proxies.norm(dim=1, keepdim=True)
    centres = [a[order.index(c)] if c in order else p[c] for c in range(p.shape[0])]
    m = torch.stack(centres)
    l_mp = sum(_ce(w * (m @ q[s]) + b, order[s]) for s in range(len(order))) / len(order)
    pp = torch.stack([p[c] for c in order])
    l_reg = sum(_ce(w * (pp @ a[s]) + b, s) for s in range(len(order))) / len(order)
    return l_mp + lam * l_reg


def mmp_loss(emb, labels, proxies, w, b, lam=0.5):
    order, q, a = _groups(emb, labels)
    ah = a / a.norm(dim=1, keepdim=True)
    p = proxies / proxies.norm(dim=1, keepdim=True)
    n = len(order)
    l_pos = torch.log(1 + sum(torch.exp(-(w * (q[s] @ ah[s])) + b) for s in range(n)))
    absent = [c for c in range(p.shape[0]) if c not in order]
    l_proxy = 0.0
    l_pair = 0.0
    for s in range(n):
        if absent:
            l_proxy = l_proxy + torch.log(1 + sum(torch.exp(w * (q[s] @ p[c]) - b) for c in absent))
        l_pair = l_pair + torch.log(
            1 + sum(torch.exp(w * (q[s] @ ah[t]) - b) for t in range(n) if t != s)
        )
    pp = torch.stack([p[c] for c in order])
    l_reg = sum(_ce(w * (pp @ a[s]) - b, s) for s in range(n)) / n
    return l_pos + l_proxy / n + l_pair / n + lam * l_reg


def ap_loss(emb, labels, w, b):
    order, q, a = _groups(emb, labels)
    n = len(order)
    total = 0.0
    for s in range(n):
        cos = torch.stack([q[s] @ a[t] / a[t].norm() for t in range(n)])
        total = total + _ce(w * cos + b, s)
    return total / n


def log1p_exp_sum(values):
    """``log(1 + sum(exp(v)))`` in plain Python floats, for the hand-computed tests."""
    return math.log(1 + sum(math.exp(v) for v in values))

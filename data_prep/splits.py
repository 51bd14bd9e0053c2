"""The per-speaker dev split and balanced trial sampling.

Example
-------
>>> dev_count(20, 0.05), dev_count(20, 3), dev_count(3, 0.5)
(2, 3, 1)
"""

import logging
import math

import numpy as np

__all__ = ["dev_count", "split_dev", "make_trials"]

logger = logging.getLogger(__name__)


def dev_count(n, dev_share):
    """Dev utterances for a speaker with ``n``: a share (float) or count (int), raised to 2
    when any; keeping 2 for training wins over that (a speaker with 3 gets 1 dev
    utterance, which makes no target pair)."""
    if isinstance(dev_share, int) and not isinstance(dev_share, bool):
        k = dev_share
    else:
        k = math.ceil(float(dev_share) * n)
    if k > 0:
        k = max(k, 2)
    return max(0, min(k, n - 2))


def split_dev(utts, dev_share, seed):
    """Per speaker, hold out ``dev_count`` random utterances -> ``(train, dev)``.

    ``utts`` need ``spk`` and ``rel`` attributes (``data_prep.lists.Utt``).
    """
    rng = np.random.default_rng(seed)
    by_spk = {}
    for utt in utts:
        by_spk.setdefault(utt.spk, []).append(utt)
    train, dev = [], []
    for spk in sorted(by_spk):
        items = sorted(by_spk[spk], key=lambda u: u.rel)
        if len(items) < 2:
            logger.warning(
                "speaker %s has %d utterance(s); kept for training only", spk, len(items)
            )
        held = set(rng.permutation(len(items))[: dev_count(len(items), dev_share)].tolist())
        for i, utt in enumerate(items):
            (dev if i in held else train).append(utt)
    return train, dev


def make_trials(speakers, sessions, n_trials, rng):
    """Balanced trials over utterances ``0..N-1`` -> ``(labels, idx1, idx2)`` arrays.

    Target pairs from different sessions come first; as many non-target pairs
    (distinct speakers) as target pairs; at most ``n_trials`` in all, shuffled;
    no unordered pair twice.

    >>> rng = np.random.default_rng(0)
    >>> lab, a, b = make_trials(["a", "a", "b", "b"], ["s", "t", "s", "t"], 4, rng)
    >>> sorted(lab.tolist())
    [0, 0, 1, 1]
    """
    spk_codes = np.unique(np.asarray(speakers), return_inverse=True)[1]
    ses_codes = np.unique(np.asarray(sessions), return_inverse=True)[1]
    t1, t2 = _target_pairs(spk_codes, ses_codes, n_trials // 2, rng)
    n1, n2 = _nontarget_pairs(spk_codes, len(t1), rng)
    t1, t2 = t1[: len(n1)], t2[: len(n1)]
    labels = np.r_[np.ones(len(t1), int), np.zeros(len(n1), int)]
    order = rng.permutation(len(labels))
    return labels[order], np.r_[t1, n1][order], np.r_[t2, n2][order]


def _target_pairs(spk, ses, n, rng):
    firsts, seconds = [], []
    order = np.argsort(spk, kind="stable")  # each speaker's utterances, speaker by speaker
    for idx in np.split(order, np.flatnonzero(np.diff(spk[order])) + 1) if len(spk) else []:
        i, j = np.triu_indices(len(idx), 1)
        firsts.append(idx[i])
        seconds.append(idx[j])
    if not firsts:
        return np.zeros(0, int), np.zeros(0, int)
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    priority = rng.random(len(a)) + (ses[a] == ses[b])  # cross-session first
    keep = np.argsort(priority, kind="stable")[:n]
    return a[keep], b[keep]


def _nontarget_pairs(spk, n, rng, rounds=20):
    total = len(spk)
    found = np.zeros(0, np.int64)
    for _ in range(rounds):
        if len(found) >= n or len(np.unique(spk)) < 2:
            break
        a, b = rng.integers(total, size=(2, 4 * n + 16))
        a, b = np.minimum(a, b), np.maximum(a, b)
        keys = (a * total + b)[spk[a] != spk[b]]
        keys = np.concatenate([found, keys])
        _, first = np.unique(keys, return_index=True)
        found = keys[np.sort(first)]
    found = found[:n]
    return found // total, found % total

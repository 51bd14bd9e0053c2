"""Verification metrics: EER and minDCF exactly as the authors computed them, and the checks
of scores and labels that every metric and the calibration share.

Scores are "higher = more likely the same speaker"; labels are 1 (target) or 0
(non-target). The scores themselves come from :mod:`maskproxy_losses.scoring.cosine`.

Example
-------
>>> eer, thr = compute_eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
>>> eer
0.0
>>> dcf, _ = compute_min_dcf([0.9, 0.2, 0.3, 0.1], [1, 1, 0, 0], p_target=0.05)
>>> round(dcf, 4)
0.5
"""

import numpy as np
from sklearn.metrics import roc_curve

__all__ = [
    "compute_eer",
    "compute_min_dcf",
    "check_labels",
    "check_scores",
    "verification_metrics",
    "rounded_metrics",
    "roc",
]


# --------------------------------------------------------------------- metrics
def check_labels(labels, n, what="scores"):
    """``labels`` as int64 0/1 of length ``n`` holding both classes, or a ``ValueError``
    saying what is wrong (``what`` names the values they label)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size != n:
        raise ValueError(f"{what} and labels differ in length: {n} vs {labels.size}")
    if n == 0:
        raise ValueError("no trials to score")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise ValueError(
            f"labels must be 0 or 1; found {labels[bad][0]!r} at index {int(np.argmax(bad))}"
        )
    labels = labels.astype(np.int64)
    if labels.min() == labels.max():
        raise ValueError(
            "labels hold only one class; EER, minDCF and calibration need target (1) and "
            "non-target (0) trials"
        )
    return labels


def check_scores(scores, labels):
    """Finite float64 scores and :func:`check_labels` labels, or a ``ValueError``."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = check_labels(labels, scores.size)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or Inf")
    return scores, labels


def roc(scores, labels, drop_intermediate=True):
    """Return ``(fpr, fnr, thresholds)`` of the ROC over ``scores`` (sklearn's points).

    A trial is accepted when ``score >= threshold``; thresholds run from ``inf``
    (accept none) down to the lowest score (accept all). With ``drop_intermediate``
    (sklearn's default, as in the authors' code) collinear intermediate points are
    dropped; ``False`` keeps one point per distinct score.
    """
    scores, labels = check_scores(scores, labels)
    fpr, tpr, thresholds = roc_curve(
        labels, scores, pos_label=1, drop_intermediate=drop_intermediate
    )
    return fpr, 1.0 - tpr, thresholds


def compute_eer(scores, labels, drop_intermediate=True):
    """Equal error rate as the authors computed it.

    The ROC threshold index minimising ``|fnr - fpr|`` is taken (the first, i.e. the
    highest threshold, on ties) and the EER is ``max(fpr, fnr)`` there. Returns
    ``(eer, threshold)`` with ``eer`` in [0, 1]. The authors' ROC drops collinear
    points, so on small lists the crossing point itself may be missing and the EER
    is that of a neighbouring corner; ``drop_intermediate=False`` searches every
    distinct-score threshold instead.

    >>> s, y = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [0, 1, 0, 1, 1, 0, 0, 0]
    >>> round(compute_eer(s, y)[0], 4), round(compute_eer(s, y, drop_intermediate=False)[0], 4)
    (0.6667, 0.4)
    """
    fpr, fnr, thresholds = roc(scores, labels, drop_intermediate)
    idx = int(np.nanargmin(np.abs(fnr - fpr)))
    return float(max(fpr[idx], fnr[idx])), float(thresholds[idx])


def compute_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised minimum detection cost.

    ``min over thresholds of (c_miss * fnr * p + c_fa * fpr * (1 - p)) /
    min(c_miss * p, c_fa * (1 - p))``. Returns ``(min_dcf, threshold)``; a trial
    is accepted when ``score >= threshold``. (Dropping collinear ROC points cannot
    change the minimum of this linear cost.)
    """
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    fpr, fnr, thresholds = roc(scores, labels)
    dcf = c_miss * fnr * p_target + c_fa * fpr * (1.0 - p_target)
    idx = int(np.argmin(dcf))
    c_def = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return float(dcf[idx] / c_def), float(thresholds[idx])


def verification_metrics(scores, labels, p_targets=(0.01, 0.05)):
    """The metrics both recipes report, with the same keys and units.

    ``EER`` in percent and its threshold, ``minDCF_<p>`` and ``minDCF_<p>_threshold``
    for each ``p_target``, and the trial counts.

    >>> m = verification_metrics([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
    >>> m["EER"], m["minDCF_0.05"], m["n_trials"], m["n_target"]
    (50.0, 0.5, 4, 2)
    """
    eer, threshold = compute_eer(scores, labels)
    out = {"EER": 100.0 * eer, "EER_threshold": threshold}
    for p in p_targets:
        dcf, thr = compute_min_dcf(scores, labels, p_target=p)
        out[f"minDCF_{p:g}"], out[f"minDCF_{p:g}_threshold"] = dcf, thr
    labels = np.asarray(labels)
    out.update(
        n_trials=int(labels.size),
        n_target=int(labels.sum()),
        n_nontarget=int(labels.size - labels.sum()),
    )
    return out


def rounded_metrics(m):
    """The training log's rounded view of :func:`verification_metrics` ``m``.

    >>> rounded_metrics(verification_metrics([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0]))["EER"]
    50.0
    """
    return {
        "EER": round(m["EER"], 3),
        "minDCF_0.01": round(m["minDCF_0.01"], 4),
        "minDCF_0.05": round(m["minDCF_0.05"], 4),
        "threshold": round(m["EER_threshold"], 4),
    }

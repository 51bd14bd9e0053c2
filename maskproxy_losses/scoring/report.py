"""The verification recipe's results: :func:`assess` (the metrics of a scored trial list
with the calibration and QMF that apply) and :func:`verification_summary` (the lines it
prints at the end of a run, from its ``metrics.json`` content).

Example
-------
>>> metrics = {"options": {"score_mode": "cosine", "norm": "none"}, "n_trials": 4,
...     "n_target": 2, "n_nontarget": 2, "EER": 25.0, "EER_threshold": 0.5,
...     "minDCF_0.01": 0.5, "minDCF_0.05": 0.5,
...     "embedding_cache": {"hits": 0, "computed": 4}}
>>> print(verification_summary(metrics, [], "cache/"))
embeddings: 0 from cache, 4 computed (cache/)
trials: 4 (2 target, 2 non-target); score_mode=cosine, norm=none
EER: 25.0000% (threshold 0.500000)
minDCF(p=0.01): 0.5000
minDCF(p=0.05): 0.5000
"""

from maskproxy_losses.scoring.calibration import calibration_metrics, min_cllr
from maskproxy_losses.scoring.metrics import verification_metrics
from maskproxy_losses.scoring.qmf import qmf_metrics
from maskproxy_losses.utils.errors import report

__all__ = ["assess", "verification_summary"]


def assess(scores, labels, quality=None, calibration=None, qmf=None):
    """EER / minDCF of raw ``scores``; Cllr / min-Cllr / actDCF with ``calibration`` (else
    min-Cllr alone); with ``qmf``, :func:`~maskproxy_losses.scoring.qmf.qmf_metrics` of
    its LLRs (``quality``: the trials' ``TrialQuality``) under ``"QMF"``.

    >>> m = assess([0.9, 0.1, 0.6, 0.4], [1, 0, 0, 1])
    >>> m["EER"], round(m["minCllr"], 3)
    (50.0, 0.5)
    """
    metrics = verification_metrics(scores, labels)
    if calibration:
        metrics.update(calibration_metrics(scores, labels, calibration))
    else:
        metrics["minCllr"] = min_cllr(scores, labels)
    if qmf:
        metrics["QMF"] = qmf_metrics(scores, labels, quality, qmf)
    return metrics


def verification_summary(metrics, problems, cache_folder, calibration_file=None, qmf_file=None):
    """The summary lines: skipped entries, cache use, trials, EER / minDCF, and the
    calibrated (``calibration_file``) and QMF (``qmf_file``, ``metrics["QMF"]``) results."""
    o, m = metrics["options"], metrics
    lines = [f"skipped {len(problems)} bad entries:\n{report(problems)}"] if problems else []
    lines += [
        f"embeddings: {m['embedding_cache']['hits']} from cache, "
        f"{m['embedding_cache']['computed']} computed ({cache_folder})",
        f"trials: {m['n_trials']} ({m['n_target']} target, {m['n_nontarget']} non-target); "
        f"score_mode={o['score_mode']}, norm={o['norm']}",
        f"EER: {m['EER']:.4f}% (threshold {m['EER_threshold']:.6f})",
        f"minDCF(p=0.01): {m['minDCF_0.01']:.4f}",
        f"minDCF(p=0.05): {m['minDCF_0.05']:.4f}",
    ]
    if calibration_file:
        lines.append(
            f"Cllr: {m['Cllr']:.4f} (min {m['minCllr']:.4f}), actDCF(p=0.01): "
            f"{m['actDCF_0.01']:.4f}, actDCF(p=0.05): {m['actDCF_0.05']:.4f} "
            f"(calibration: {calibration_file})"
        )
    if qmf_file:
        q = m["QMF"]
        lines.append(
            f"QMF: EER {q['EER']:.4f}%, minDCF(p=0.01) {q['minDCF_0.01']:.4f}, Cllr "
            f"{q['Cllr']:.4f} (min {q['minCllr']:.4f}), actDCF(p=0.01) {q['actDCF_0.01']:.4f} "
            f"(QMF: {qmf_file})"
        )
    return "\n".join(lines)

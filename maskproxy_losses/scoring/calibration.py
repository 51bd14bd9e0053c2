"""Score calibration (raw score -> log-likelihood ratio) and calibration metrics.

A verification score only ranks trials; a *calibrated* score is a log-likelihood ratio
``llr = log p(score | target) / p(score | non-target)`` (natural log), so one fixed rule
turns it into a decision for any operating point: accept when ``llr >= log(c_fa (1 - p)
/ (c_miss p))`` (the Bayes threshold, :func:`bayes_threshold`).

* :func:`fit_calibration` fits the standard linear calibration ``llr = scale * s +
  offset`` by prior-weighted logistic regression on labelled trials (e.g. the dev trials).
* :class:`Calibration` holds it, applies it, decides, and saves / loads it as JSON
  (``calibration.json`` in a model directory, :data:`CALIBRATION_FILE`).
* :func:`cllr`, :func:`min_cllr`, :func:`actual_dcf` and :func:`calibration_metrics`
  measure how good the LLRs are (docs/calibration.md explains how to read them).
* :func:`read_scores` reads a ``scores.txt`` (``label score [enrol test]`` lines).

Command line: ``maskproxy calibrate SCORES.txt --model-dir DIR`` (or ``--output
FILE.json``) fits on a scored trial list and stores the result.

Example
-------
>>> scores = [2.0, 1.5, 0.5, 0.2, -0.3, -1.0, 0.6, 0.1]
>>> labels = [1, 1, 1, 1, 0, 0, 0, 0]
>>> cal = fit_calibration(scores, labels)
>>> round(cal.scale, 3), round(cal.offset, 3)
(1.215, -0.524)
>>> llr = cal(scores)
>>> round(cllr(llr, labels), 4), round(min_cllr(scores, labels), 4)
(0.6663, 0.3444)
>>> # 8 trials support little confidence: the hard-target fit is steeper (and fits
>>> # these 8 trials better; it is less trustworthy on the next ones)
>>> hard = fit_calibration(scores, labels, smooth=False)
>>> round(hard.scale, 3), round(cllr(hard(scores), labels), 4)
(3.151, 0.5666)
>>> cal.decide(cal(1.0), p_target=0.5).item(), cal.decide(cal(0.3), p_target=0.5).item()
(True, False)
>>> round(cllr([0.0, 0.0], [1, 0]), 6)  # an uninformative system costs 1 bit
1.0
"""

import dataclasses
import json
import math
import os
from typing import NamedTuple

import numpy as np

from maskproxy_losses.scoring.metrics import check_labels, check_scores
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text, list_fields, read_format_json

__all__ = [
    "CALIBRATION_FILE",
    "MAX_SCORE",
    "Calibration",
    "ScoreList",
    "bayes_threshold",
    "fit_calibration",
    "logistic_fit",
    "cllr",
    "min_cllr",
    "pav",
    "actual_dcf",
    "calibration_metrics",
    "read_scores",
    "load_model_calibration",
    "calibration_for",
]

CALIBRATION_FILE = "calibration.json"
_FORMAT = "maskproxy-calibration"
_VERSION = 1
_LN2 = math.log(2.0)
MAX_SCORE = 1e100  # no scorer gives more; squares (the fit's variance) stay finite


# ---------------------------------------------------------------- validation
def _llr_labels(llr, labels):
    """Like :func:`~maskproxy_losses.scoring.metrics.check_scores`, but LLRs may be +-inf
    (never NaN)."""
    llr = np.asarray(llr, dtype=np.float64).reshape(-1)
    labels = check_labels(labels, llr.size, what="llr")
    if np.isnan(llr).any():
        raise ValueError("llr contains NaN")
    return llr, labels


def _check_prior(p, name="prior"):
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {p}")
    return p


def bayes_threshold(p_target=0.01, c_miss=1.0, c_fa=1.0):
    """``log(c_fa (1 - p) / (c_miss p))``: accepting when ``llr >=`` this minimises the
    expected cost of a well-calibrated LLR.

    >>> bayes_threshold(0.5), round(bayes_threshold(0.01), 4)
    (0.0, 4.5951)
    """
    p = _check_prior(p_target, "p_target")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    return math.log(c_fa * (1.0 - p)) - math.log(c_miss * p)


# --------------------------------------------------------------- the model
@dataclasses.dataclass
class Calibration:
    """Linear calibration ``llr = scale * score + offset`` (natural-log LLR).

    ``prior`` is the target prior the fit was weighted with (:func:`fit_calibration`),
    ``n_target`` / ``n_nontarget`` the trial counts it saw, ``source`` where the scores
    came from (e.g. a scores.txt path) and ``meta`` any JSON-serialisable details the
    caller wants kept with it (e.g. ``{"score_mode": "cosine", "norm": "none"}``: a
    calibration is valid only for scores computed the same way).
    """

    scale: float
    offset: float
    prior: float = 0.5
    n_target: int = 0
    n_nontarget: int = 0
    source: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def __call__(self, scores):
        """The LLR of each score (a float for a scalar, else a float64 array)."""
        llr = self.scale * np.asarray(scores, dtype=np.float64) + self.offset
        return float(llr) if llr.ndim == 0 else llr

    @staticmethod
    def decide(llr, p_target=0.01, c_miss=1.0, c_fa=1.0):
        """Accept (True) where ``llr >= bayes_threshold(p_target, c_miss, c_fa)``.

        Returns a numpy bool (scalar input) or bool array.
        """
        return np.asarray(llr, dtype=np.float64) >= bayes_threshold(p_target, c_miss, c_fa)

    def to_dict(self):
        return {"format": _FORMAT, "version": _VERSION, **dataclasses.asdict(self)}

    def save(self, path):
        """Write the calibration as JSON to ``path`` (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`; a malformed one raises InputError naming it."""
        data = read_format_json(path, _FORMAT, "a calibration file")
        problems = []
        if data.get("version") != _VERSION:
            problems.append(f"{path}: unsupported version {data.get('version')!r}")
        for key in ("scale", "offset", "prior"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{path}: {key!r} must be a finite number, got {v!r}")
        if not problems and not 0.0 < data["prior"] < 1.0:
            problems.append(f"{path}: 'prior' must be in (0, 1), got {data['prior']!r}")
        for key in ("n_target", "n_nontarget"):
            v = data.get(key, 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                problems.append(f"{path}: {key!r} must be a count >= 0, got {v!r}")
        if not isinstance(data.get("source"), (str, type(None))):
            problems.append(f"{path}: 'source' must be a string or null")
        if not isinstance(data.get("meta", {}), dict):
            problems.append(f"{path}: 'meta' must be an object")
        if problems:
            raise InputError(problems)
        return cls(
            scale=float(data["scale"]),
            offset=float(data["offset"]),
            prior=float(data["prior"]),
            n_target=data.get("n_target", 0),
            n_nontarget=data.get("n_nontarget", 0),
            source=data.get("source"),
            meta=data.get("meta", {}),
        )


def load_model_calibration(model_dir):
    """The :class:`Calibration` stored in ``model_dir/calibration.json``, or ``None``."""
    path = os.path.join(model_dir, CALIBRATION_FILE)
    return Calibration.load(path) if os.path.isfile(path) else None


def calibration_for(model_dir, score_mode, norm, override=None):
    """``(calibration, its file)`` for scores of ``score_mode`` / ``norm``: the file
    ``override`` when given, else the model directory's ``calibration.json`` when the
    scores are made as it was fitted (full-utterance cosine, no normalisation), else
    ``(None, None)``."""
    if override:
        return Calibration.load(override), str(override)
    path = os.path.join(model_dir, CALIBRATION_FILE)
    if (score_mode, norm) != ("cosine", "none") or not os.path.isfile(path):
        return None, None
    return Calibration.load(path), path


# ----------------------------------------------------------------- fitting
def logistic_fit(x, labels, prior=0.5, l2=1e-10, smooth=True, max_iter=100):
    """``(weights, offset)`` of the LLR ``x @ weights + offset`` fitted by prior-weighted
    logistic regression of ``labels`` on the columns of ``x`` ``[N, K]`` (the fit behind
    :func:`fit_calibration` and :func:`~maskproxy_losses.scoring.qmf.fit_qmf`).

    Minimises ``prior / N_tar * sum_tar [t_tar softplus(-e) + (1 - t_tar) softplus(e)]
    + (1 - prior) / N_non * sum_non [(1 - t_non) softplus(e) + t_non softplus(-e)]``
    with ``e = llr + logit(prior)``, plus ``l2 / 2`` times the squared weights of the
    standardised columns. ``smooth``: Platt's targets ``t_tar = (N_tar + 1) / (N_tar + 2)``
    and ``t_non = 1 / (N_non + 2)`` (Platt 1999, the Bayesian estimate of a rate seen 0
    times in N); ``smooth=False``: hard targets 1 and 0. The smoothing moves a fit on
    overlapping classes by O(1 / N); on (nearly) separable trials it bounds the LLRs near
    the log-odds the trial counts can support (about ``ln N``) instead of letting them
    grow without bound: a dev list with no errors cannot show that errors are rarer than
    1 in N. The fit is scikit-learn's ``LogisticRegression`` (Newton-Cholesky) on
    standardised columns, each trial entered once per class with the weight of its target.
    """
    from sklearn.linear_model import LogisticRegression

    if l2 <= 0:
        raise ValueError(f"l2 must be positive, got {l2}")
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    n_tar = int(labels.sum())
    n_non = int(labels.size - n_tar)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (x - mean) / std
    weights = np.where(labels == 1, prior / n_tar, (1.0 - prior) / n_non)
    if smooth:
        target = np.where(labels == 1, (n_tar + 1.0) / (n_tar + 2.0), 1.0 / (n_non + 2.0))
    else:
        target = labels.astype(np.float64)
    keep = np.concatenate([target > 0, target < 1])  # rows of zero weight left out
    z2 = np.concatenate([z, z])[keep]
    y2 = np.concatenate([np.ones(labels.size), np.zeros(labels.size)])[keep]
    w2 = np.concatenate([weights * target, weights * (1.0 - target)])[keep]
    fit = LogisticRegression(C=1.0 / l2, solver="newton-cholesky", tol=1e-14, max_iter=max_iter)
    fit.fit(z2, y2, sample_weight=w2)
    w = fit.coef_[0] / std
    offset = float(fit.intercept_[0] - w @ mean) - (math.log(prior) - math.log1p(-prior))
    return w, offset


def fit_calibration(scores, labels, prior=0.5, l2=1e-10, source=None, max_iter=100, smooth=True):
    """Fit ``llr = scale * score + offset`` by prior-weighted logistic regression.

    Minimises the prior-weighted cross-entropy ``prior / N_tar * sum_tar softplus(-e)
    + (1 - prior) / N_non * sum_non softplus(e)`` with ``e = llr + logit(prior)``, so
    that the fitted ``llr`` is a log-likelihood ratio whatever the class proportions
    of the trials. With ``prior=0.5`` the objective is ``ln 2 / 2 *`` the Cllr-like
    cross-entropy. ``smooth`` (default) replaces the hard targets 1 / 0 by Platt's
    ``(N_tar + 1) / (N_tar + 2)`` / ``1 / (N_non + 2)``: negligible on a dev list whose
    classes overlap, it keeps the LLRs of a (nearly) separable one near what its trial
    counts support instead of very large (:func:`logistic_fit`, which also adds ``l2 / 2 *
    a_z^2`` for the scale ``a_z`` of the standardised scores). Returns a
    :class:`Calibration`.
    """
    scores, labels = check_scores(scores, labels)
    prior = _check_prior(prior)
    w, offset = logistic_fit(scores[:, None], labels, prior, l2, smooth, max_iter)
    return Calibration(
        scale=float(w[0]),
        offset=offset,
        prior=prior,
        n_target=int(labels.sum()),
        n_nontarget=int(labels.size - labels.sum()),
        source=None if source is None else str(source),
    )


# ----------------------------------------------------------------- metrics
def cllr(llr, labels):
    """Log-likelihood-ratio cost in bits (natural-log ``llr``; +-inf allowed).

    ``0.5 * (mean_tar log2(1 + e^-llr) + mean_non log2(1 + e^llr))``: 0 for perfect,
    1 for a system that always says ``llr = 0``; above 1 means worse than that.

    >>> round(cllr([0.0, 0.0, 0.0], [1, 0, 1]), 12)
    1.0
    """
    llr, labels = _llr_labels(llr, labels)
    bits = llr / _LN2  # log2 odds: log2(1 + e^-l) = logaddexp2(0, -l / ln 2), exact at l = 0
    tar = np.logaddexp2(0.0, -bits[labels == 1]).mean()
    non = np.logaddexp2(0.0, bits[labels == 0]).mean()
    return float(0.5 * (tar + non))


def pav(scores, labels):
    """Pool-adjacent-violators: the non-decreasing target fraction fitted to ``labels``
    as a function of ``scores`` (tied scores share one value; scikit-learn's
    ``isotonic_regression`` on the per-score target fractions, weighted by their counts).
    Returned in the input order. Each score gets its own block's value directly: no
    interpolation, which in ``IsotonicRegression.predict`` turns scores one ulp apart
    (a file scored against itself, 1.0 and 1.0000000000000002) into NaN.

    >>> pav([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1]).tolist()
    [0.0, 0.5, 0.5, 1.0]
    >>> pav([1.0, 1.0000000000000002, 0.5], [1, 1, 0]).tolist()
    [1.0, 1.0, 0.0]
    """
    from sklearn.isotonic import isotonic_regression

    scores, labels = check_scores(scores, labels)
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    fractions = np.bincount(inverse, weights=labels, minlength=len(values)) / counts
    fitted = isotonic_regression(fractions, sample_weight=counts.astype(np.float64))
    return fitted[inverse]


def min_cllr(scores, labels):
    """Cllr after the best monotonic calibration of ``scores`` (in bits).

    The PAV fit gives the posterior of each trial at the empirical prior; removing the
    empirical prior log-odds ``log(N_tar / N_non)`` turns it into an LLR. Trials whose
    posterior is 0 or 1 get an infinite LLR of the right sign and cost nothing.

    >>> round(min_cllr([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1]), 12)  # LLRs -inf, 0, 0, +inf
    0.5
    """
    scores, labels = check_scores(scores, labels)
    post = pav(scores, labels)
    n_tar = labels.sum()
    with np.errstate(divide="ignore"):
        llr = np.log(post) - np.log1p(-post) - (math.log(n_tar) - math.log(labels.size - n_tar))
    return cllr(llr, labels)


def actual_dcf(llr, labels, p_target=0.01, c_miss=1.0, c_fa=1.0):
    """Normalised detection cost of deciding at the Bayes threshold.

    Accepts where ``llr >= bayes_threshold(p_target, c_miss, c_fa)`` and returns
    ``(c_miss p P_miss + c_fa (1 - p) P_fa) / min(c_miss p, c_fa (1 - p))`` (the
    normalisation of :func:`maskproxy_losses.scoring.metrics.compute_min_dcf`, which is never
    above this).

    >>> actual_dcf([3.0, -1.0, 0.5, -2.0], [1, 1, 0, 0], p_target=0.5)  # 1 miss, 1 false alarm
    1.0
    """
    llr, labels = _llr_labels(llr, labels)
    accept = Calibration.decide(llr, p_target, c_miss, c_fa)
    p_miss = float(np.mean(~accept[labels == 1]))
    p_fa = float(np.mean(accept[labels == 0]))
    cost = c_miss * p_target * p_miss + c_fa * (1.0 - p_target) * p_fa
    return float(cost / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def calibration_metrics(raw_scores, labels, calibration=None, p_targets=(0.01, 0.05)):
    """Calibration metrics of a scored trial list, as a dict for metrics.json.

    Keys: ``"Cllr"`` (of ``calibration(raw_scores)``, or of the raw scores read as LLRs
    when ``calibration`` is None), ``"minCllr"`` (of the raw scores; no calibration can
    go below it), and ``"actDCF_{p:g}"`` for each ``p`` in ``p_targets`` (``actDCF_0.01``,
    ``actDCF_0.05``: the normalised DCF deciding at the Bayes threshold, to compare with
    ``minDCF_{p:g}``), all with ``c_miss = c_fa = 1``.
    """
    raw, labels = check_scores(raw_scores, labels)
    llr = raw if calibration is None else calibration(raw)
    out = {"Cllr": cllr(llr, labels), "minCllr": min_cllr(raw, labels)}
    for p in p_targets:
        out[f"actDCF_{p:g}"] = actual_dcf(llr, labels, p_target=p)
    return out


# ------------------------------------------------------------- score files
class ScoreList(NamedTuple):
    """A parsed scores file: float64 ``scores``, int64 ``labels``, and ``pairs``
    (``(enrol, test)`` per line, or ``None`` on ``label score`` lines)."""

    scores: np.ndarray
    labels: np.ndarray
    pairs: list


def read_scores(path):
    r"""Read ``label score enrol test`` (or ``label score``) lines; blank lines skipped.

    Every bad line is reported as ``file:line: what`` in one InputError; a list without
    both target and non-target trials is refused too.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> _ = open(path, "w").write("1 0.75 a.wav b.wav\n0 -0.1\n")
    >>> read_scores(path).scores.tolist(), read_scores(path).pairs
    ([0.75, -0.1], [('a.wav', 'b.wav'), None])
    """
    scores, labels, pairs, problems = [], [], [], []
    if not os.path.isfile(path):
        raise InputError(f"{path}: scores file not found")
    for where, fields in list_fields(path, problems):
        if len(fields) not in (2, 4):
            problems.append(
                f"{where}: expected 4 fields 'label score enrol test' "
                f"(or 2: 'label score'), got {len(fields)}"
            )
            continue
        if fields[0] not in ("0", "1"):
            problems.append(f"{where}: label must be 0 or 1, got {fields[0]!r}")
            continue
        try:
            score = float(fields[1])
        except ValueError:
            problems.append(f"{where}: score is not a number: {fields[1]!r}")
            continue
        if not math.isfinite(score):
            problems.append(f"{where}: score must be finite, got {fields[1]!r}")
            continue
        if abs(score) > MAX_SCORE:
            problems.append(
                f"{where}: score {fields[1]} is out of range (|score| above {MAX_SCORE:g}: "
                "its square overflows in the fit)"
            )
            continue
        scores.append(score)
        labels.append(int(fields[0]))
        pairs.append((fields[2], fields[3]) if len(fields) == 4 else None)
    if problems:
        raise InputError(problems)
    if not labels:
        raise InputError(f"{path}: no scored trials")
    if len(set(labels)) < 2:
        raise InputError(
            f"{path}: all {len(labels)} trials have label {labels[0]}; "
            "calibration needs both target (1) and non-target (0) trials"
        )
    return ScoreList(
        np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64), pairs
    )

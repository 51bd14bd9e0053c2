"""Quality-aware score calibration (QMF): a log-likelihood ratio from the score *and* the
quality of the two utterances.

Linear calibration (:mod:`maskproxy_losses.scoring.calibration`) maps every score through
one line. A cosine score between two short or poor utterances means less than the same
score between two long clean ones, and quality measure functions (QMF; the back-end step
WeSpeaker and the NIST SRE / VoxSRC systems add after score normalisation) let the
calibration see that:

    llr = a * score + sum_k c_k * q_k + b

with quality measures ``q`` of the trial, by group (:data:`FEATURES`):

* ``duration``: log of the shorter and of the longer of the two utterances' durations
  (seconds; ordered, so the trial's two sides may be swapped);
* ``norm``: the smaller and the larger of the two raw embedding norms (before length
  normalisation; the mean over crops in ten-crop scoring).

The fit is the linear calibration's (prior-weighted logistic regression, scikit-learn,
on standardised inputs, Platt's smoothed targets) with the quality columns added. The training
recipe fits one on the dev trials of the best checkpoint (full-utterance cosine scores)
and stores it as ``qmf.json`` beside ``calibration.json`` in the model directory;
verification, ``verify_pair`` and ``maskproxy verify`` apply it, and the verification
recipe can fit one on another scored list (e.g. AS-normalised dev trials,
``qmf_fit_trials``).

Example
-------
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([1, 0], 200)
>>> dur = rng.uniform(1.0, 8.0, size=(400, 2))
>>> # the target scores are lower when the shorter utterance is short
>>> scores = np.where(labels == 1, 0.3 + 0.1 * np.log(dur.min(1)), 0.0) + rng.normal(0, 0.1, 400)
>>> quality = TrialQuality(dur, None)
>>> qmf = fit_qmf(scores, labels, quality, features=("duration",))
>>> qmf.columns()
['score', 'log_min_duration', 'log_max_duration']
>>> qmf(scores, quality).shape
(400,)
>>> from maskproxy_losses.scoring.calibration import fit_calibration
>>> linear = fit_calibration(scores, labels)
>>> bool(cllr(qmf(scores, quality), labels) < cllr(linear(scores), labels))
True
"""

import dataclasses
import json
import logging
import math
import os
from typing import NamedTuple

import numpy as np

from maskproxy_losses.scoring.calibration import (
    _check_prior,
    actual_dcf,
    cllr,
    logistic_fit,
    min_cllr,
)
from maskproxy_losses.scoring.metrics import check_scores, verification_metrics
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text, read_format_json

__all__ = [
    "QMF_FILE",
    "FEATURES",
    "TrialQuality",
    "QMF",
    "embedding_norms",
    "trial_quality",
    "indexed_quality",
    "quality_columns",
    "fit_qmf",
    "qmf_metrics",
    "load_model_qmf",
    "qmf_for",
    "model_qmf",
]

logger = logging.getLogger(__name__)

QMF_FILE = "qmf.json"
_FORMAT = "maskproxy-qmf"
_VERSION = 1
# quality group -> the columns it adds, in order
FEATURES = {
    "duration": ("log_min_duration", "log_max_duration"),
    "norm": ("min_norm", "max_norm"),
}


class TrialQuality(NamedTuple):
    """Per-trial quality: ``durations`` ``[N, 2]`` in seconds and ``norms`` ``[N, 2]`` (raw
    embedding norms) of the enrolment and test sides, or None where unknown."""

    durations: np.ndarray
    norms: np.ndarray | None = None


def embedding_norms(emb):
    """Raw norm of each embedding: ``[N, D]`` -> ``[N]``; ``[N, K, D]`` (K crops) -> the
    mean over the crops.

    >>> embedding_norms(np.array([[3.0, 4.0], [0.0, 1.0]])).tolist()
    [5.0, 1.0]
    """
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=-1)
    return norms.mean(axis=1) if norms.ndim == 2 else norms


def trial_quality(pairs, durations, embeddings=None):
    """:class:`TrialQuality` of ``pairs`` (``[(enrol key, test key)]``) from ``durations``
    (key -> seconds) and ``embeddings`` (key -> raw embedding, optional).

    >>> q = trial_quality([("a", "b")], {"a": 2.0, "b": 3.0}, {"a": [3.0, 4.0], "b": [1.0, 0]})
    >>> q.durations.tolist(), q.norms.tolist()
    ([[2.0, 3.0]], [[5.0, 1.0]])
    """
    dur = np.array([[durations[a], durations[b]] for a, b in pairs], dtype=np.float64)
    if embeddings is None:
        return TrialQuality(dur.reshape(-1, 2), None)
    keys = list(dict.fromkeys(k for pair in pairs for k in pair))
    norm_of = dict(zip(keys, embedding_norms(np.stack([np.asarray(embeddings[k]) for k in keys]))))
    norms = np.array([[norm_of[a], norm_of[b]] for a, b in pairs], dtype=np.float64)
    return TrialQuality(dur.reshape(-1, 2), norms.reshape(-1, 2))


def indexed_quality(emb, seconds, enrol, test):
    """:class:`TrialQuality` of trials given as index arrays ``enrol`` / ``test`` into the
    per-file raw embeddings ``emb`` (``[N, D]`` or ``[N, K, D]``) and durations ``seconds``.

    >>> q = indexed_quality(np.array([[3.0, 4.0], [1.0, 0.0]]), [2.0, 3.0], [0], [1])
    >>> q.durations.tolist(), q.norms.tolist()
    ([[2.0, 3.0]], [[5.0, 1.0]])
    """
    norms, seconds = embedding_norms(emb), np.asarray(seconds, dtype=np.float64)
    enrol, test = np.asarray(enrol), np.asarray(test)
    return TrialQuality(
        np.stack([seconds[enrol], seconds[test]], axis=1),
        np.stack([norms[enrol], norms[test]], axis=1),
    )


def quality_columns(features, quality):
    """The ``[N, F]`` quality columns of ``features`` (groups of :data:`FEATURES`)."""
    cols = []
    for name in features:
        if name not in FEATURES:
            raise ValueError(f"unknown quality feature {name!r}; choose from {sorted(FEATURES)}")
        values = quality.durations if name == "duration" else quality.norms
        if values is None:
            raise ValueError(f"quality feature {name!r} needs the trials' {name}s")
        values = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        if name == "duration":
            if not (values > 0).all():
                raise ValueError("durations must be positive")
            values = np.log(values)
        cols += [values.min(axis=1), values.max(axis=1)]
    n = len(quality.durations)
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


@dataclasses.dataclass
class QMF:
    """``llr = weights[0] * score + weights[1:] . quality columns + offset`` (natural log).

    ``features`` are the quality groups (:data:`FEATURES`) whose columns follow the score;
    ``prior``, ``n_target``, ``n_nontarget``, ``source`` and ``meta`` as in
    :class:`~maskproxy_losses.scoring.calibration.Calibration` (``meta`` records the
    ``score_mode`` / ``norm`` of the scores it was fitted on).
    """

    features: list
    weights: list
    offset: float
    prior: float = 0.5
    n_target: int = 0
    n_nontarget: int = 0
    source: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)

    def columns(self):
        """Names of the inputs ``weights`` multiply: ``score`` then the quality columns."""
        return ["score"] + [c for name in self.features for c in FEATURES[name]]

    def __call__(self, scores, quality):
        """The LLR of each trial (float64 array) from its score and :class:`TrialQuality`."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        x = np.column_stack([scores, quality_columns(self.features, quality)])
        if x.shape[0] != scores.size:
            raise ValueError(f"{scores.size} scores but {x.shape[0]} trials' quality")
        return x @ np.asarray(self.weights, dtype=np.float64) + self.offset

    def to_dict(self):
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "columns": self.columns(),
            **dataclasses.asdict(self),
        }

    def save(self, path):
        """Write as JSON to ``path`` (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`; a malformed one raises InputError naming it."""
        data = read_format_json(path, _FORMAT, "a QMF file")
        problems = []
        if data.get("version") != _VERSION:
            problems.append(f"{path}: unsupported version {data.get('version')!r}")
        features = data.get("features")
        if not isinstance(features, list) or not all(f in FEATURES for f in features):
            problems.append(f"{path}: 'features' must be a list of {sorted(FEATURES)}")
            features = []
        weights = data.get("weights")
        n_columns = 1 + sum(len(FEATURES[f]) for f in features)
        if (
            not isinstance(weights, list)
            or len(weights) != n_columns
            or not all(_finite(w) for w in weights)
        ):
            problems.append(f"{path}: 'weights' must be {n_columns} finite numbers")
        for key in ("offset", "prior"):
            if not _finite(data.get(key)):
                problems.append(f"{path}: {key!r} must be a finite number")
        if _finite(data.get("prior")) and not 0.0 < data["prior"] < 1.0:
            problems.append(f"{path}: 'prior' must be in (0, 1)")
        if not isinstance(data.get("meta", {}), dict):
            problems.append(f"{path}: 'meta' must be an object")
        if problems:
            raise InputError(problems)
        return cls(
            features=features,
            weights=[float(w) for w in weights],
            offset=float(data["offset"]),
            prior=float(data["prior"]),
            n_target=int(data.get("n_target", 0)),
            n_nontarget=int(data.get("n_nontarget", 0)),
            source=data.get("source"),
            meta=data.get("meta", {}),
        )


def _finite(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def fit_qmf(
    scores,
    labels,
    quality,
    features=("duration", "norm"),
    prior=0.5,
    l2=1e-10,
    source=None,
    smooth=True,
):
    """Fit a :class:`QMF` by prior-weighted logistic regression on labelled trials.

    Minimises ``prior / N_tar * sum_tar softplus(-e) + (1 - prior) / N_non * sum_non
    softplus(e)`` with ``e = llr + logit(prior)``, as
    :func:`~maskproxy_losses.scoring.calibration.fit_calibration` does for the score alone,
    over the score and the quality columns of ``features``, standardised, with the same
    ``l2`` term and (``smooth``) Platt's targets
    (:func:`~maskproxy_losses.scoring.calibration.logistic_fit`). Returns the weights in
    the inputs' own units.
    """
    scores, labels = check_scores(scores, labels)
    prior = _check_prior(prior)
    features = list(features)
    x = np.column_stack([scores, quality_columns(features, quality)])
    if x.shape[0] != scores.size:
        raise ValueError(f"{scores.size} scores but {x.shape[0]} trials' quality")
    if not np.isfinite(x).all():
        raise ValueError("quality measures contain NaN or Inf")
    n_tar = int(labels.sum())
    n_non = int(labels.size - n_tar)
    if min(n_tar, n_non) < 10 * x.shape[1]:
        logger.warning(
            "QMF fitted on %d target / %d non-target trials for %d weights: its LLRs may be "
            "overconfident (use a few hundred trials of each class)",
            n_tar,
            n_non,
            x.shape[1] + 1,
        )
    w, offset = logistic_fit(x, labels, prior, l2, smooth, max_iter=200)
    return QMF(
        features=features,
        weights=[float(v) for v in w],
        offset=offset,
        prior=prior,
        n_target=n_tar,
        n_nontarget=n_non,
        source=None if source is None else str(source),
    )


def qmf_metrics(scores, labels, quality, qmf, p_targets=(0.01, 0.05)):
    """Metrics of the QMF LLRs of a scored trial list: ``EER`` / ``minDCF_{p:g}`` (QMF may
    re-rank the trials), ``Cllr``, ``minCllr`` (of the LLRs: the discrimination QMF
    leaves) and ``actDCF_{p:g}``."""
    scores, labels = check_scores(scores, labels)
    llr = qmf(scores, quality)
    metrics = verification_metrics(llr, labels, p_targets)
    metrics.update(Cllr=cllr(llr, labels), minCllr=min_cllr(llr, labels))
    for p in p_targets:
        metrics[f"actDCF_{p:g}"] = actual_dcf(llr, labels, p_target=p)
    return metrics


def load_model_qmf(model_dir):
    """The :class:`QMF` stored in ``model_dir/qmf.json``, or ``None``."""
    path = os.path.join(model_dir, QMF_FILE)
    return QMF.load(path) if os.path.isfile(path) else None


def qmf_for(model_dir, score_mode, norm, choice="auto"):
    """``(qmf, its file)`` to apply to scores of ``score_mode`` / ``norm``: ``choice``
    ``"none"`` -> ``(None, None)``; a path -> that file; ``"auto"`` -> the model directory's
    ``qmf.json`` when it was fitted on such scores, else ``(None, None)``."""
    choice = "auto" if choice in (None, "") else str(choice)
    if choice.lower() == "none":
        return None, None
    if choice != "auto":
        return QMF.load(choice), choice
    path = os.path.join(model_dir, QMF_FILE)
    if not os.path.isfile(path):
        return None, None
    qmf = QMF.load(path)
    fitted = (qmf.meta.get("score_mode", "cosine"), qmf.meta.get("norm", "none"))
    return (qmf, path) if fitted == (score_mode, norm) else (None, None)


def model_qmf(model_dir):
    """The QMF that ``maskproxy verify``, :func:`~maskproxy_losses.inference.api.verify_pair`
    and :class:`~maskproxy_losses.inference.api.Verifier` take from a model directory: its
    ``qmf.json`` when fitted on full-utterance cosine scores, else None. A pair of
    utterances gets its LLR before that of ``calibration.json``; ``identify`` uses
    ``calibration.json`` only (a speaker model averaged over utterances has no duration or
    norm for the QMF)."""
    return qmf_for(model_dir, "cosine", "none")[0]

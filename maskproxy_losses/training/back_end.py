"""The training recipe's back end: fitted on the dev trials of the best checkpoint, stored
in the exported model directory, measured on the test trials.

Two calibrations of the full-utterance cosine scores, both fitted on the dev trials:
linear (``calibration.json``, :mod:`maskproxy_losses.scoring.calibration`) and
quality-aware (``qmf.json``, :mod:`maskproxy_losses.scoring.qmf`: the score, the two
utterances' durations and embedding norms). :func:`back_end_metrics` reports Cllr,
min-Cllr and actDCF with each, and EER / minDCF of the QMF LLRs (which may re-rank).

Example
-------
>>> import numpy as np
>>> from maskproxy_losses.scoring.qmf import TrialQuality
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([1, 0], 50)
>>> scores = labels * 0.5 + rng.normal(0, 0.2, 100)
>>> quality = TrialQuality(rng.uniform(1, 5, (100, 2)), rng.uniform(5, 9, (100, 2)))
>>> back_end = fit_back_end(scores, labels, quality)
>>> sorted(back_end_files(back_end))
['calibration.json', 'qmf.json']
>>> sorted(back_end_metrics(back_end, scores, labels, quality)["QMF"])[:3]
['Cllr', 'EER', 'EER_threshold']
"""

import json
import os
from typing import NamedTuple

from maskproxy_losses.scoring.calibration import (
    CALIBRATION_FILE,
    Calibration,
    calibration_metrics,
    fit_calibration,
)
from maskproxy_losses.scoring.qmf import QMF, QMF_FILE, fit_qmf, qmf_metrics, trial_quality

__all__ = ["BackEnd", "dataset_quality", "fit_back_end", "back_end_files", "back_end_metrics"]

# What the dev-trial fits may be applied to: full-utterance cosine scores, no normalisation.
SCORES = {"score_mode": "cosine", "norm": "none"}


class BackEnd(NamedTuple):
    """The linear calibration and the QMF fitted on the dev trials."""

    calibration: Calibration
    qmf: QMF


def dataset_quality(dataset, trials, embeddings):
    """:class:`~maskproxy_losses.scoring.qmf.TrialQuality` of ``trials`` (``Trial``
    records) from the ``duration`` column of ``dataset`` (a SpeechBrain dataset read from
    a manifest) and ``embeddings`` (absolute wav path -> raw embedding)."""
    durations = {
        os.path.abspath(row["wav"]): float(row["duration"]) for row in dataset.data.values()
    }
    pairs = [(t.enrol_path, t.test_path) for t in trials]
    return trial_quality(pairs, durations, embeddings)


def fit_back_end(scores, labels, quality, source="dev trials (best checkpoint)"):
    """:class:`BackEnd` fitted on scored, labelled trials and their quality."""
    calibration = fit_calibration(scores, labels, source=source)
    calibration.meta = dict(SCORES)
    qmf = fit_qmf(scores, labels, quality, features=("duration", "norm"), source=source)
    qmf.meta = dict(SCORES)
    return BackEnd(calibration, qmf)


def back_end_files(back_end):
    """``{file name: JSON text}`` of a :class:`BackEnd`, for the model directory."""
    return {
        CALIBRATION_FILE: json.dumps(back_end.calibration.to_dict(), indent=2),
        QMF_FILE: json.dumps(back_end.qmf.to_dict(), indent=2),
    }


def back_end_metrics(back_end, scores, labels, quality):
    """The linear calibration's metrics (``Cllr``, ``minCllr``, ``actDCF_*``) of a scored
    trial list, with those of the QMF LLRs under ``"QMF"``."""
    metrics = calibration_metrics(scores, labels, back_end.calibration)
    metrics["QMF"] = qmf_metrics(scores, labels, quality, back_end.qmf)
    return metrics

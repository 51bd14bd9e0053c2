"""Enrolled speakers: models as the mean of normalised embeddings, the speakers file (npz)
that ``maskproxy enrol`` writes and ``identify`` reads, and top-k ranking.

Example
-------
>>> ids, models, counts = enrol_speakers([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], ["a", "a", "b"])
>>> [(ids[j], round(s, 4)) for _, _, j, s in top_speakers(np.array([[1.0, 0.0]]), models, 2, "x")]
[('a', 0.7071), ('b', 0.7071)]
"""

import io
import os

import numpy as np

from maskproxy_losses.scoring.cosine import l2_normalize
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_bytes

__all__ = [
    "SPEAKERS_FORMAT",
    "enrol_speakers",
    "save_speakers",
    "load_speakers",
    "top_speakers",
]

SPEAKERS_FORMAT = "maskproxy-speakers"
_SPEAKERS_VERSION = 1


def enrol_speakers(emb, speaker_ids):
    """``(ids, models, counts)``: each speaker's model is the mean of its length-normalised
    utterance embeddings (ids in order of first appearance).

    >>> ids, models, counts = enrol_speakers([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], ["a", "a", "b"])
    >>> ids, np.round(models.astype(float), 4).tolist(), counts.tolist()
    (['a', 'b'], [[0.5, 0.5], [0.7071, 0.7071]], [2, 1])
    """
    ids = list(dict.fromkeys(speaker_ids))
    index = {s: i for i, s in enumerate(ids)}
    rows = np.array([index[s] for s in speaker_ids])
    unit = l2_normalize(np.asarray(emb, dtype=np.float64))
    counts = np.bincount(rows, minlength=len(ids))
    models = np.zeros((len(ids), unit.shape[1]))
    np.add.at(models, rows, unit)
    return ids, (models / counts[:, None]).astype(np.float32), counts.astype(np.int64)


def save_speakers(path, ids, models, counts, fingerprint):
    """Write a speakers file (npz) atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        format=np.array(SPEAKERS_FORMAT),
        version=np.array(_SPEAKERS_VERSION),
        speaker_ids=np.array(ids, dtype=str),
        models=np.asarray(models, np.float32),
        counts=np.asarray(counts, np.int64),
        model_fingerprint=np.array(fingerprint),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_speakers(path, fingerprint=None):
    """``(ids, models, counts)`` of a speakers file; ``InputError`` when it is not one or
    (given ``fingerprint``) was enrolled with another model."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: speakers file not found")
    not_ours = f"{path}: not a speakers file written by 'maskproxy enrol'"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception:  # not a zip / npz, or a pickled object array
        raise InputError(not_ours) from None
    keys = {"format", "version", "speaker_ids", "models", "counts", "model_fingerprint"}
    if not keys <= set(data) or str(data["format"]) != SPEAKERS_FORMAT:
        raise InputError(not_ours)
    if int(data["version"]) != _SPEAKERS_VERSION:
        raise InputError(f"{path}: unsupported speakers file version {int(data['version'])}")
    ids, models, counts = data["speaker_ids"].tolist(), data["models"], data["counts"]
    if models.ndim != 2 or len(ids) != models.shape[0] or len(ids) != counts.shape[0] or not ids:
        raise InputError(f"{path}: damaged speakers file (ids, models and counts disagree)")
    if fingerprint is not None and str(data["model_fingerprint"]) != fingerprint:
        raise InputError(
            f"{path}: enrolled with another model (fingerprint "
            f"{str(data['model_fingerprint'])[:16]}, this model {fingerprint[:16]}); "
            "run enrol again with this model directory"
        )
    return ids, models.astype(np.float32), counts


def top_speakers(emb, models, k, names, chunk=1024):
    """``(name, rank, speaker index, cosine)`` of the ``k`` best speakers of each row of
    ``emb``, scored ``chunk`` rows at a time (memory bounded for long lists).

    >>> emb, models = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0], [2.0, 0.0]])
    >>> [(n, r, j, round(s, 4)) for n, r, j, s in top_speakers(emb, models, 2, "ab", chunk=1)]
    [('a', 1, 1, 1.0), ('a', 2, 0, 0.7071), ('b', 1, 0, 0.7071), ('b', 2, 1, 0.0)]
    """
    unit_models = l2_normalize(np.asarray(models, dtype=np.float64))
    for s in range(0, len(names), chunk):
        scores = l2_normalize(np.asarray(emb[s : s + chunk], dtype=np.float64)) @ unit_models.T
        for name, row in zip(names[s : s + chunk], scores):
            for rank, j in enumerate(np.argsort(-row, kind="stable")[:k], 1):
                yield name, rank, int(j), float(row[j])

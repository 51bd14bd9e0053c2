"""A feature-free reference for how hard a corpus is: cosine of utterance-mean log-mel
vectors (no training). On the default built-in corpus its EER is about 29 %.

Example
-------
>>> import tempfile
>>> from data_prep.demo_corpus.writer import generate_corpus
>>> d = generate_corpus(tempfile.mkdtemp(), train_speakers=1, test_speakers=2, utterances=2,
...                     min_duration=0.5, max_duration=0.5, num_workers=1, n_trials=4)
>>> scores, labels = baseline_scores(d["trials"], d["wav_root"])
>>> scores.shape, sorted(set(labels.tolist()))
((4,), [0, 1])
"""

import functools
import os

import numpy as np
import soundfile as sf

from maskproxy_losses.data.audio import SAMPLE_RATE as SR
from maskproxy_losses.data.trials import read_trials
from maskproxy_losses.utils.errors import InputError

__all__ = ["mean_logmel", "baseline_scores", "baseline_eer"]


def _read_trial_list(trials, root):
    """``(label, abs1, abs2)`` of a trial file (``maskproxy_losses.data.trials.read_trials``:
    paths relative to ``root``, default the file's folder) or of a list of triples
    (relative to ``root``, default the working folder)."""
    if isinstance(trials, (str, os.PathLike)):
        rows, problems = read_trials(trials, test_root=root)
        if problems:
            raise InputError(problems)
        return [(t.label, t.enrol_path, t.test_path) for t in rows]
    root = root or ""
    return [
        (int(lab), *(os.path.abspath(os.path.join(root, p)) for p in (a, b)))
        for lab, a, b in trials
    ]


@functools.lru_cache(maxsize=2)
def _fbank(n_mels):
    from speechbrain.lobes.features import Fbank

    return Fbank(n_mels=n_mels)


def mean_logmel(path, n_mels=40):
    """Mean over time of the 40 log-mel features (SpeechBrain ``Fbank``) of a file."""
    import torch

    fbank = _fbank(n_mels)
    audio, sr = sf.read(path, dtype="float32")
    if sr != SR:
        raise ValueError(f"{path}: sample rate {sr}, expected {SR}")
    with torch.no_grad():
        feats = fbank(torch.from_numpy(audio).unsqueeze(0))
    return feats[0].mean(dim=0).numpy().astype(np.float64)


def baseline_scores(trials, root=None, n_mels=40, center=True):
    """Cosine of utterance-mean log-mel vectors for each trial -> ``(scores, labels)``.

    ``trials``: a ``label path1 path2`` file or a list of such triples; paths relative
    to ``root`` when given. With ``center`` the mean vector over the trial list's files
    is subtracted first (otherwise all cosines are close to 1).
    """
    rows = _read_trial_list(trials, root)
    files = sorted({p for _, a, b in rows for p in (a, b)})
    feats = np.stack([mean_logmel(p, n_mels) for p in files])
    if center:
        feats -= feats.mean(axis=0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    index = {p: k for k, p in enumerate(files)}
    a = np.array([index[r[1]] for r in rows])
    b = np.array([index[r[2]] for r in rows])
    return np.sum(feats[a] * feats[b], axis=1), np.array([r[0] for r in rows])


def baseline_eer(trials, root=None):
    """EER of ``baseline_scores`` (``maskproxy_losses.scoring.metrics.compute_eer``)."""
    from maskproxy_losses.scoring.metrics import compute_eer

    return compute_eer(*baseline_scores(trials, root))[0]

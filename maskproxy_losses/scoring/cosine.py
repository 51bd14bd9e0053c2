"""Scoring trials: cosine, the authors' 10-crop protocol, and S-norm / AS-norm.

Trials are given as index arrays into an embedding matrix, so a whole trial list scores in
one vectorised pass (:func:`maskproxy_losses.data.trials.index_trials` turns path pairs
into such arrays); scores are "higher = more likely the same speaker".

Example
-------
>>> emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
>>> np.round(cosine_scores(emb, [0, 0], [1, 2]), 4).tolist()
[0.7071, 0.0]
"""

import numpy as np
import torch

from maskproxy_losses.data.audio import crop_samples

__all__ = [
    "l2_normalize",
    "cosine_scores",
    "check_finite",
    "score_trials",
    "crop_starts",
    "make_crops",
    "ten_crop_scores",
    "speaker_means",
    "cohort_stats",
    "apply_score_norm",
    "score_norm",
]


def l2_normalize(x, axis=-1, eps=1e-12):
    """Divide ``x`` by its L2 norm along ``axis`` (numpy, float32 or float64 kept).

    >>> l2_normalize(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _as_np(emb):
    if isinstance(emb, torch.Tensor):
        emb = emb.detach().cpu().numpy()
    return np.asarray(emb)


def cosine_scores(emb, enrol_idx, test_idx, chunk=16384):
    """Cosine similarity of each trial: rows of ``emb`` ([N, D]) picked by the indices.

    Rows are L2-normalised once, then each trial is a row-wise dot product, ``chunk``
    trials at a time: memory grows with the N distinct embeddings, not with the trials
    (a [n_trials, D] gather of a long list would not fit). Returns float64 scores of
    shape ``[n_trials]``.

    >>> emb = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    >>> np.round(cosine_scores(emb, [0, 0, 1], [1, 2, 2], chunk=2), 4).tolist()
    [0.7071, 0.0, 0.7071]
    """
    emb = _as_np(emb)
    if emb.ndim == 3 and emb.shape[1] == 1:  # SpeechBrain's [N, 1, D]
        emb = emb[:, 0]
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got {emb.shape}")
    emb = l2_normalize(emb.astype(np.float64))
    e, t = np.asarray(enrol_idx, dtype=np.int64), np.asarray(test_idx, dtype=np.int64)
    if e.shape != t.shape or e.ndim != 1:
        raise ValueError(f"index arrays must be 1-D of one length, got {e.shape}, {t.shape}")
    out = np.empty(len(e))
    for s in range(0, len(e), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", emb[e[s : s + chunk]], emb[t[s : s + chunk]])
    return out


def check_finite(emb, keys, where):
    """Raise ``InputError`` naming each non-finite row of ``emb`` (one per key of ``keys``)
    as ``where[key]: non-finite embedding (NaN/Inf) of key``; when every row is, the model is
    named instead (its weights, not one file, are at fault).

    >>> check_finite(np.ones((2, 3)), ["a", "b"], {})
    >>> try:
    ...     check_finite(np.array([[1.0], [np.nan]]), ["a.wav", "b.wav"], {"b.wav": "t.txt:4"})
    ... except ValueError as err:
    ...     print(err)
    t.txt:4: non-finite embedding (NaN/Inf) of b.wav; check this audio file
    """
    from maskproxy_losses.utils.errors import InputError

    emb = _as_np(emb)
    finite = np.isfinite(emb.reshape(len(emb), -1)).all(axis=1)
    if finite.all():
        return
    if not finite.any() and len(emb) > 1:
        raise InputError(
            f"the embeddings of all {len(emb)} files are NaN/Inf: the model's weights (or "
            "its input pipeline) are not finite, not one file"
        )
    raise InputError(
        [
            f"{where.get(k, k)}: non-finite embedding (NaN/Inf) of {k}; check this audio file"
            for k, ok in zip(keys, finite)
            if not ok
        ]
    )


def score_trials(embeddings, trials):
    """Cosine scores and labels of ``trials`` (as :func:`maskproxy_losses.data.trials.read_trials`
    returns them) with ``embeddings`` a ``{absolute wav path: embedding}`` mapping. A
    non-finite embedding is refused (:func:`check_finite`, naming the trial line), never
    scored.

    >>> from maskproxy_losses.data.trials import Trial
    >>> emb = {"/a.wav": np.array([1.0, 0.0]), "/b.wav": np.array([1.0, 1.0])}
    >>> scores, labels = score_trials(emb, [Trial(1, "a.wav", "b.wav", "/a.wav", "/b.wav", "t:1")])
    >>> round(float(scores[0]), 4), labels.tolist()
    (0.7071, [1])
    """
    from maskproxy_losses.data.trials import index_trials

    keys, enrol, test = index_trials((t.enrol_path, t.test_path) for t in trials)
    emb = np.stack([_as_np(embeddings[k]).reshape(-1) for k in keys])
    if not np.isfinite(emb).all():
        where = {p: t.where for t in reversed(trials) for p in (t.enrol_path, t.test_path)}
        check_finite(emb, keys, where)
    return cosine_scores(emb, enrol, test), np.array([t.label for t in trials])


# ------------------------------------------------------ the authors' 10 crops
def crop_starts(num_samples, crop_len, num_crops=10):
    """Start sample of each crop: ``int(linspace(0, num_samples - crop_len, K))``.

    ``num_samples`` must be at least ``crop_len`` (pad first, see :func:`make_crops`).

    >>> crop_starts(1000, 100, 4).tolist()
    [0, 300, 600, 900]
    """
    if num_samples < crop_len:
        raise ValueError(f"signal of {num_samples} samples is shorter than a crop ({crop_len})")
    return np.linspace(0, num_samples - crop_len, num_crops).astype(np.int64)


def make_crops(wav, num_frames=400, num_crops=10):
    """Cut ``num_crops`` crops of ``num_frames`` frames from a 1-D waveform.

    A signal shorter than a crop is first zero-padded symmetrically (the extra
    sample, if odd, goes to the end). Returns ``[K, crop_len]``, a tensor if
    ``wav`` is one, else a numpy array.

    >>> make_crops(np.arange(1, 5, dtype=np.float32), num_frames=0, num_crops=2).shape
    (2, 240)
    >>> make_crops(np.ones(3), num_frames=0, num_crops=1)[0, 117:122].tolist()
    [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    is_tensor = isinstance(wav, torch.Tensor)
    x = wav if is_tensor else torch.as_tensor(np.asarray(wav))
    if x.dim() != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {tuple(x.shape)}")
    length = crop_samples(num_frames)
    if x.shape[0] < length:
        short = length - x.shape[0]
        x = torch.nn.functional.pad(x, (short // 2, short - short // 2))
    starts = torch.as_tensor(crop_starts(x.shape[0], length, num_crops))
    crops = x[starts[:, None] + torch.arange(length)]
    return crops if is_tensor else crops.numpy()


def ten_crop_scores(crop_emb, enrol_idx, test_idx, chunk=2048):
    """The authors' multi-crop score of each trial.

    ``crop_emb`` is ``[N, K, D]`` (K crop embeddings per file). The K embeddings
    are L2-normalised and the score is ``- mean_{i,j} || r_i - c_j + 1e-6 ||_2``
    over the explicit K x K grid of enrol crops ``r`` and test crops ``c``
    (direct differences, not the Gram-matrix shortcut). Returns float64 ``[n_trials]``.

    >>> e = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    >>> np.round(ten_crop_scores(e, [0], [1]), 4).tolist()  # -(0 + 0 + 2 * sqrt(2)) / 4
    [-0.7071]
    """
    emb = torch.as_tensor(_as_np(crop_emb), dtype=torch.float32)
    if emb.dim() != 3:
        raise ValueError(f"crop embeddings must be [N, K, D], got {tuple(emb.shape)}")
    emb = torch.nn.functional.normalize(emb, dim=-1)
    e = torch.as_tensor(np.asarray(enrol_idx), dtype=torch.long)
    t = torch.as_tensor(np.asarray(test_idx), dtype=torch.long)
    out = []
    for s in range(0, e.numel(), chunk):
        r = emb[e[s : s + chunk]] + 1e-6
        c = emb[t[s : s + chunk]]
        d = torch.cdist(r, c, compute_mode="donot_use_mm_for_euclid_dist")
        out.append(-d.mean(dim=(1, 2)))
    if not out:
        return np.zeros(0)
    return torch.cat(out).double().numpy()


# ------------------------------------------------------ S-norm and AS-norm
def speaker_means(emb, spk_ids):
    """Per-speaker cohort embeddings: mean of L2-normalised embeddings, re-normalised.

    ``emb`` is ``[N, D]`` (or ``[N, K, D]`` crop embeddings, averaged per file
    first). Returns ``(speakers, [S, D])`` with speakers in order of first appearance.

    >>> spk, m = speaker_means(np.array([[1.0, 0], [0, 1.0], [0, 3.0]]), ["a", "a", "b"])
    >>> spk, np.round(m, 4).tolist()
    (['a', 'b'], [[0.7071, 0.7071], [0.0, 1.0]])
    """
    emb = l2_normalize(_as_np(emb).astype(np.float64))
    if emb.ndim == 3:
        emb = l2_normalize(emb.mean(axis=1))
    speakers, inverse = [], []
    pos = {}
    for s in spk_ids:
        if s not in pos:
            pos[s] = len(speakers)
            speakers.append(s)
        inverse.append(pos[s])
    sums = np.zeros((len(speakers), emb.shape[1]))
    np.add.at(sums, np.asarray(inverse, dtype=np.int64), emb)
    return speakers, l2_normalize(sums)


def cohort_stats(emb, cohort, top_n=None, chunk=512):
    """Mean and std of each file's scores against the cohort.

    ``emb`` is ``[N, D]`` (cosine scores) or ``[N, K, D]`` (10-crop protocol: the
    file's crops against each cohort vector, ``- mean_i || r_i - c + 1e-6 ||``);
    ``cohort`` is ``[C, D]``. With ``top_n`` only the ``top_n`` highest cohort
    scores of each file count (AS-norm); ``None`` uses the whole cohort (S-norm).
    Each file is compared with the cohort once, however many trials it is in.
    Std is the population std (ddof=0). Returns float64 ``(mean [N], std [N])``.
    """
    x = torch.as_tensor(_as_np(emb), dtype=torch.float32)
    x = torch.nn.functional.normalize(x, dim=-1)
    coh = torch.as_tensor(_as_np(cohort), dtype=torch.float32)
    coh = torch.nn.functional.normalize(coh, dim=-1)
    n_coh = coh.shape[0]
    k = n_coh if top_n is None or top_n <= 0 else min(int(top_n), n_coh)
    means, stds = [], []
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk]
        if xb.dim() == 2:
            sc = xb @ coh.T
        else:
            # Gram-matrix distances: a crop is never near-identical to a speaker mean
            d = torch.cdist(
                xb + 1e-6, coh.expand(xb.shape[0], -1, -1), compute_mode="use_mm_for_euclid_dist"
            )
            sc = -d.mean(dim=1)
        if k < n_coh:
            sc = torch.topk(sc, k, dim=1).values
        sc = sc.double()
        means.append(sc.mean(dim=1))
        stds.append(sc.std(dim=1, unbiased=False))
    return torch.cat(means).numpy(), torch.cat(stds).numpy()


def apply_score_norm(scores, enrol_idx, test_idx, mean, std, eps=1e-12):
    """Symmetric normalisation: ``0.5 * ((s - m_e) / sd_e + (s - m_t) / sd_t)``.

    ``mean`` / ``std`` are per-file cohort statistics (from :func:`cohort_stats`).

    >>> apply_score_norm([1.0], [0], [1], np.array([0.0, 0.5]), np.array([1.0, 0.5])).tolist()
    [1.0]
    """
    s = np.asarray(scores, dtype=np.float64)
    e, t = np.asarray(enrol_idx), np.asarray(test_idx)
    mean, std = np.asarray(mean), np.maximum(np.asarray(std), eps)
    return 0.5 * ((s - mean[e]) / std[e] + (s - mean[t]) / std[t])


def score_norm(scores, emb, enrol_idx, test_idx, cohort, top_n=None):
    """S-norm (``top_n=None``) or AS-norm (top ``top_n`` cohort scores) of trial scores.

    ``emb`` is the embedding matrix the scores came from (``[N, D]`` for cosine,
    ``[N, K, D]`` for 10-crop); ``cohort`` is ``[C, D]`` (e.g. :func:`speaker_means`
    of training embeddings).
    """
    mean, std = cohort_stats(emb, cohort, top_n=top_n)
    return apply_score_norm(scores, enrol_idx, test_idx, mean, std)

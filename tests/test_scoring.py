"""Scoring: EER / minDCF (hand examples, brute force, SpeechBrain), cosine, 10-crop,
S-norm / AS-norm against naive per-trial loops."""

import numpy as np
import pytest
import torch
from speechbrain.utils.metric_stats import EER as sb_eer
from speechbrain.utils.metric_stats import minDCF as sb_min_dcf

from maskproxy_losses.data.audio import crop_samples
from maskproxy_losses.data.trials import index_trials
from maskproxy_losses.scoring.cosine import (
    cosine_scores,
    crop_starts,
    make_crops,
    score_norm,
    speaker_means,
    ten_crop_scores,
)
from maskproxy_losses.scoring.metrics import compute_eer, compute_min_dcf


# ----------------------------------------------------------------- metrics by hand
def test_eer_hand_examples():
    # separable: EER 0 at the lowest target score
    assert compute_eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == (0.0, 0.8)
    # one target below one non-target out of 2 + 2: fpr = fnr = 1/2 at threshold 0.5
    assert compute_eer([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == (0.5, 0.5)
    # 3 targets, 5 non-targets; the authors' ROC lacks the crossing point (0.6)
    s, y = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [0, 1, 0, 1, 1, 0, 0, 0]
    assert compute_eer(s, y) == (pytest.approx(2 / 3), 0.7)
    assert compute_eer(s, y, drop_intermediate=False) == (pytest.approx(0.4), 0.6)


def test_min_dcf_hand_examples():
    s, y = [0.9, 0.2, 0.3, 0.1], [1, 1, 0, 0]
    # thresholds: accept none -> fnr 1, fpr 0: cost p; accept >= 0.9 -> fnr .5, fpr 0
    for p in (0.01, 0.05):
        dcf, thr = compute_min_dcf(s, y, p_target=p)
        assert dcf == pytest.approx(0.5 * p / p) and thr == 0.9
    # p = 0.5, c_fa = 3: accept all gives 0.5 * 3 * 1 = 1.5, accept >= 0.2 gives
    # 3 * 0.5 * 0.5 = 0.75, accept >= 0.9 gives 0.25; c_def = min(0.5, 1.5) = 0.5
    dcf, thr = compute_min_dcf(s, y, p_target=0.5, c_fa=3.0)
    assert dcf == pytest.approx(0.5) and thr == 0.9
    assert compute_min_dcf([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])[0] == 0.0


@pytest.mark.parametrize(
    "scores, labels, what",
    [
        ([], [], "no trials"),
        ([0.1, 0.2], [1, 1], "only one class"),
        ([0.1, 0.2], [1, 2], "0 or 1"),
        ([0.1, np.nan], [0, 1], "NaN"),
    ],
)
def test_metric_input_errors(scores, labels, what):
    with pytest.raises(ValueError, match=what):
        compute_eer(scores, labels)


# --------------------------------------------------------------- brute force EER
def _brute_points(scores, labels):
    """(fpr, fnr) for 'accept none' and 'accept >= t' at each distinct score, high to low."""
    n_pos, n_neg = (labels == 1).sum(), (labels == 0).sum()
    pts = [(0.0, 1.0, np.inf)]
    for t in sorted(set(scores.tolist()), reverse=True):
        acc = scores >= t
        pts.append(((acc & (labels == 0)).sum() / n_neg, (~acc & (labels == 1)).sum() / n_pos, t))
    return pts


def _brute_eer(pts):
    best = min(range(len(pts)), key=lambda i: (abs(pts[i][1] - pts[i][0]), i))
    return max(pts[best][0], pts[best][1]), pts[best][2]


def _corners(pts):
    """Keep first, last and points where the direction of the curve changes."""
    keep = [0]
    for i in range(1, len(pts) - 1):
        d1 = (pts[i][0] - pts[i - 1][0], pts[i][1] - pts[i - 1][1])
        d2 = (pts[i + 1][0] - pts[i][0], pts[i + 1][1] - pts[i][1])
        if not (np.isclose(d1[0], d2[0]) and np.isclose(d1[1], d2[1])):
            keep.append(i)
    return [pts[i] for i in keep + [len(pts) - 1]]


@pytest.mark.parametrize("seed", range(4))
def test_eer_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 400
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(size=n) + 1.5 * labels, 2 if seed % 2 else 6)  # ties too
    pts = _brute_points(scores, labels)
    # every distinct-score threshold
    eer, thr = compute_eer(scores, labels, drop_intermediate=False)
    b_eer, b_thr = _brute_eer(pts)
    assert eer == pytest.approx(b_eer, abs=1e-12) and thr == b_thr
    # the authors' ROC: corners of the curve only
    eer, thr = compute_eer(scores, labels)
    c_eer, c_thr = _brute_eer(_corners(pts))
    assert eer == pytest.approx(c_eer, abs=1e-12) and thr == c_thr
    assert abs(eer - b_eer) < 0.05
    # minDCF over all thresholds by brute force
    for p in (0.01, 0.05):
        costs = [(fnr * p + fpr * (1 - p)) / min(p, 1 - p) for fpr, fnr, _ in pts]
        assert compute_min_dcf(scores, labels, p)[0] == pytest.approx(min(costs), abs=1e-12)


# ------------------------------------------------------------------ SpeechBrain
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_speechbrain(seed):
    rng = np.random.default_rng(seed)
    n = 300  # equal class sizes: a threshold with FAR == FRR exists
    labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
    scores = (rng.normal(size=2 * n) + 2.0 * labels).astype(np.float32)  # exact in float32
    pos, neg = torch.from_numpy(scores[labels == 1]), torch.from_numpy(scores[labels == 0])
    s64 = scores.astype(np.float64)

    # SpeechBrain's EER is (FAR + FRR) / 2 at its best threshold; with FAR == FRR
    # reachable it equals ours over all thresholds.
    sb_value, _ = sb_eer(pos, neg)
    assert compute_eer(s64, labels, drop_intermediate=False)[0] == pytest.approx(sb_value, abs=1e-6)

    # SpeechBrain's minDCF is not normalised: ours = theirs / min(c_miss p, c_fa (1 - p)).
    for p, c_miss, c_fa in ((0.01, 1, 1), (0.05, 1, 1), (0.1, 2, 1)):
        sb_value, _ = sb_min_dcf(pos, neg, c_miss=c_miss, c_fa=c_fa, p_target=p)
        ours, _ = compute_min_dcf(s64, labels, p, c_miss, c_fa)
        assert ours * min(c_miss * p, c_fa * (1 - p)) == pytest.approx(sb_value, abs=1e-6)


def test_speechbrain_eer_differs_when_no_exact_crossing():
    # 1 target, 3 non-targets: FAR == FRR is not reachable; the best point is
    # FAR 1/3, FRR 0. SpeechBrain averages the two, the authors take the max.
    s, y = np.array([0.5, 0.6, 0.2, 0.1]), np.array([1, 0, 0, 0])
    sb_value, _ = sb_eer(torch.tensor([0.5]), torch.tensor([0.6, 0.2, 0.1]))
    assert sb_value == pytest.approx(1 / 6)
    assert compute_eer(s, y) == (pytest.approx(1 / 3), 0.5)


# ------------------------------------------------------------------ cosine
def test_index_trials_and_cosine_vs_loop():
    rng = np.random.default_rng(0)
    emb = {f"f{i}": rng.normal(size=16) for i in range(20)}
    pairs = [(f"f{rng.integers(20)}", f"f{rng.integers(20)}") for _ in range(100)]
    keys, e, t = index_trials(pairs)
    assert [keys[i] for i in e] == [a for a, _ in pairs]
    assert [keys[i] for i in t] == [b for _, b in pairs]
    matrix = np.stack([emb[k] for k in keys])
    got = cosine_scores(matrix, e, t)
    want = [emb[a] @ emb[b] / np.linalg.norm(emb[a]) / np.linalg.norm(emb[b]) for a, b in pairs]
    np.testing.assert_allclose(got, want, atol=1e-12)
    # SpeechBrain's [N, 1, D] and torch tensors are accepted
    np.testing.assert_allclose(cosine_scores(torch.from_numpy(matrix)[:, None], e, t), got)


# ------------------------------------------------------------------ 10 crops
def test_crop_positions():
    length = crop_samples(400)
    assert length == 64240
    starts = crop_starts(100000, length, 10)
    assert starts.tolist() == [int(x) for x in np.linspace(0, 100000 - length, 10)]
    assert starts[0] == 0 and starts[-1] == 100000 - length and starts[1] == 3973
    wav = np.arange(100000, dtype=np.float32)
    crops = make_crops(wav, 400, 10)
    assert crops.shape == (10, length)
    for k, s in enumerate(starts):
        np.testing.assert_array_equal(crops[k], wav[s : s + length])
    assert isinstance(make_crops(torch.from_numpy(wav), 400, 10), torch.Tensor)
    # exactly one crop long: every crop is the whole signal
    crops = make_crops(wav[:length], 400, 10)
    assert (crops == wav[:length]).all()


@pytest.mark.parametrize("n", [1000, 1001])
def test_short_file_is_zero_padded_symmetrically(n):
    wav = np.arange(1, n + 1, dtype=np.float32)
    crops = make_crops(wav, 10, 4)  # crop = 1840 samples
    short = 1840 - n
    left = short // 2
    assert crops.shape == (4, 1840)
    for c in crops:
        assert (c[:left] == 0).all() and (c[left + n :] == 0).all()
        np.testing.assert_array_equal(c[left : left + n], wav)
    assert 1840 - n - left in (left, left + 1)


def _naive_ten_crop(r, c):
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    total = 0.0
    for i in range(r.shape[0]):
        for j in range(c.shape[0]):
            total += np.linalg.norm(r[i] - c[j] + 1e-6)
    return -total / (r.shape[0] * c.shape[0])


def test_ten_crop_vs_double_loop():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(12, 10, 32))
    emb[3] = emb[2]  # identical files: distances near 0 on the diagonal
    e, t = rng.integers(0, 12, 40), rng.integers(0, 12, 40)
    e[0], t[0] = 2, 3
    got = ten_crop_scores(emb, e, t, chunk=7)
    want = [_naive_ten_crop(emb[a], emb[b]) for a, b in zip(e, t)]
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_ten_crop_is_not_broadcast_pairwise_distance():
    # the original code: F.pairwise_distance(ref.unsqueeze(-1), com.unsqueeze(-1).transpose(0, 2))
    rng = np.random.default_rng(2)
    ref = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(10, 32))), dim=1)
    com = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(10, 32))), dim=1)
    old = torch.nn.functional.pairwise_distance(
        ref.unsqueeze(-1), com.unsqueeze(-1).transpose(0, 2)
    )
    ours = ten_crop_scores(torch.stack([ref, com]), [0], [1])[0]
    assert ours == pytest.approx(_naive_ten_crop(ref.numpy(), com.numpy()), abs=1e-6)
    # current PyTorch takes the norm over the last (crop) axis: a [K, D] result
    assert tuple(old.shape) == (10, 32)
    assert abs(-old.mean().item() - ours) > 0.1


# ------------------------------------------------------------------ S-norm / AS-norm
def _naive_norm(emb, cohort, e, t, raw, top_n, score_fn):
    out = []
    for a, b, s in zip(e, t, raw):
        z = []
        for f in (a, b):
            c = np.array([score_fn(emb[f], row) for row in cohort])
            if top_n:
                c = np.sort(c)[::-1][:top_n]
            z.append((s - c.mean()) / c.std())
        out.append(0.5 * (z[0] + z[1]))
    return np.array(out)


def _cos(a, b):
    return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


@pytest.mark.parametrize("top_n", [None, 5])
def test_snorm_asnorm_cosine_vs_naive(top_n):
    rng = np.random.default_rng(3)
    emb, cohort = rng.normal(size=(15, 24)), rng.normal(size=(40, 24))
    e, t = rng.integers(0, 15, 50), rng.integers(0, 15, 50)
    raw = cosine_scores(emb, e, t)
    got = score_norm(raw, emb, e, t, cohort, top_n=top_n)
    want = _naive_norm(emb, cohort, e, t, raw, top_n, _cos)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_asnorm_ten_crop_vs_naive():
    rng = np.random.default_rng(4)
    emb, cohort = rng.normal(size=(8, 3, 16)), rng.normal(size=(20, 16))
    e, t = rng.integers(0, 8, 20), rng.integers(0, 8, 20)
    raw = ten_crop_scores(emb, e, t)
    got = score_norm(raw, emb, e, t, cohort, top_n=6)
    want = _naive_norm(emb, cohort, e, t, raw, 6, lambda f, c: _naive_ten_crop(f, c[None]))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_speaker_means():
    emb = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    spk, means = speaker_means(emb, ["b", "b", "a"])
    assert spk == ["b", "a"]
    np.testing.assert_allclose(means, [[2**-0.5, 2**-0.5], [2**-0.5, 2**-0.5]])
    # crop embeddings: each file's crops are averaged first
    spk, means = speaker_means(np.array([[[1.0, 0.0], [0.0, 1.0]]]), ["x"])
    np.testing.assert_allclose(means, [[2**-0.5, 2**-0.5]])


# ------------------------------------------------------- long lists, non-finite input
def test_cosine_scores_in_chunks_equal_one_pass_and_memory_follows_the_files():
    import tracemalloc

    rng = np.random.default_rng(5)
    emb = rng.normal(size=(16, 64))
    e, t = rng.integers(0, 16, 5000), rng.integers(0, 16, 5000)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    one_pass = np.einsum("ij,ij->i", unit[e], unit[t])  # the [n_trials, D] gathers
    for chunk in (1, 7, 4096, 10**6):
        np.testing.assert_array_equal(cosine_scores(emb, e, t, chunk=chunk), one_pass)
    # 400,000 trials over 16 files: one pass would gather 2 x 400k x 64 float64 = 410 MB;
    # in chunks the peak is the scores (3.2 MB) plus one chunk's gathers (16 MB)
    n = 400_000
    e, t = rng.integers(0, 16, n), rng.integers(0, 16, n)
    tracemalloc.start()
    try:
        cosine_scores(emb, e, t)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6, peak


def test_score_trials_refuses_non_finite_embeddings_by_line():
    from maskproxy_losses.data.trials import Trial
    from maskproxy_losses.scoring.cosine import score_trials
    from maskproxy_losses.utils.errors import InputError

    trials = [
        Trial(1, "a.wav", "b.wav", "/a.wav", "/b.wav", "dev_trials.txt:1"),
        Trial(0, "a.wav", "c.wav", "/a.wav", "/c.wav", "dev_trials.txt:2"),
    ]
    emb = {"/a.wav": np.ones(3), "/b.wav": np.ones(3), "/c.wav": np.array([1.0, np.nan, 0.0])}
    with pytest.raises(InputError) as err:
        score_trials(emb, trials)
    assert str(err.value) == (
        "dev_trials.txt:2: non-finite embedding (NaN/Inf) of /c.wav; check this audio file"
    )
    emb = {k: np.full(3, np.inf) for k in emb}  # every file: the model, not the audio
    with pytest.raises(InputError, match="embeddings of all 3 files are NaN/Inf: the model"):
        score_trials(emb, trials)

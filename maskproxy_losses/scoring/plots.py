"""Pictures of a scored trial list: the DET curve and the score histograms.

Example
-------
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "det.png")
>>> rng = np.random.default_rng(0)
>>> scores = np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 200)]
>>> labels = np.r_[[1] * 200, [0] * 200]
>>> plot_det_and_scores(scores, labels, path)
>>> open(path, "rb").read(4)
b'\\x89PNG'
"""

import io

import numpy as np

from maskproxy_losses.scoring.metrics import compute_eer, roc
from maskproxy_losses.utils.files import atomic_write_bytes

__all__ = ["plot_det_and_scores", "plot_embedding_map"]


def plot_det_and_scores(scores, labels, path):
    """DET curve (probit axes) and target / non-target score histograms -> PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    scores, labels = np.asarray(scores), np.asarray(labels)
    fpr, fnr, _ = roc(scores, labels)
    eer, eer_threshold = compute_eer(scores, labels)
    # axes from about one error in the smaller class to 50% (99% for a worse system)
    lo = max(1e-4, min(0.01, 0.5 / min(labels.sum(), (1 - labels).sum())))
    hi = 0.5 if eer < 0.4 else 0.99
    ppf = lambda p: norm.ppf(np.clip(p, lo, hi))  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(ppf(fpr), ppf(fnr))
    ticks = np.array([0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 95, 99]) / 100
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    for set_ticks, set_labels in (
        (ax1.set_xticks, ax1.set_xticklabels),
        (ax1.set_yticks, ax1.set_yticklabels),
    ):
        set_ticks(norm.ppf(ticks))
        set_labels([f"{100 * t:g}" for t in ticks])
    ax1.plot(ppf(eer), ppf(eer), "o", label=f"EER {100 * eer:.2f}%")
    lim = norm.ppf([lo, hi])
    ax1.set(
        xlim=lim, ylim=lim, xlabel="false alarm rate (%)", ylabel="miss rate (%)", title="DET curve"
    )
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax2.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label="target")
    ax2.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label="non-target")
    ax2.axvline(eer_threshold, color="k", ls="--", lw=1, label="EER threshold")
    ax2.set(xlabel="score", ylabel="density", title="score distributions")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_embedding_map(embeddings, speakers, path, seed=0):
    """A 2-D t-SNE map (scikit-learn) of length-normalised ``embeddings`` [N, D], one
    colour per speaker -> PNG at ``path``. Returns the 2-D coordinates [N, 2]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from maskproxy_losses.scoring.cosine import l2_normalize

    emb = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    if len(emb) < 3:
        raise ValueError(f"an embedding map needs at least 3 embeddings, got {len(emb)}")
    xy = TSNE(
        n_components=2,
        perplexity=min(30.0, (len(emb) - 1) / 3),
        metric="cosine",
        init="pca",
        random_state=seed,
    ).fit_transform(emb)
    names = sorted(set(speakers))
    cmap = plt.get_cmap("tab20" if len(names) <= 20 else "gist_ncar", len(names))
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, name in enumerate(names):
        mask = np.array([s == name for s in speakers])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=12, color=cmap(i), label=name)
    ax.set(title=f"t-SNE of {len(emb)} embeddings, {len(names)} speakers", xticks=[], yticks=[])
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return xy

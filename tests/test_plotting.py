"""The pictures: the DET plot and the t-SNE embedding map keep what they show."""

import numpy as np

from maskproxy_losses.scoring.plots import plot_det_and_scores, plot_embedding_map


def test_embedding_map_keeps_speakers_apart(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 32)) * 3
    speakers = [f"spk{i}" for i in range(4) for _ in range(15)]
    emb = np.repeat(centres, 15, axis=0) + 0.3 * rng.standard_normal((60, 32))
    xy = plot_embedding_map(emb, speakers, tmp_path / "map.png")
    assert xy.shape == (60, 2) and (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    # each point's nearest neighbour on the map belongs to the same speaker
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(60) * 1e9
    nearest = d.argmin(1)
    assert all(speakers[i] == speakers[j] for i, j in enumerate(nearest))


def test_det_plot_is_written_atomically(tmp_path):
    scores, labels = (
        np.r_[np.linspace(0, 1, 50), np.linspace(-1, 0.5, 50)],
        np.r_[[1] * 50, [0] * 50],
    )
    plot_det_and_scores(scores, labels, tmp_path / "det.png")
    assert [p.name for p in tmp_path.iterdir()] == ["det.png"]

"""The pyannote.audio adapter (maskproxy_losses.inference.pyannote).

Its call interface is checked against embeddings computed here from the masked samples
(whatever is installed); with pyannote.audio installed (the ``pyannote`` extra, in the
lock), an exported model directory also serves as the embedding model of a real
``SpeakerDiarization`` pipeline, built offline from pyannote's own debug segmentation
model and an identity PLDA (the hub's pretrained models cannot be fetched here).
"""

import numpy as np
import pytest
import torch

from maskproxy_losses.inference.api import SpeakerEmbedder
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.inference.pyannote import PyannoteEmbedding, use_in_pipeline
from maskproxy_losses.models.resnetse34l import ResNetSE34L

DIM = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=DIM).eval()
    return export_model(tmp_path_factory.mktemp("pyannote") / "model", model)


def _kept_samples(wave, mask, n_samples):
    """The samples a frame mask keeps, nearest frame of each sample (independently)."""
    frame_of = np.floor(np.arange(n_samples) * mask.shape[0] / n_samples).astype(int)
    return wave[mask[frame_of] > 0.5]


def test_masked_rows_embed_their_kept_samples_alone(model_dir):
    embedding = PyannoteEmbedding(model_dir)
    assert (embedding.sample_rate, embedding.metric, embedding.dimension) == (16000, "cosine", DIM)
    gen = torch.Generator().manual_seed(1)
    waveforms = torch.rand(3, 1, 24000, generator=gen) - 0.5
    masks = torch.zeros(3, 293)
    masks[0, 20:200] = 1.0
    masks[1, :] = 0.7  # soft mask above 0.5: everything
    masks[2, 10:12] = 1.0  # 2 frames: fewer samples than min_num_samples
    out = embedding(waveforms, masks)
    assert out.shape == (3, DIM) and out.dtype == np.float32
    reference = SpeakerEmbedder(model_dir, precision="fp32")
    for i in (0, 1):
        kept = _kept_samples(waveforms[i, 0].numpy(), masks[i].numpy(), 24000)
        np.testing.assert_allclose(out[i], reference.embed(kept), rtol=1e-4, atol=1e-5)
    assert np.isnan(out[2]).all()
    full = embedding(waveforms[:1])  # no masks: the whole row
    np.testing.assert_allclose(full[0], reference.embed(waveforms[0, 0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\]"):
        embedding(waveforms[:, 0])
    with pytest.raises(TypeError, match="torch.device"):
        embedding.to("cpu")
    assert embedding.to(torch.device("cpu")) is embedding


def _identity_plda(folder, dim):
    from pyannote.audio.core.plda import PLDA

    eye, zero = np.eye(dim), np.zeros(dim)
    np.savez(folder / "xvec.npz", mean1=zero, mean2=zero, lda=eye)
    np.savez(folder / "plda.npz", mu=zero, tr=eye, psi=np.ones(dim))
    return PLDA(folder / "xvec.npz", folder / "plda.npz", lda_dimension=dim)


@pytest.mark.slow
def test_model_directory_embeds_in_a_pyannote_diarization_pipeline(model_dir, tmp_path):
    pytest.importorskip("pyannote.audio")
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from pyannote.audio.models.embedding.debug import SimpleEmbeddingModel
    from pyannote.audio.models.segmentation.debug import SimpleSegmentationModel
    from pyannote.audio.pipelines import SpeakerDiarization

    torch.manual_seed(0)
    segmentation = SimpleSegmentationModel()
    segmentation.specifications = Specifications(
        problem=Problem.MULTI_LABEL_CLASSIFICATION,
        resolution=Resolution.FRAME,
        duration=5.0,
        classes=["a", "b", "c"],
    )
    segmentation.build()  # the task-dependent layers (lightning's set-up would add them)
    pipeline = SpeakerDiarization(
        segmentation=segmentation,
        embedding=SimpleEmbeddingModel(),  # replaced below: pyannote cannot name a local dir
        plda=_identity_plda(tmp_path, DIM),
        clustering="AgglomerativeClustering",
    )
    embedding = PyannoteEmbedding(model_dir)
    calls = []
    real = embedding.__call__

    class Spy(PyannoteEmbedding):
        def __call__(self, waveforms, masks=None):
            calls.append((tuple(waveforms.shape), None if masks is None else tuple(masks.shape)))
            return real(waveforms, masks)

    embedding.__class__ = Spy
    assert use_in_pipeline(pipeline, embedding) is pipeline
    pipeline.instantiate(
        {
            "segmentation": {"threshold": 0.1, "min_duration_off": 0.0},
            "clustering": {"method": "centroid", "min_cluster_size": 1, "threshold": 0.7},
        }
    )
    t = torch.arange(12 * 16000) / 16000
    voice = torch.sin(2 * torch.pi * 150 * t) * (torch.sin(2 * torch.pi * 0.5 * t) > 0)
    output = pipeline({"waveform": (0.3 * voice)[None], "sample_rate": 16000})
    assert calls and all(w[1:] == (1, 80000) and m is not None for w, m in calls)
    assert output.speaker_embeddings.shape[1] == DIM
    assert pipeline.embedding == str(model_dir)


def test_use_in_pipeline_without_pyannote_says_how_to_install(model_dir, monkeypatch):
    import sys

    from maskproxy_losses.utils.errors import InputError

    monkeypatch.setitem(sys.modules, "pyannote.audio.core.io", None)  # import fails
    with pytest.raises(InputError, match=r"pyannote.audio is not installed: pip install"):
        use_in_pipeline(object(), model_dir)

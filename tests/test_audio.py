"""data.audio: MIN_SAMPLES is what the encoder needs; probe refuses shorter files."""

import numpy as np
import pytest
import soundfile as sf
import torch

from maskproxy_losses.data.audio import MIN_SAMPLES, SAMPLE_RATE, probe
from maskproxy_losses.models.frontend import build_frontend
from maskproxy_losses.models.resnetse34l import ResNetSE34L


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return ResNetSE34L().eval()


def embed(encoder, frontend, n):
    """Embed ``n`` random samples alone, as the exported model does (eval mode)."""
    compute_features, mean_var_norm = frontend
    wav = torch.rand(1, n, generator=torch.Generator().manual_seed(n)) * 0.2 - 0.1
    lens = torch.ones(1)
    with torch.no_grad():
        return encoder(mean_var_norm(compute_features(wav), lens), lens)


@pytest.mark.parametrize("name", ["fbank", "authors"])
def test_min_samples_embed_to_finite_values(encoder, name):
    emb = embed(encoder, build_frontend(name), MIN_SAMPLES)
    assert emb.shape == (1, 1, 512) and bool(torch.isfinite(emb).all())


def test_why_min_samples_is_above_256(encoder):
    # The authors' front end (centred STFT, reflect padding of 256) needs 257 samples;
    # SpeechBrain's Fbank embeds even 256. MIN_SAMPLES (400) is above both limits.
    authors, fbank = build_frontend("authors"), build_frontend("fbank")
    with pytest.raises(RuntimeError, match="[Pp]adding size should be less than"):
        embed(encoder, authors, 256)
    assert bool(torch.isfinite(embed(encoder, authors, 257)).all())
    assert bool(torch.isfinite(embed(encoder, fbank, 256)).all())
    assert 257 <= MIN_SAMPLES


def test_probe_refuses_short_audio(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(MIN_SAMPLES - 1), SAMPLE_RATE, subtype="PCM_16")
    assert probe(str(path)) == (
        None,
        f"too short to embed: {MIN_SAMPLES - 1} samples, at least "
        f"{MIN_SAMPLES} (25 ms) needed: {path}",
    )
    sf.write(path, np.zeros(MIN_SAMPLES), SAMPLE_RATE, subtype="PCM_16")
    assert probe(str(path)) == (MIN_SAMPLES / SAMPLE_RATE, None)

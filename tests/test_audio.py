"""data.audio: MIN_SAMPLES is what the encoders need; probe refuses shorter files;
signal_problem names waveforms that cannot be embedded."""

import numpy as np
import pytest
import soundfile as sf
import torch

from maskproxy_losses.data.audio import MIN_SAMPLES, SAMPLE_RATE, probe, signal_problem
from maskproxy_losses.models.ecapa_tdnn import ECAPA_TDNN
from maskproxy_losses.models.frontend import build_frontend
from maskproxy_losses.models.resnet34 import ResNet34
from maskproxy_losses.models.resnetse34l import ResNetSE34L

ENCODERS = {
    "resnetse34l": lambda: ResNetSE34L(),
    "resnet34": lambda: ResNet34(n_mels=40, channels=(8, 16, 32, 64)),
    "ecapa_tdnn": lambda: ECAPA_TDNN(input_size=40, channels=[64, 64, 64, 64, 192]),
}


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {name: make().eval() for name, make in ENCODERS.items()}


def embed(encoder, frontend, n):
    """Embed ``n`` random samples alone, as the exported model does (eval mode)."""
    compute_features, mean_var_norm = frontend
    wav = torch.rand(1, n, generator=torch.Generator().manual_seed(n)) * 0.2 - 0.1
    lens = torch.ones(1)
    with torch.no_grad():
        return encoder(mean_var_norm(compute_features(wav), lens), lens)


@pytest.mark.parametrize("name", ["fbank", "authors"])
@pytest.mark.parametrize("encoder_name", list(ENCODERS))
def test_min_samples_embed_to_finite_values(encoders, encoder_name, name):
    emb = embed(encoders[encoder_name], build_frontend(name), MIN_SAMPLES)
    assert emb.shape[:2] == (1, 1) and bool(torch.isfinite(emb).all())


def test_why_min_samples_is_800(encoders):
    # The authors' front end (centred STFT, reflect padding of 256) needs 257 samples;
    # SpeechBrain's Fbank embeds even 256 with the ResNets. ECAPA-TDNN's dilated
    # convolutions reflect-pad 4 frames, so it needs 5 frames (1 + n // 160): 640 samples.
    authors, fbank = build_frontend("authors"), build_frontend("fbank")
    resnet, ecapa = encoders["resnetse34l"], encoders["ecapa_tdnn"]
    with pytest.raises(RuntimeError, match="[Pp]adding size should be less than"):
        embed(resnet, authors, 256)
    assert bool(torch.isfinite(embed(resnet, authors, 257)).all())
    assert bool(torch.isfinite(embed(resnet, fbank, 256)).all())
    for frontend in (authors, fbank):
        with pytest.raises(RuntimeError, match="[Pp]adding size should be less than"):
            embed(ecapa, frontend, 639)
        assert bool(torch.isfinite(embed(ecapa, frontend, 640)).all())
    assert 640 <= MIN_SAMPLES


def test_signal_problem():
    assert signal_problem(torch.rand(MIN_SAMPLES)) is None
    assert signal_problem(torch.full((MIN_SAMPLES,), 0.25)) == "silent: every sample is 0.25"
    wav = torch.rand(MIN_SAMPLES)
    wav[7] = float("nan")
    assert signal_problem(wav) == "non-finite sample (NaN/Inf) at sample 7"
    assert signal_problem(torch.rand(MIN_SAMPLES - 1)) == (
        f"too short to embed: {MIN_SAMPLES - 1} samples read, at least {MIN_SAMPLES} needed"
    )


def test_probe_refuses_short_audio(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(MIN_SAMPLES - 1), SAMPLE_RATE, subtype="PCM_16")
    assert probe(str(path)) == (
        None,
        f"too short to embed: {MIN_SAMPLES - 1} samples, at least "
        f"{MIN_SAMPLES} (50 ms) needed: {path}",
    )
    sf.write(path, np.zeros(MIN_SAMPLES), SAMPLE_RATE, subtype="PCM_16")
    assert probe(str(path)) == (MIN_SAMPLES / SAMPLE_RATE, None)

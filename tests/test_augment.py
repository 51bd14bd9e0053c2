"""Optional training augmentation of the recipe (SpeechBrain's AddNoise / AddReverb)."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch
import train_speaker_embeddings as recipe
from speechbrain.augment.preparation import prepare_csv

from maskproxy_losses.data.augment import build_augmenter
from maskproxy_losses.utils.errors import InputError

SR = 16000


def _csv(tmp_path, name, signal):
    wav = tmp_path / f"{name}.wav"
    sf.write(wav, signal, SR, subtype="FLOAT")
    csv = tmp_path / f"{name}.csv"
    prepare_csv([str(wav)], str(csv))  # SpeechBrain's own CSV writer: the documented route
    return csv


def _hparams(**changes):
    return {
        "sample_rate": SR,
        "noise_csv": None,
        "rir_csv": None,
        "augment_prob": 1.0,
        "snr_low": 0,
        "snr_high": 0,
        **changes,
    }


def _speech(n=2, length=8000):
    t = torch.arange(length) / SR
    return torch.stack(
        [torch.sin(2 * np.pi * 220 * (i + 1) * t) * (0.3 + 0.2 * i) for i in range(n)]
    )


def test_no_csv_means_no_augmentation():
    assert build_augmenter(_hparams()) is None


def test_noise_at_0_db(tmp_path):
    # A constant (DC) noise at SNR 0 dB: SpeechBrain scales the clean signal by 1/2 and adds
    # noise of the same RMS as the scaled clean signal, i.e. a constant offset of rms(x) / 2.
    csv = _csv(tmp_path, "dc", np.full(3 * SR, 0.25, dtype=np.float32))
    augment = build_augmenter(_hparams(noise_csv=str(csv)))
    x = _speech()
    y, lens = augment(x, torch.ones(len(x)))
    assert y.shape == x.shape and torch.equal(lens, torch.ones(len(x)))
    want = 0.5 * x + 0.5 * x.pow(2).mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(y, want, atol=1e-4, rtol=1e-4)


def test_delta_impulse_response_leaves_speech_unchanged(tmp_path):
    rir = np.zeros(800, dtype=np.float32)
    rir[40] = 1.0  # a pure delay: aligned to the direct path, it is the identity
    csv = _csv(tmp_path, "delta", rir)
    augment = build_augmenter(_hparams(rir_csv=str(csv)))
    x = _speech()
    y, _ = augment(x, torch.ones(len(x)))
    torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)


def test_missing_or_malformed_csv_is_named(tmp_path):
    with pytest.raises(
        InputError, match=re.escape(f"{tmp_path / 'none.csv'}: noise_csv not found")
    ):
        build_augmenter(_hparams(noise_csv=str(tmp_path / "none.csv")))
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,duration,wav\nx,1.0,x.wav\n")  # SpeechBrain's reader also needs the last two
    with pytest.raises(
        InputError, match=re.escape(f"{bad}:1: rir_csv lacks the column(s) wav_format, wav_opts")
    ):
        build_augmenter(_hparams(rir_csv=str(bad)))
    rows = tmp_path / "rows.csv"
    rows.write_text(
        f"ID,duration,wav,wav_format,wav_opts\na,1.0,{tmp_path / 'gone.wav'},wav,\nb,1.0\n"
    )
    with pytest.raises(InputError) as err:
        build_augmenter(_hparams(noise_csv=str(rows)))
    assert err.value.problems == [
        f"{rows}:2: audio file not found: {tmp_path / 'gone.wav'}",
        f"{rows}:3: expected 5 fields, got 2",
    ]


def test_training_with_noise_and_reverberation(corpus, tmp_path, capsys, recipe_args, final_line):
    rng = np.random.default_rng(0)
    noise = _csv(tmp_path, "noise", (0.1 * rng.standard_normal(2 * SR)).astype(np.float32))
    rir = _csv(
        tmp_path,
        "rir",
        (np.exp(-np.arange(1600) / 200.0) * rng.standard_normal(1600)).astype(np.float32),
    )
    brain = recipe.train(
        recipe_args(corpus, tmp_path / "run", noise_csv=noise, rir_csv=rir, augment_prob=1.0)
    )
    eer, _ = final_line(capsys.readouterr().out)
    assert 0 <= eer <= 100
    augment = brain.augment
    assert sorted(type(a).__name__ for a in augment.augmentations.values()) == [
        "AddNoise",
        "AddReverb",
    ]
    assert augment.do_augment  # the last training batch went through it
    assert (tmp_path / "run" / "model" / "hyperparams.yaml").is_file()

"""Feature front ends: the authors' log-mel + instance norm, and SpeechBrain's Fbank with
per-utterance mean and variance normalisation (``fbank``, ResNetSE34L's) or mean
normalisation only (``fbank_cmn``, the 80 log-mel front end of ResNet34 and ECAPA-TDNN).

:class:`DeviceFbank` is SpeechBrain's ``Fbank`` (the same features) with its constants
(the STFT window and the mel matrix) kept as buffers on the module's device, where
SpeechBrain's rebuilds the mel matrix on the CPU and copies both to the device at every
call; the training recipe uses it, the exported model names SpeechBrain's ``Fbank``.

Both presets are a pair ``(compute_features, mean_var_norm)`` with the interface
``EncoderClassifier`` expects: ``compute_features(wavs)`` maps float waveforms in
[-1, 1] of shape [batch, time] to features [batch, frames, n_mels], and
``mean_var_norm(feats, lengths)`` normalises them per utterance.

Example
-------
>>> compute_features, mean_var_norm = build_frontend("authors", n_mels=40)
>>> wavs = torch.rand(2, 16000) * 2 - 1
>>> feats = mean_var_norm(compute_features(wavs), torch.tensor([1.0, 0.5]))
>>> feats.shape
torch.Size([2, 101, 40])
"""

import importlib

import torch
import torchaudio
from speechbrain.lobes.features import Fbank
from torch import nn

__all__ = [
    "AuthorsFbank",
    "InstanceNorm",
    "DeviceFbank",
    "FRONTENDS",
    "frontend_spec",
    "build_frontend",
]


class AuthorsFbank(nn.Module):
    """The authors' log-mel front end (no normalisation; see ``InstanceNorm``).

    Waveforms in [-1, 1] are scaled by ``scale`` (int16 range, as the authors fed
    them) -> MelSpectrogram(16 kHz, n_fft 512, win 400, hop 160, 0-8000 Hz, Hann)
    -> + 1e-6 -> natural log. Runs in float32 with autocast disabled.

    Arguments
    ---------
    n_mels : int
        Number of mel bins.
    sample_rate : int
        Sampling rate of the input waveforms.
    scale : float
        Factor applied to the waveform before the spectrogram.
    """

    def __init__(self, n_mels=40, sample_rate=16000, scale=32768.0):
        super().__init__()
        self.scale = float(scale)
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=512,
            win_length=400,
            hop_length=160,
            f_min=0.0,
            f_max=sample_rate / 2,
            pad=0,
            n_mels=n_mels,
            window_fn=torch.hann_window,
        )

    def forward(self, wavs):
        """wavs: [batch, time] -> log-mel features [batch, frames, n_mels]."""
        with torch.autocast(device_type=wavs.device.type, enabled=False):
            mel = self.melspec(wavs.float() * self.scale)
            return (mel + 1e-6).log().transpose(1, 2)


class InstanceNorm(nn.Module):
    """Per-utterance mean/variance normalisation over time, as ``InstanceNorm1d``.

    Uses the biased variance and ``(x - mean) / sqrt(var + eps)``; with relative
    ``lengths`` only the valid frames enter the statistics and padded frames are
    set to 0.

    Arguments
    ---------
    eps : float
        Added to the variance.
    """

    def __init__(self, eps=1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, feats, lengths=None):
        """feats: [batch, time, feat]; lengths: relative lengths in [0, 1] or None."""
        with torch.autocast(device_type=feats.device.type, enabled=False):
            feats = feats.float()
            n_frames = feats.shape[1]
            if lengths is None:
                valid = torch.full((feats.shape[0],), n_frames, device=feats.device)
            else:
                valid = torch.round(lengths.to(feats.device, torch.float32) * n_frames)
                valid = valid.clamp(1, n_frames)
            mask = torch.arange(n_frames, device=feats.device)[None, :] < valid[:, None]
            mask = mask.unsqueeze(-1)
            count = valid.view(-1, 1, 1).to(feats.dtype)
            mean = feats.masked_fill(~mask, 0.0).sum(dim=1, keepdim=True) / count
            centred = (feats - mean).masked_fill(~mask, 0.0)
            var = centred.pow(2).sum(dim=1, keepdim=True) / count
            return centred * torch.rsqrt(var + self.eps)


class DeviceFbank(Fbank):
    """SpeechBrain's ``Fbank`` (same arguments, same features) whose STFT window and mel
    matrix are non-persistent buffers: they move with ``.to(device)`` and nothing is
    rebuilt or copied from the host per call (the state dict stays empty, as Fbank's).
    Only the fixed filterbank is supported (no deltas, context, learnable or randomised
    filters).

    >>> wavs = torch.rand(2, 16000) * 2 - 1
    >>> torch.equal(DeviceFbank(n_mels=40)(wavs), Fbank(n_mels=40)(wavs))
    True
    >>> torch.equal(DeviceFbank(n_mels=80)(wavs), Fbank(n_mels=80)(wavs))
    True
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        fb = self.compute_fbanks
        if self.deltas or self.context or self.requires_grad or fb.param_rand_factor:
            raise ValueError("DeviceFbank supports the fixed filterbank only")
        stft = self.compute_STFT
        window = stft.window
        del stft.window  # a plain attribute in SpeechBrain: made a buffer here
        stft.register_buffer("window", window, persistent=False)
        n_freqs = fb.all_freqs_mat.shape[1]  # as Filterbank.forward builds it
        f_central = fb.f_central.repeat(n_freqs, 1).transpose(0, 1)
        band = fb.band.repeat(n_freqs, 1).transpose(0, 1)
        matrix = fb._create_fbank_matrix(f_central, band)
        self.register_buffer("fbank_matrix", matrix, persistent=False)

    def forward(self, wav):
        """wav: [batch, time] -> log-mel features [batch, frames, n_mels], in float32
        with autocast off (as SpeechBrain's ``fwd_default_precision`` does)."""
        with torch.autocast(device_type=wav.device.type, enabled=False):
            # |X|^2 = re^2 + im^2, rounded as SpeechBrain's spectral_magnitude rounds it (the
            # same bits) in half its time (it takes pow(2), a sum over an axis of 2 and
            # pow(1): the largest part of the front end after the FFT on a CPU)
            real, imag = self.compute_STFT(wav.float()).unbind(-1)
            power = real.square().add_(imag.square())
            fbanks = torch.matmul(power, self.fbank_matrix)
            return self.compute_fbanks._amplitude_to_DB(fbanks)


# Preset name -> (compute_features, mean_var_norm), each (class path, kwargs);
# "{n_mels}" marks where the mel count goes. Used by ``build_frontend`` and by
# ``maskproxy_losses.inference.export`` to write the same modules into hyperparams.yaml.
FRONTENDS = {
    "authors": (
        ("maskproxy_losses.models.frontend.AuthorsFbank", {"n_mels": "{n_mels}"}),
        ("maskproxy_losses.models.frontend.InstanceNorm", {}),
    ),
    "fbank": (
        ("speechbrain.lobes.features.Fbank", {"n_mels": "{n_mels}"}),
        (
            "speechbrain.processing.features.InputNormalization",
            {"norm_type": "sentence", "std_norm": True},
        ),
    ),
    "fbank_cmn": (
        ("speechbrain.lobes.features.Fbank", {"n_mels": "{n_mels}"}),
        (
            "speechbrain.processing.features.InputNormalization",
            {"norm_type": "sentence", "std_norm": False},
        ),
    ),
}


def frontend_spec(name, n_mels=40):
    """Return [(class path, kwargs), (class path, kwargs)] of preset ``name``."""
    if name not in FRONTENDS:
        raise ValueError(f"unknown front end {name!r}; choose one of {sorted(FRONTENDS)}")
    return [
        (path, {k: int(n_mels) if v == "{n_mels}" else v for k, v in kwargs.items()})
        for path, kwargs in FRONTENDS[name]
    ]


def build_frontend(name, n_mels=40):
    """Instantiate preset ``name`` ("authors", "fbank" or "fbank_cmn") as
    ``(compute_features, mean_var_norm)`` modules."""
    modules = []
    for path, kwargs in frontend_spec(name, n_mels):
        module_name, cls_name = path.rsplit(".", 1)
        modules.append(getattr(importlib.import_module(module_name), cls_name)(**kwargs))
    return tuple(modules)

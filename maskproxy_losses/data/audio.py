"""Audio conventions of the project: 16 kHz mono, crops of F frames, reading and probing.

A crop of ``F`` frames is ``F * 160 + 240`` samples (10 ms hop, 25 ms window), as in
the authors' code; :data:`MIN_SAMPLES` is the shortest signal the front ends and the
encoder can embed (shorter files are refused by data preparation and scoring).
:func:`probe` also refuses non-finite samples: only float files (``FLOAT`` / ``DOUBLE``
subtypes) can hold NaN / Inf, so those are read once in blocks; integer PCM, FLAC and
the like (all of VoxCeleb after ``maskproxy transcode``) cost a header read only.

Training data must be 16 kHz mono (data preparation refuses other files, or writes 16 kHz
copies with ``--resample``). Inference takes audio as users have it: with
``convert=True`` :func:`probe` accepts any rate and channel count and :func:`read_wav`
resamples to 16 kHz and averages the channels, with SpeechBrain's ``AudioNormalizer``
(what ``EncoderClassifier.load_audio`` does); :func:`conversion_note` says what was done.

Example
-------
>>> crop_samples(200), crop_samples(350)
(32240, 56240)
"""

import os

import soundfile as sf

__all__ = [
    "SAMPLE_RATE",
    "HOP",
    "WIN_EXTRA",
    "MIN_SAMPLES",
    "FLOAT_SUBTYPES",
    "crop_samples",
    "first_non_finite",
    "signal_problem",
    "probe",
    "read_wav",
    "probe_entries",
    "conversion_note",
    "to_16k_mono",
]

SAMPLE_RATE = 16000
HOP = 160
WIN_EXTRA = 240  # a crop of F frames is F * 160 + 240 samples
# The shortest file data preparation and scoring accept. Measured (tests/test_audio.py):
# alone in eval mode, ResNetSE34L and ResNet34 embed from 1 sample with the "fbank" front
# end (SpeechBrain Fbank + sentence InputNormalization) and from 257 with "authors"
# (torchaudio's centred STFT reflect-pads n_fft // 2 = 256 samples per side); ECAPA-TDNN
# only from 640 (5 frames: its dilated convolutions reflect-pad 4 frames per side).
# 800 = 50 ms, the next round value above all of them.
MIN_SAMPLES = 800
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the sample formats that can hold NaN / Inf


def crop_samples(num_frames):
    """Samples in a crop of ``num_frames`` frames: ``F * 160 + 240``.

    >>> crop_samples(400)
    64240
    """
    return int(num_frames) * HOP + WIN_EXTRA


def first_non_finite(path, block=1 << 20):
    """Index of the first sample of ``path`` that is NaN / Inf once read as float32 (a
    float64 sample beyond float32's range counts), or None; read ``block`` frames at a time.

    >>> import tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.array([0.0, 0.5, np.nan, 0.1]), 16000, subtype="FLOAT")
    >>> first_non_finite(path), first_non_finite(path, block=2)
    (2, 2)
    """
    import numpy as np

    done = 0
    for part in sf.blocks(path, blocksize=block, dtype="float32", always_2d=True):
        finite = np.isfinite(part).all(axis=1)
        if not finite.all():
            return done + int(np.argmin(finite))
        done += len(part)
    return None


def signal_problem(wav):
    """Why a read 1-D waveform cannot be embedded, or ``None``: a NaN / Inf sample, fewer
    than :data:`MIN_SAMPLES` samples (a file shorter than its header says), or digital
    silence (every sample equal: any two such files score as the same speaker).

    >>> import torch
    >>> signal_problem(torch.zeros(1000)), signal_problem(torch.arange(1000.0)) is None
    ('silent: every sample is 0', True)
    """
    import torch

    finite = torch.isfinite(wav)
    if not bool(finite.all()):
        return f"non-finite sample (NaN/Inf) at sample {int((~finite).nonzero()[0])}"
    if wav.shape[0] < MIN_SAMPLES:
        return f"too short to embed: {wav.shape[0]} samples read, at least {MIN_SAMPLES} needed"
    if bool((wav == wav[0]).all()):
        return f"silent: every sample is {float(wav[0]):g}"
    return None


def probe(path, min_samples=MIN_SAMPLES, convert=False):
    """``(duration_s, None)`` from the header of ``path``, or ``(None, what is wrong)``.

    A file is usable when it exists, libsndfile reads its header, it is 16 kHz mono (any
    rate and channel count with ``convert``), it holds at least ``min_samples`` samples
    (at 16 kHz) and, when its samples are floats (:data:`FLOAT_SUBTYPES`), every sample is
    finite (the only case that reads the data).
    """
    if not os.path.isfile(path):
        return None, f"missing file {path}"
    try:
        info = sf.info(path)
    except Exception as err:  # libsndfile raises several types
        return None, f"unreadable audio {path} ({str(err).strip()})"
    if info.frames <= 0:
        return None, f"empty audio {path}"
    if info.samplerate != SAMPLE_RATE and not convert:
        return None, f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE}: {path}"
    if info.channels != 1 and not convert:
        return None, f"{info.channels} channels, expected mono: {path}"
    samples = info.frames * SAMPLE_RATE // info.samplerate
    if samples < min_samples:
        at = "" if info.samplerate == SAMPLE_RATE else f" at {SAMPLE_RATE} Hz"
        return None, (
            f"too short to embed: {samples} samples{at}, at least {min_samples} "
            f"({min_samples / SAMPLE_RATE * 1000:g} ms) needed: {path}"
        )
    if info.subtype in FLOAT_SUBTYPES:
        try:
            bad = first_non_finite(path)
        except Exception as err:  # truncated data behind a valid header
            return None, f"unreadable audio {path} ({str(err).strip()})"
        if bad is not None:
            return None, (
                f"non-finite sample (NaN/Inf) at sample {bad} "
                f"({bad / info.samplerate:.3f} s): {path}"
            )
    return info.frames / info.samplerate, None


_NORMALIZER = []


def to_16k_mono(wav, sample_rate):
    """``wav`` (a tensor ``[samples]`` or ``[samples, channels]`` at ``sample_rate``) as a
    16 kHz mono 1-D tensor: SpeechBrain's ``AudioNormalizer`` (made once; it keeps one
    resampler per rate), as ``EncoderClassifier.load_audio`` uses."""
    import torch

    if not _NORMALIZER:
        from speechbrain.dataio.preprocess import AudioNormalizer

        _NORMALIZER.append(AudioNormalizer(sample_rate=SAMPLE_RATE, mix="avg-to-mono"))
    with torch.no_grad():
        return _NORMALIZER[0](wav, int(sample_rate)).contiguous()


def read_wav(path, start=0, stop=None, convert=False):
    """Mono float32 waveform in [-1, 1] (samples ``start:stop`` of the file) as a 1-D
    tensor. Channels are averaged; another rate than 16 kHz raises ``ValueError``, or with
    ``convert`` is resampled to 16 kHz (SpeechBrain's ``AudioNormalizer``)."""
    import torch  # here, so that probing headers does not need torch

    wav, sr = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        if not convert:
            raise ValueError(f"sample rate {sr} Hz, expected {SAMPLE_RATE}")
        return to_16k_mono(torch.from_numpy(wav), sr)
    return torch.from_numpy(wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0])


def probe_entries(entries, convert=False):
    """Probe each distinct file of ``entries`` (``(where, [paths])``) once (``convert``: any
    rate and channel count, see :func:`probe`).

    Returns ``(samples at 16 kHz by usable path, problems, bad wheres)``: one ``where:
    what`` problem per entry that names a bad file (``what`` alone when ``where`` is empty).
    """
    info, problems, bad = {}, [], set()
    for where, paths in entries:
        for p in paths:
            if p not in info:
                dur, err = probe(p, convert=convert)
                info[p] = err if err else int(round(dur * SAMPLE_RATE))
            if isinstance(info[p], str):
                problems.append(f"{where}: {info[p]}" if where else info[p])
                bad.add(where)
    return {p: n for p, n in info.items() if not isinstance(n, str)}, problems, bad


def conversion_note(paths):
    """One line saying which of ``paths`` are read converted (resampled to 16 kHz, mixed
    down to mono), or ``None`` when all are 16 kHz mono. Reads the headers only.

    >>> conversion_note([]) is None
    True
    """
    rates, stereo = {}, 0
    for p in dict.fromkeys(paths):
        try:
            info = sf.info(p)
        except Exception:  # reported by the probe
            continue
        if info.samplerate != SAMPLE_RATE:
            rates[info.samplerate] = rates.get(info.samplerate, 0) + 1
        stereo += info.channels > 1
    parts = []
    if rates:
        what = ", ".join(f"{n} at {sr} Hz" for sr, n in sorted(rates.items()))
        parts.append(f"resampled to {SAMPLE_RATE} Hz: {sum(rates.values())} file(s) ({what})")
    if stereo:
        parts.append(f"mixed down to mono (channels averaged): {stereo} file(s)")
    if not parts:
        return None
    return "; ".join(parts) + " (as SpeechBrain's load_audio does; --no-resample refuses them)"

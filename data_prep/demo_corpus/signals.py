"""The signal model of the built-in corpus: speakers, sessions (channels) and utterances.

Every speaker has stable voice traits (pitch level and range, vocal-tract length,
idiosyncratic formant offsets, bandwidths, spectral tilt, breathiness, jitter, speaking
rate); every utterance has its own content (vowel, nasal, fricative, plosive and pause
segments with intonation); every speaker has 2-4 sessions, each with its own channel
(band limits, equaliser, optional reverberation, level, coloured noise at 5-30 dB SNR).
Everything is a function of the seed and the speaker / utterance index.

Example
-------
>>> plan = speaker_plan(0, 0, 0, utterances=2, min_duration=0.5, max_duration=0.5)
>>> plan["name"], len(plan["utts"])
('id00001', 2)
>>> rng = _rng(0, 0, 0, 2, 0)
>>> audio = apply_channel(synth_utterance(plan["traits"], rng, 0.5), plan["sessions"][0], rng)
>>> audio.shape, bool(abs(audio).max() <= 0.98)
((8000,), True)
"""

import numpy as np
from scipy import fft as sp_fft
from scipy import signal

from maskproxy_losses.data.audio import SAMPLE_RATE

__all__ = ["speaker_traits", "session_channel", "speaker_plan", "synth_utterance", "apply_channel"]

SR = SAMPLE_RATE

# F1-F4 (Hz) of a reference adult vocal tract.
VOWELS = np.array(
    [
        [730, 1090, 2440, 3400],  # a
        [270, 2290, 3010, 3600],  # i
        [300, 870, 2240, 3300],  # u
        [530, 1840, 2480, 3500],  # e
        [570, 840, 2410, 3300],  # o
        [660, 1720, 2410, 3400],  # ae
        [500, 1500, 2500, 3500],  # schwa
        [390, 1990, 2550, 3600],  # I
    ],
    dtype=float,
)
BANDWIDTHS = np.array([70.0, 90.0, 130.0, 170.0])
NASAL = np.array([260.0, 1150.0, 2300.0, 3300.0])
FRICATIVES = [(5800.0, 2600.0, 0.30), (3200.0, 1800.0, 0.30), (5000.0, 5500.0, 0.10)]  # s sh f
BURSTS = [(1300.0, 900.0), (3900.0, 1800.0), (2500.0, 1200.0)]  # p t k: centre, width


# ----------------------------------------------------------------------------- seeds, traits


def _rng(seed, *key):
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def speaker_traits(rng):
    """Stable voice traits of one speaker."""
    female = rng.random() < 0.5
    return {
        "f0": rng.uniform(165, 250) if female else rng.uniform(85, 150),
        "f0_range": rng.uniform(1.0, 4.0),  # semitones of the pitch accents
        "formant_scale": rng.uniform(1.08, 1.28) if female else rng.uniform(0.84, 1.04),
        "formant_offsets": rng.normal(0.0, 0.07, VOWELS.shape[1]),
        "vowel_offsets": rng.normal(0.0, 0.08, VOWELS.shape),
        "bandwidth": rng.uniform(0.7, 1.6),
        "tilt_hz": rng.uniform(60.0, 900.0),  # glottal low-pass corner
        "breath": rng.uniform(0.02, 0.3),
        "jitter": rng.uniform(0.003, 0.03),
        "shimmer": rng.uniform(0.02, 0.15),
        "rate": rng.uniform(0.75, 1.3),
        "fricative_shift": rng.uniform(0.88, 1.12),
        "colour": [
            (rng.uniform(400, 5000), rng.uniform(-12, 12), rng.uniform(0.8, 2.5)) for _ in range(4)
        ],
    }


def session_channel(rng):
    """Recording conditions shared by a session's utterances."""
    return {
        "highpass": rng.uniform(50.0, 150.0),
        "lowpass": rng.uniform(5000.0, 7600.0),
        "eq": [
            (rng.uniform(250, 5000), rng.uniform(-3, 3), rng.uniform(0.7, 2.0))
            for _ in range(rng.integers(0, 3))
        ],
        "rt60": rng.uniform(0.1, 0.35) if rng.random() < 0.25 else 0.0,
        "ir_seed": int(rng.integers(2**31)),
        "snr_db": 5.0 + 25.0 * np.sqrt(rng.random()),  # 5-30 dB, median ~23 dB
        "noise_slope": rng.uniform(-2.5, -1.5),  # power ~ f**slope: -1 pink, -2 brown
        "gain_db": rng.uniform(-24.0, -16.0),
    }


def speaker_plan(seed, group, index, utterances, min_duration, max_duration):
    """Name, traits, sessions and utterances ``(relpath, session, duration)`` of a speaker."""
    rng = _rng(seed, group, index, 0)
    name = f"id{group}{index + 1:04d}"
    traits = speaker_traits(rng)
    n_sessions = int(rng.integers(2, 5))
    sessions = [session_channel(_rng(seed, group, index, 1, s)) for s in range(n_sessions)]
    assign = rng.permutation(np.arange(utterances) % n_sessions)
    counters = [0] * n_sessions
    utts = []
    for s in assign:
        counters[s] += 1
        rel = f"{name}/sess{s}/{counters[s]:05d}.wav"
        utts.append((rel, int(s), float(rng.uniform(min_duration, max_duration))))
    return {"name": name, "traits": traits, "sessions": sessions, "utts": utts}


# ----------------------------------------------------------------------------- synthesis


def _resonators(freqs, bws):
    """Cascade of unity-DC-gain 2-pole resonators as an ``sos`` array."""
    freqs = np.minimum(freqs, 0.45 * SR)
    r = np.exp(-np.pi * bws / SR)
    c = -2.0 * r * np.cos(2.0 * np.pi * freqs / SR)
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = 1.0 + c + r * r
    sos[:, 3], sos[:, 4], sos[:, 5] = 1.0, c, r * r
    return sos


def _bandpass(centre, width):
    lo = max(centre - width / 2, 100.0)
    hi = min(centre + width / 2, 0.48 * SR)
    return signal.butter(2, [lo, hi], btype="bandpass", fs=SR, output="sos")


def plan_segments(rng, n, rate):
    """``(kind, start, length, param)`` segments filling ``n`` samples."""
    ms = SR / 1000.0
    segs, t = [], int(rng.uniform(20, 100) * ms)
    end = n - int(rng.uniform(20, 100) * ms)
    while t < end:
        for _ in range(rng.integers(1, 4)):  # syllables of a word
            if rng.random() < 0.75:
                kind = rng.choice(["fric", "plos", "nasal"], p=[0.4, 0.4, 0.2])
                dur = {"fric": (60, 150), "plos": (50, 90), "nasal": (50, 100)}[kind]
                param = int(rng.integers(3))
                segs.append((kind, t, int(rng.uniform(*dur) * ms / rate), param))
                t += segs[-1][2]
            length = int(rng.uniform(70, 220) * ms / rate)
            segs.append(("vowel", t, length, int(rng.integers(len(VOWELS)))))
            t += segs[-1][2]
        t += int((rng.uniform(80, 200) if rng.random() < 0.1 else rng.uniform(0, 30)) * ms / rate)
    return [s for s in segs if s[1] < end]


def intonation(rng, n, f0, f0_range):
    """Sample-rate f0 track: declination, pitch accents and a slow wobble."""
    hop = 80
    frames = n // hop + 2
    t = np.arange(frames) * hop / SR
    span = max(t[-1], 1e-3)
    st = rng.uniform(1.0, 4.0) * (0.5 - t / span)
    for centre in rng.uniform(0, span, size=max(1, int(span * 1.5))):
        width = rng.uniform(0.08, 0.25)
        st += f0_range * rng.uniform(0.3, 1.2) * np.exp(-0.5 * ((t - centre) / width) ** 2)
    wobble = np.convolve(rng.standard_normal(frames), np.hanning(25), mode="same")
    st += 0.3 * wobble / (np.abs(wobble).max() + 1e-9)
    return np.interp(np.arange(n), np.arange(frames) * hop, f0 * 2.0 ** (st / 12.0))


def glottal_source(rng, f0_track, traits):
    """Jittered, shimmered pulse train -> glottal flow derivative, plus breath noise."""
    n = len(f0_track)
    phase = np.cumsum(f0_track / SR)
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    idx = idx + np.round(rng.normal(0, traits["jitter"], len(idx)) * SR / f0_track[idx]).astype(int)
    pulses = np.zeros(n)
    amplitude = 1.0 + traits["shimmer"] * rng.standard_normal(len(idx))
    np.add.at(pulses, np.clip(idx, 0, n - 1), amplitude)
    p = np.exp(-2.0 * np.pi * traits["tilt_hz"] / SR)
    flow = signal.lfilter([1.0], [1.0, -2.0 * p, p * p], pulses)
    source = np.diff(flow, prepend=0.0)
    source /= source.std() + 1e-12
    envelope = flow / (np.abs(flow).max() + 1e-12)
    breath = rng.standard_normal(n) * (0.3 + envelope)
    return source + traits["breath"] * 3.0 * np.diff(breath, prepend=0.0)


def _segment_audio(kind, param, src, noise, traits, vowel_sos, fric_sos, burst_sos):
    if kind == "vowel":
        return signal.sosfilt(vowel_sos[param], src), 1.0
    if kind == "nasal":
        scale = traits["formant_scale"]
        sos = _resonators(NASAL * scale, BANDWIDTHS * 2.5 * traits["bandwidth"])
        return signal.sosfilt(sos, src), 0.3
    if kind == "fric":
        return signal.sosfilt(fric_sos[param], noise), FRICATIVES[param][2]
    out = np.zeros(len(src))  # plosive: closure, then a decaying burst
    burst = len(src) // 3
    decay = np.exp(-np.arange(burst) / (0.004 * SR))
    out[-burst:] = signal.sosfilt(burst_sos[param], noise[-burst:]) * decay
    return out, 0.4


def synth_utterance(traits, rng, duration):
    """Dry speech-like waveform (float, unit RMS) of ``duration`` seconds."""
    n = int(round(duration * SR))
    f0 = traits["f0"] * 2.0 ** (rng.normal(0.0, 1.0) / 12.0)
    rate = traits["rate"] * rng.uniform(0.9, 1.1)
    src = glottal_source(rng, intonation(rng, n, f0, traits["f0_range"]), traits)
    noise = rng.standard_normal(n)
    offsets = 1.0 + traits["formant_offsets"] + traits["vowel_offsets"]
    formants = VOWELS * traits["formant_scale"] * offsets
    bws = BANDWIDTHS * traits["bandwidth"]
    vowel_sos = [_resonators(f, bws) for f in formants]
    shift = traits["fricative_shift"]
    fric_sos = [_bandpass(c * shift, w) for c, w, _ in FRICATIVES]
    burst_sos = [_bandpass(c * shift, w) for c, w in BURSTS]
    out = np.zeros(n)
    ramp = int(0.008 * SR)
    fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    for kind, start, length, param in plan_segments(rng, n, rate):
        a, b = max(start - ramp, 0), min(start + length + ramp, n)
        if b - a <= 2 * ramp:
            continue
        seg, amp = _segment_audio(
            kind, param, src[a:b], noise[a:b], traits, vowel_sos, fric_sos, burst_sos
        )
        window = np.ones(b - a)
        window[:ramp] = fade
        window[-ramp:] = fade[::-1]
        gain = amp * 10.0 ** (rng.normal(0.0, 2.0) / 20.0) / (np.sqrt(np.mean(seg**2)) + 1e-12)
        out[a:b] += seg * window * gain
    colour = np.vstack([_peaking(*band) for band in traits["colour"]])
    out = signal.sosfilt(colour, out)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _coloured_noise(rng, n, slope):
    """Noise whose power spectrum goes as ``f ** slope``, unit variance."""
    m = sp_fft.next_fast_len(n, real=True)
    spec = sp_fft.rfft(rng.standard_normal(m))
    f = np.maximum(sp_fft.rfftfreq(m, 1.0 / SR), 20.0)
    noise = sp_fft.irfft(spec * f ** (slope / 2.0), m)[:n]
    return noise / (noise.std() + 1e-12)


def _peaking(freq, gain_db, q):
    """RBJ peaking equaliser as one ``sos`` row."""
    a = 10.0 ** (gain_db / 40.0)
    w = 2.0 * np.pi * freq / SR
    alpha = np.sin(w) / (2.0 * q)
    b = [1 + alpha * a, -2 * np.cos(w), 1 - alpha * a]
    d = [1 + alpha / a, -2 * np.cos(w), 1 - alpha / a]
    return np.r_[b, d] / d[0]


def apply_channel(speech, channel, rng):
    """Reverberation, noise at the session SNR (+-2 dB), band limits, EQ and level."""
    n = len(speech)
    if channel["rt60"] > 0:
        ir_rng = np.random.default_rng(channel["ir_seed"])
        m = int(channel["rt60"] * SR)
        ir = ir_rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)
        ir[0] = 8.0
        speech = signal.fftconvolve(speech, ir)[:n]
        speech /= np.sqrt(np.mean(speech**2)) + 1e-12
    snr = np.clip(channel["snr_db"] + rng.normal(0.0, 2.0), 5.0, 30.0)
    x = speech + _coloured_noise(rng, n, channel["noise_slope"]) * 10.0 ** (-snr / 20.0)
    sos = np.vstack(
        [
            signal.butter(2, channel["highpass"], btype="highpass", fs=SR, output="sos"),
            signal.butter(4, channel["lowpass"], btype="lowpass", fs=SR, output="sos"),
            *[_peaking(*band) for band in channel["eq"]],
        ]
    )
    x = signal.sosfilt(sos, x)
    gain = 10.0 ** ((channel["gain_db"] + rng.normal(0.0, 0.5)) / 20.0)
    x *= gain / (np.sqrt(np.mean(x**2)) + 1e-12)
    peak = np.abs(x).max()
    return x * (0.98 / peak) if peak > 0.98 else x

"""A small synthetic speaker-verification corpus in the VoxCeleb list formats.

``generate_corpus(D)`` writes

- ``D/wav/<spk>/<session>/<utt>.wav``: 16 kHz mono int16 speech-like audio,
- ``D/train_list.txt``: ``spk relpath`` lines (training speakers ``id00001``...),
- ``D/veri_list.txt``: ``label relpath1 relpath2`` lines over the disjoint test speakers
  (``id10001``...), balanced target / non-target, targets across sessions first,
- ``D/corpus.json``: the arguments, written last (a rerun with the same arguments is a
  no-op; an interrupted run is finished by a rerun).

Paths in the lists are relative to ``D/wav``, so ``python -m data_prep.voxceleb
--train-list D/train_list.txt --train-root D/wav --trials D/veri_list.txt --output-dir OUT``
prepares it like VoxCeleb.

Every speaker has stable voice traits (pitch level and range, vocal-tract length,
idiosyncratic formant offsets, bandwidths, spectral tilt, breathiness, jitter, speaking
rate); every utterance has its own content (vowel, nasal, fricative, plosive and pause
segments with intonation); every speaker has 2-4 sessions, each with its own channel
(band limits, equaliser, optional reverberation, level, coloured noise at 5-30 dB SNR).
The audio depends only on the seed, not on ``num_workers``.

``baseline_scores`` scores a trial list with the cosine of utterance-mean log-mel
vectors, a feature-free reference for how hard the corpus is.

Example
-------
>>> import tempfile
>>> d = generate_corpus(tempfile.mkdtemp(), train_speakers=2, test_speakers=2,
...                     utterances=2, min_duration=0.5, max_duration=0.5, num_workers=1)
>>> open(d["train_list"]).readline().split()[0]
'id00001'
"""

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft
from scipy import signal
from tqdm import tqdm

from data_prep.splits import make_trials
from data_prep.voxceleb import prepare_voxceleb
from maskproxy_losses.audio import SAMPLE_RATE
from maskproxy_losses.errors import InputError, run_cli
from maskproxy_losses.files import (
    atomic_write_text,
    check_writable_dir,
    remove_stale_temps,
    temp_path,
)
from maskproxy_losses.trials import read_trials

__all__ = ["generate_corpus", "prepare_builtin", "baseline_scores", "synth_utterance", "main"]

SR = SAMPLE_RATE
MARKER = "corpus.json"
IN_PROGRESS = ".corpus_in_progress.json"
GENERATOR_VERSION = 1

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


def _write_wav(path, audio):
    """Write via a hidden temporary + rename: a killed run leaves no partial wav."""
    tmp = temp_path(path)
    try:
        sf.write(tmp, audio, SR, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _generate_speaker(job):
    """Write a speaker's utterances (only the missing ones when resuming); return the count."""
    wav_root, seed, group, index, utterances, min_d, max_d, resume = job
    plan = speaker_plan(seed, group, index, utterances, min_d, max_d)
    written = 0
    for folder in sorted({os.path.dirname(os.path.join(wav_root, r)) for r, _, _ in plan["utts"]}):
        os.makedirs(folder, exist_ok=True)
        if resume:
            remove_stale_temps(folder)  # temporaries of a killed run
    for k, (rel, session, duration) in enumerate(plan["utts"]):
        path = os.path.join(wav_root, rel)
        if resume and os.path.isfile(path):
            continue
        rng = _rng(seed, group, index, 2, k)
        speech = synth_utterance(plan["traits"], rng, duration)
        _write_wav(path, apply_channel(speech, plan["sessions"][session], rng))
        written += 1
    return written


# ----------------------------------------------------------------------------- corpus


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def generate_corpus(
    output_dir,
    train_speakers=60,
    test_speakers=20,
    utterances=20,
    seed=0,
    num_workers=2,
    min_duration=2.0,
    max_duration=6.0,
    n_trials=4000,
):
    """Write the corpus (see the module docstring); return its paths.

    Returns ``{"wav_root", "train_list", "trials"}``. Test speakers do not depend on
    ``train_speakers``; a rerun with the same arguments after completion does nothing.
    """
    if utterances < 2 or not 1 <= train_speakers <= 9999 or not 2 <= test_speakers <= 9999:
        raise InputError("need utterances >= 2, 1-9999 train and 2-9999 test speakers")
    if not 0.25 <= min_duration <= max_duration:
        raise InputError("need 0.25 <= min_duration <= max_duration (seconds)")
    check_writable_dir(output_dir)
    remove_stale_temps(output_dir)
    args = {
        "version": GENERATOR_VERSION,
        "train_speakers": train_speakers,
        "test_speakers": test_speakers,
        "utterances": utterances,
        "seed": seed,
        "min_duration": min_duration,
        "max_duration": max_duration,
        "n_trials": n_trials,
    }
    paths = {
        "wav_root": os.path.join(output_dir, "wav"),
        "train_list": os.path.join(output_dir, "train_list.txt"),
        "trials": os.path.join(output_dir, "veri_list.txt"),
    }
    marker, progress = os.path.join(output_dir, MARKER), os.path.join(output_dir, IN_PROGRESS)
    if _read_json(marker) == args:
        return paths
    resume = _read_json(progress) == args  # an interrupted run with these arguments
    previous = _read_json(marker) or _read_json(progress)
    if previous is not None and not resume and os.path.isdir(paths["wav_root"]):
        shutil.rmtree(paths["wav_root"])  # our own output, made with other arguments
    os.makedirs(output_dir, exist_ok=True)
    if os.path.exists(marker):
        os.remove(marker)
    atomic_write_text(progress, json.dumps(args))

    groups = [(0, i) for i in range(train_speakers)] + [(1, i) for i in range(test_speakers)]
    jobs = [
        (paths["wav_root"], seed, g, i, utterances, min_duration, max_duration, resume)
        for g, i in groups
    ]
    with tqdm(total=len(jobs), desc="generating speakers", unit="spk", disable=None) as bar:
        if num_workers > 1:
            with multiprocessing.get_context().Pool(num_workers) as pool:
                for _ in pool.imap_unordered(_generate_speaker, jobs):
                    bar.update()
        else:
            for job in jobs:
                _generate_speaker(job)
                bar.update()

    plans = {
        g: [speaker_plan(seed, g, i, utterances, min_duration, max_duration) for i in range(count)]
        for g, count in ((0, train_speakers), (1, test_speakers))
    }
    atomic_write_text(
        paths["train_list"],
        "".join(f"{p['name']} {rel}\n" for p in plans[0] for rel, _, _ in sorted(p["utts"])),
    )
    test = [
        (p["name"], f"{p['name']}/sess{s}", rel)
        for p in plans[1]
        for rel, s, _ in sorted(p["utts"])
    ]
    labels, i, j = make_trials([t[0] for t in test], [t[1] for t in test], n_trials, _rng(seed, 3))
    atomic_write_text(
        paths["trials"],
        "".join(f"{lab} {test[a][2]} {test[b][2]}\n" for lab, a, b in zip(labels, i, j)),
    )
    atomic_write_text(marker, json.dumps(args, indent=2))
    os.remove(progress)
    return paths


# ----------------------------------------------------------------------------- baseline


# Dev utterances held out per training speaker of the built-in corpus (3 x 60 speakers
# give 360 dev trials for the per-epoch validation EER).
BUILTIN_DEV_PER_SPEAKER = 3


def prepare_builtin(data_folder, manifest_folder=None, corpus_seed=0, prep_seed=1986):
    """The built-in corpus and its manifests, as every recipe uses them.

    Generates the default corpus in ``data_folder`` unless a complete corpus is
    already there (whatever its size), then runs ``prepare_voxceleb`` on its lists
    (outputs reused when up to date). Returns ``prepare_voxceleb``'s paths.
    """
    root = os.path.join(data_folder, "wav")
    lists = {
        "train_list": os.path.join(data_folder, "train_list.txt"),
        "trials": os.path.join(data_folder, "veri_list.txt"),
    }
    if _read_json(os.path.join(data_folder, MARKER)) is None:
        generate_corpus(data_folder, seed=corpus_seed)
    return prepare_voxceleb(
        manifest_folder or os.path.join(data_folder, "manifests"),
        train_root=root,
        dev_share=BUILTIN_DEV_PER_SPEAKER,
        seed=prep_seed,
        **lists,
    )


def _read_trial_list(trials, root):
    """``(label, abs1, abs2)`` of a trial file (``maskproxy_losses.trials.read_trials``:
    paths relative to ``root``, default the file's folder) or of a list of triples
    (relative to ``root``, default the working folder)."""
    if isinstance(trials, (str, os.PathLike)):
        rows, problems = read_trials(trials, test_root=root)
        if problems:
            raise InputError(problems)
        return [(label, a, b) for label, _, _, a, b, _ in rows]
    root = root or ""
    return [
        (int(lab), *(os.path.abspath(os.path.join(root, p)) for p in (a, b)))
        for lab, a, b in trials
    ]


@functools.lru_cache(maxsize=2)
def _fbank(n_mels):
    from speechbrain.lobes.features import Fbank

    return Fbank(n_mels=n_mels)


def mean_logmel(path, n_mels=40):
    """Mean over time of the 40 log-mel features (SpeechBrain ``Fbank``) of a file."""
    import torch

    fbank = _fbank(n_mels)
    audio, sr = sf.read(path, dtype="float32")
    if sr != SR:
        raise ValueError(f"{path}: sample rate {sr}, expected {SR}")
    with torch.no_grad():
        feats = fbank(torch.from_numpy(audio).unsqueeze(0))
    return feats[0].mean(dim=0).numpy().astype(np.float64)


def baseline_scores(trials, root=None, n_mels=40, center=True):
    """Cosine of utterance-mean log-mel vectors for each trial -> ``(scores, labels)``.

    ``trials``: a ``label path1 path2`` file or a list of such triples; paths relative
    to ``root`` when given. With ``center`` the mean vector over the trial list's files
    is subtracted first (otherwise all cosines are close to 1).
    """
    rows = _read_trial_list(trials, root)
    files = sorted({p for _, a, b in rows for p in (a, b)})
    feats = np.stack([mean_logmel(p, n_mels) for p in files])
    if center:
        feats -= feats.mean(axis=0)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12
    index = {p: k for k, p in enumerate(files)}
    a = np.array([index[r[1]] for r in rows])
    b = np.array([index[r[2]] for r in rows])
    return np.sum(feats[a] * feats[b], axis=1), np.array([r[0] for r in rows])


def baseline_eer(trials, root=None):
    """EER of ``baseline_scores`` (``maskproxy_losses.scoring.compute_eer``)."""
    from maskproxy_losses.scoring import compute_eer

    return compute_eer(*baseline_scores(trials, root))[0]


# ----------------------------------------------------------------------------- CLI


def _main(argv):
    p = argparse.ArgumentParser(
        prog="python -m data_prep.demo_corpus",
        description="Generate the built-in synthetic corpus (wav/, train_list.txt, "
        "veri_list.txt in VoxCeleb formats).",
        epilog="Exit status 2 on bad input or an unwritable output folder, with one "
        "'error: ...' message (--debug or MASKPROXY_DEBUG=1 for a traceback).",
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--train-speakers", type=int, default=60)
    p.add_argument("--test-speakers", type=int, default=20)
    p.add_argument("--utterances", type=int, default=20, help="per speaker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--min-duration", type=float, default=2.0, help="seconds")
    p.add_argument("--max-duration", type=float, default=6.0, help="seconds")
    p.add_argument("--n-trials", type=int, default=4000)
    p.add_argument(
        "--baseline",
        action="store_true",
        help="print the EER of the mean-log-mel cosine baseline on veri_list.txt",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    paths = generate_corpus(
        a.output_dir,
        a.train_speakers,
        a.test_speakers,
        a.utterances,
        a.seed,
        a.num_workers,
        a.min_duration,
        a.max_duration,
        a.n_trials,
    )
    print("\n".join(f"{key}: {path}" for key, path in paths.items()))
    if a.baseline:
        eer = baseline_eer(paths["trials"], paths["wav_root"])
        print(f"baseline EER (mean log-mel cosine): {100 * eer:.2f}%")
    return 0


def main(argv=None):
    """CLI entry point: the exit status, or ``SystemExit(2)`` with one ``error: ...`` line
    on bad input or environment (``maskproxy_losses.errors.run_cli``)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

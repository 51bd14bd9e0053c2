"""Writing the built-in corpus: wav files, the training list and the trial list.

``generate_corpus(D)`` writes

- ``D/wav/<spk>/<session>/<utt>.wav``: 16 kHz mono int16 speech-like audio
  (:mod:`.signals`),
- ``D/train_list.txt``: ``spk relpath`` lines (training speakers ``id00001``...),
- ``D/veri_list.txt``: ``label relpath1 relpath2`` lines over the disjoint test speakers
  (``id10001``...), balanced target / non-target, targets across sessions first,
- ``D/corpus.json``: the arguments, written last (a rerun with the same arguments is a
  no-op; an interrupted run is finished by a rerun).

The audio depends only on the seed, not on ``num_workers``.

Example
-------
>>> import tempfile
>>> d = generate_corpus(tempfile.mkdtemp(), train_speakers=2, test_speakers=2,
...                     utterances=2, min_duration=0.5, max_duration=0.5, num_workers=1)
>>> open(d["train_list"]).readline().split()[0]
'id00001'
"""

import json
import multiprocessing
import os
import shutil

import soundfile as sf
from tqdm import tqdm

from data_prep.demo_corpus.signals import SR, _rng, apply_channel, speaker_plan, synth_utterance
from data_prep.splits import make_trials
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import (
    atomic_write_text,
    check_writable_dir,
    remove_stale_temps,
    temp_path,
)

__all__ = ["MARKER", "IN_PROGRESS", "GENERATOR_VERSION", "generate_corpus", "read_json"]

MARKER = "corpus.json"
IN_PROGRESS = ".corpus_in_progress.json"
GENERATOR_VERSION = 1


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


def read_json(path):
    """The JSON in ``path``, or None when it is missing or not JSON."""
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
    if read_json(marker) == args:
        return paths
    resume = read_json(progress) == args  # an interrupted run with these arguments
    previous = read_json(marker) or read_json(progress)
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

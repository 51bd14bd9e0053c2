"""VoxCeleb-style lists or directory trees -> SpeechBrain CSV manifests and trial lists.

``prepare_voxceleb`` writes, under ``output_dir``:

- ``train.csv`` / ``dev.csv``: columns ``ID,duration,wav,spk_id,size,mtime_ns``
  (duration in seconds, absolute wav path, the file's size and modification time).
  ``dev.csv`` holds a per-speaker held-out share of the training utterances (closed
  set: its speakers are the training speakers).
- ``dev_trials.txt``: a balanced target / non-target list over ``dev.csv``,
  ``label path1 path2`` per line, paths relative to ``output_dir``.
- ``test.csv`` and ``trials.txt`` (only with ``trials``): one row per distinct file of
  the trial list, and the trial list with paths relative to ``output_dir``.
- ``prep_options.json``: the arguments, input fingerprints and warnings, written last;
  a rerun with the same inputs reuses the outputs after a ``stat`` of every listed file:
  one missing or changed since is named (``train.csv:N: ...``), or with ``skip_bad``
  the preparation runs again, as it does when a file skipped as bad has changed since.
- ``.prep.lock``, ``.readers.lock``, ``.readers/``: a preparation holds the first while
  it checks and writes (another one waits); rewriting manifests that a training run
  holds (the recipe, until it ends) is refused naming that run, before the audio is read
  (:mod:`maskproxy_losses.training.run_lock`).
- ``resampled_16k/`` (only with ``resample=True``): 16 kHz mono copies of the audio that
  is not (:mod:`data_prep.resample`); the manifests name the copies. Without it such
  audio is refused.

Bad input raises ``maskproxy_losses.utils.errors.InputError`` naming each problem as
``file:line: what`` and writes nothing, unless ``skip_bad`` drops the bad entries.
The pieces: ``data_prep.lists`` (parsing), ``data_prep.audio_check`` (headers),
``data_prep.splits`` (dev split, trials), ``data_prep.manifests`` (output text),
``data_prep.transcode`` (ffmpeg, CLI ``convert``).

Example
-------
>>> import tempfile, numpy as np, soundfile as sf
>>> root = tempfile.mkdtemp()
>>> for spk in ("id00001", "id00002"):
...     for i in range(4):
...         os.makedirs(f"{root}/{spk}/s0", exist_ok=True)
...         sf.write(f"{root}/{spk}/s0/{i:05d}.wav", np.zeros(1600), 16000)
>>> out = prepare_voxceleb(os.path.join(root, "out"), train_root=root, dev_share=2)
>>> sorted(out)
['dev_csv', 'dev_trials', 'train_csv']
>>> open(out["train_csv"]).readline().strip()
'ID,duration,wav,spk_id,size,mtime_ns'
>>> open(out["dev_trials"]).readline().split()[1].startswith("../id0000")
True
"""

import json
import logging
import os
import sys

import numpy as np

from data_prep import lists, manifests
from data_prep.audio_check import check_audio
from data_prep.splits import make_trials, split_dev
from maskproxy_losses.data.trials import check_classes
from maskproxy_losses.training.run_lock import check_rewrite, preparing_manifests
from maskproxy_losses.utils.errors import InputError, problem_key, report
from maskproxy_losses.utils.files import (
    atomic_write_text,
    check_not_input,
    check_writable_dir,
    remove_stale_temps,
)

__all__ = ["prepare_voxceleb", "main"]

logger = logging.getLogger(__name__)


def _check_inputs(train_root, test_root, train_list, trials):
    """Refuse missing lists and roots that are not folders, before any reading."""
    problems = []
    for path in (train_list, trials):
        if path and os.path.isdir(path):
            problems.append(f"{path}: is a folder, not a list file")
        elif path and not os.path.isfile(path):
            problems.append(f"{path}: list file not found")
    roots = [("train root", train_root)] + ([("test root", test_root)] if trials else [])
    for what, root in roots:
        if not os.path.isdir(root):
            problems.append(f"{root}: {what} is not a folder")
    if problems:
        raise InputError(problems)


def _check_relative(output_dir, roots):
    """Refuse roots whose path from ``output_dir`` holds whitespace (every trial path
    would), naming the root and what to do."""
    for what, root in roots:
        rel = os.path.relpath(root, output_dir)
        if manifests.has_whitespace(rel):
            raise InputError(
                f"{root}: the path from the output folder {output_dir} to the {what} is "
                f"{rel!r}, with whitespace; trial lists store paths relative to the output "
                "folder and split lines at whitespace. Put the output folder inside "
                f"{manifests.spaced_part(root)}, or reach the data through a path without "
                "whitespace (e.g. a symlink)."
            )


def _drop_spaced(utts, output_dir, problems):
    """Report (and drop) files whose name or sub-folder holds whitespace."""
    kept = []
    for u in utts:
        rel = os.path.relpath(u.path, output_dir)
        if manifests.has_whitespace(rel):
            problems.append(
                f"{u.where}: {u.path} has whitespace in its path relative to the "
                f"output folder ({rel!r}); trial lists cannot hold it: rename it"
            )
        else:
            kept.append(u)
    return kept


def _use_copies(utts, durations, output_dir):
    """Point ``utts`` that are not 16 kHz mono at their 16 kHz copies (written now)."""
    from data_prep.resample import write_16k_copies

    copies = write_16k_copies([u.path for u in utts], output_dir)
    for u in utts:
        if u.path in copies:
            st = os.stat(copies[u.path])  # the manifests record the copy's size and time
            durations[copies[u.path]] = (durations[u.path][0], st.st_size, st.st_mtime_ns)
            u.path = copies[u.path]
    if copies:
        logger.info("wrote 16 kHz mono copies of %d files to %s", len(copies), output_dir)


def _one_class(rows, trials):
    """Raise ``InputError`` when the (non-empty) trial rows have only one label."""
    if rows and len({r[0] for r in rows}) < 2:
        check_classes(rows, trials)


def prepare_voxceleb(
    output_dir,
    train_root,
    test_root=None,
    train_list=None,
    trials=None,
    dev_share=0.05,
    n_dev_trials=10000,
    seed=1234,
    skip_bad=False,
    num_workers=2,
    skip_if_done=True,
    resample=False,
):
    """Write train/dev/test CSVs and trial lists (see the module docstring).

    Arguments
    ---------
    output_dir : str
        Where the outputs go (created when the input is usable).
    train_root : str
        Folder the training list's paths are relative to; scanned as
        ``<spk>/<session>/<utt>.<wav|flac>`` when ``train_list`` is None.
    test_root : str, optional
        Folder the trial list's paths are relative to (default: ``train_root``).
    train_list : str, optional
        VoxCeleb training list, ``spk_id relpath`` per line.
    trials : str, optional
        VoxCeleb trial list, ``label relpath1 relpath2`` per line; needs both labels.
    dev_share : float or int
        Share (float) or count (int) of each speaker's utterances held out as dev;
        at least 2 when any, and each speaker keeps at least 2 for training.
    n_dev_trials : int
        At most this many dev trials, half target, half non-target.
    seed : int
        Seed of the dev split and the dev trials.
    skip_bad : bool
        Drop bad entries (logging the report) instead of raising ``InputError``.
    num_workers : int
        Processes reading audio headers.
    skip_if_done : bool
        Reuse the outputs when ``prep_options.json`` records the same arguments and
        input files (list sizes / mtimes, or the scanned file set).
    resample : bool
        Accept audio at any sample rate and channel count and write 16 kHz mono copies
        of it (``resampled_16k/``) for the manifests; else such audio is a bad entry.

    Returns
    -------
    dict
        Output paths: ``train_csv``, ``dev_csv``, ``dev_trials`` and, with
        ``trials``, ``test_csv`` and ``trials``.
    """
    output_dir = os.path.abspath(output_dir)
    train_root = os.path.abspath(train_root)
    test_root = os.path.abspath(test_root) if test_root else train_root
    outputs = manifests.output_paths(output_dir, trials is not None)
    _check_inputs(train_root, test_root, train_list, trials)
    inputs = [(train_list, "the training list"), (trials, "the trial list")]
    inputs = [(path, what) for path, what in inputs if path]
    for path in [*outputs.values(), os.path.join(output_dir, manifests.OPTIONS_FILE)]:
        check_not_input(path, inputs, "--output-dir")
    check_writable_dir(output_dir)
    with preparing_manifests(output_dir):  # one preparation at a time
        return _prepare(
            output_dir, train_root, test_root, outputs, train_list, trials, dev_share,
            n_dev_trials, seed, skip_bad, num_workers, skip_if_done, resample,
        )  # fmt: skip


def _prepare(
    output_dir, train_root, test_root, outputs, train_list, trials, dev_share, n_dev_trials,
    seed, skip_bad, num_workers, skip_if_done, resample,
):  # fmt: skip
    """:func:`prepare_voxceleb` once its folder is locked (absolute paths)."""
    remove_stale_temps(output_dir)
    problems = []
    if train_list:
        train = lists.read_train_list(train_list, train_root, problems)
    else:
        train = lists.scan_tree(train_root, problems)
    options = {
        "version": manifests.FORMAT_VERSION,
        "train_root": train_root,
        "test_root": test_root,
        "train_list": manifests.fingerprint(train_list) if train_list else None,
        "train_tree": None if train_list else manifests.tree_fingerprint(train),
        "trials": manifests.fingerprint(trials) if trials else None,
        "dev_share": dev_share,
        "n_dev_trials": n_dev_trials,
        "seed": seed,
        "skip_bad": skip_bad,
        "resample": bool(resample),
    }
    done = manifests.read_done(output_dir, options, outputs) if skip_if_done else None
    if done is not None:
        csvs = [p for k, p in outputs.items() if k.endswith("_csv")]
        changed = manifests.check_files(csvs)
        if changed and not skip_bad:
            marker = os.path.join(output_dir, manifests.OPTIONS_FILE)
            hint = f"; prepare again (maskproxy prepare ... --force, or delete {marker})"
            raise InputError([p + hint for p in changed])
        changed += manifests.changed_since(done.get("skipped_files") or {})
        if changed:
            logger.warning("preparing again; %s", report(changed))
        else:
            for warning in done.get("warnings", []):
                logger.warning(warning)
            logger.info("%s is up to date; skipping data preparation", output_dir)
            return outputs
    check_rewrite(output_dir)  # no run trains on what would be rewritten

    _check_relative(
        output_dir, [("train root", train_root)] + ([("test root", test_root)] if trials else [])
    )
    trial_rows, warnings = [], []
    if trials:
        trial_rows = lists.read_trial_list(trials, test_root, problems)
        trial_rows, warnings = lists.duplicate_trials(trial_rows, problems)
        _one_class(trial_rows, trials)
    for warning in warnings:
        logger.warning(warning)
    train = _drop_spaced(lists.drop_duplicates(train, problems), output_dir, problems)
    usable = {
        u.path
        for u in _drop_spaced(
            list({u.path: u for t in trial_rows for u in t[1:]}.values()), output_dir, problems
        )
    }
    trial_rows = [t for t in trial_rows if t[1].path in usable and t[2].path in usable]
    referenced = {u.path for u in train} | {u.path for t in trial_rows for u in t[1:]}
    durations, train, trial_rows = check_audio(train, trial_rows, problems, num_workers, resample)
    skipped_files = manifests.stat_files(sorted(referenced - durations.keys()))
    if resample:
        _use_copies(train + [u for t in trial_rows for u in t[1:]], durations, output_dir)
    test = lists.drop_duplicates(
        list({u.path: u for t in trial_rows for u in t[1:]}.values()), problems
    )
    if len(test) < len({u.path for t in trial_rows for u in t[1:]}):
        kept = {u.path for u in test}
        trial_rows = [t for t in trial_rows if t[1].path in kept and t[2].path in kept]
    problems.sort(key=problem_key)
    if problems and not skip_bad:
        raise InputError(problems)
    if problems:
        logger.warning("skipping bad entries; %s", report(problems))
    if not train:
        raise InputError(f"{train_list or train_root}: no usable training utterances")
    if trials:
        check_classes(trial_rows, trials)

    train, dev = split_dev(train, dev_share, seed)
    labels, i, j = make_trials(
        [u.spk for u in dev], [u.session for u in dev], n_dev_trials, np.random.default_rng(seed)
    )
    dev_trials = [(lab, dev[a].path, dev[b].path) for lab, a, b in zip(labels, i, j)]
    if n_dev_trials and not dev_trials:
        logger.warning(
            "no dev trials: %d dev utterance(s) make no same-speaker pair from different "
            "sessions (a speaker keeps 2 utterances for training, so one with 3 gives at "
            "most 1 to dev); the training recipe needs dev trials: raise --dev-share or "
            "give speakers more utterances",
            len(dev),
        )
    texts = {
        "train_csv": manifests.csv_text(train, durations),
        "dev_csv": manifests.csv_text(dev, durations),
        "dev_trials": manifests.trials_text(dev_trials, output_dir),
    }
    if trials:
        texts["test_csv"] = manifests.csv_text(test, durations)
        rows = [(label, a.path, b.path) for label, a, b in trial_rows]
        texts["trials"] = manifests.trials_text(rows, output_dir)

    os.makedirs(output_dir, exist_ok=True)
    done_marker = os.path.join(output_dir, manifests.OPTIONS_FILE)
    if os.path.exists(done_marker):
        os.remove(done_marker)
    for key, text in texts.items():
        atomic_write_text(outputs[key], text)
    summary = {
        "train": len(train),
        "dev": len(dev),
        "dev_trials": len(dev_trials),
        "test": len(test),
        "trials": len(trial_rows),
        "skipped_problems": len(problems),
    }
    record = {
        "options": options,
        "summary": summary,
        "warnings": warnings,
        "skipped_files": skipped_files,  # re-stated on reuse: a mended file is taken in
    }
    atomic_write_text(done_marker, json.dumps(record, indent=2))
    logger.info("data preparation done: %s", summary)
    return outputs


if __name__ == "__main__":  # the same as `maskproxy prepare ...`
    from maskproxy_losses.cli import main

    sys.exit(main(["prepare", *sys.argv[1:]]))

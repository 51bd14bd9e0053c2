"""VoxCeleb-style lists or directory trees -> SpeechBrain CSV manifests and trial lists.

``prepare_voxceleb`` writes, under ``output_dir``:

- ``train.csv`` / ``dev.csv``: columns ``ID,duration,wav,spk_id`` (duration in seconds,
  absolute wav path). ``dev.csv`` holds a per-speaker held-out share of the training
  utterances (closed set: its speakers are the training speakers).
- ``dev_trials.txt``: a balanced target / non-target list over ``dev.csv``,
  ``label abs_path1 abs_path2`` per line.
- ``test.csv`` and ``trials.txt`` (only with ``trials``): one row per distinct file of
  the trial list, and the trial list with absolute paths.
- ``prep_options.json``: the arguments and input fingerprints, written last; a rerun
  with the same inputs reuses the outputs.

Bad input (wrong field counts, missing / unreadable / empty / non-16 kHz / non-mono
audio, duplicate IDs, trial paths outside the test root, labels other than 0/1) raises
``PrepError`` naming each problem as ``file:line: what`` and writes nothing, unless
``skip_bad`` drops the bad entries (with the same report logged).

Also ``convert_tree`` (CLI ``convert``): any audio tree (VoxCeleb2 m4a) -> 16 kHz mono
wav via ffmpeg.

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
'ID,duration,wav,spk_id'
"""

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
from tqdm import tqdm

__all__ = [
    "PrepError",
    "FfmpegNotFoundError",
    "prepare_voxceleb",
    "convert_tree",
    "make_trials",
    "atomic_write_bytes",
    "atomic_write_text",
    "main",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
AUDIO_EXTS = (".wav", ".flac")
CONVERT_EXTS = (".m4a", ".aac", ".mp4", ".mp3", ".ogg", ".opus", ".flac", ".wav", ".webm")
CSV_FIELDS = ("ID", "duration", "wav", "spk_id")
OPTIONS_FILE = "prep_options.json"
FORMAT_VERSION = 1
MAX_LISTED = 20
_VOX_SPK = re.compile(r"id\d+")
_WHERE = re.compile(r"(.+?):(\d+): ")


class PrepError(ValueError):
    """Bad input; ``problems`` holds every ``file:line: what`` line."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__(format_report(self.problems))


class FfmpegNotFoundError(RuntimeError):
    """ffmpeg is needed by ``convert_tree`` and is not installed."""


def format_report(problems, limit=MAX_LISTED):
    """The first ``limit`` problems, one per line, then a count of the rest."""
    lines = [f"{len(problems)} problem(s) in the input:"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def _problem_key(problem):
    """Sort key: ``(file, line)`` of a ``file:line: what`` report line."""
    match = _WHERE.match(problem)
    return (match[1], int(match[2])) if match else (problem, 0)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same folder + os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------- inputs


class _Utt:
    """One audio reference: absolute path, path relative to its root, speaker, origin."""

    __slots__ = ("path", "rel", "spk", "where")

    def __init__(self, path, rel, spk, where):
        self.path, self.rel, self.spk, self.where = path, rel, spk, where

    @property
    def uid(self):
        return os.path.splitext(self.rel)[0].replace(os.sep, "--")

    @property
    def session(self):
        parts = self.rel.split(os.sep)
        return parts[-2] if len(parts) >= 3 else ""


def _resolve(root, path):
    """``(absolute path, path relative to root)``, or None when outside ``root``."""
    full = os.path.normpath(os.path.join(root, path))
    rel = os.path.relpath(full, root)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        return None
    return full, rel


def _lines(path):
    """``(lineno, fields)`` of each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if fields:
                yield lineno, fields


def read_train_list(list_path, root, problems):
    """Parse ``spk_id relpath`` lines; bad lines go to ``problems``."""
    utts = []
    for lineno, fields in _lines(list_path):
        where = f"{list_path}:{lineno}"
        if len(fields) != 2:
            problems.append(f"{where}: expected 2 fields 'spk_id path', got {len(fields)}")
            continue
        resolved = _resolve(root, fields[1])
        if resolved is None:
            problems.append(f"{where}: {fields[1]} is not under the train root {root}")
            continue
        utts.append(_Utt(*resolved, fields[0], where))
    return utts


def scan_tree(root, problems):
    """Audio files under ``root/<spk>/.../<utt>.<wav|flac>``, speaker = first folder."""
    utts = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(AUDIO_EXTS):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.sep not in rel:
                problems.append(f"{path}: not inside a speaker folder <spk>/")
                continue
            utts.append(_Utt(path, rel, rel.split(os.sep)[0], path))
    return utts


def read_trials(trials_path, root, problems):
    """Parse ``label path1 path2`` lines into ``(label, utt1, utt2)``."""
    trials = []
    for lineno, fields in _lines(trials_path):
        where = f"{trials_path}:{lineno}"
        if len(fields) != 3:
            problems.append(f"{where}: expected 3 fields 'label path1 path2', got {len(fields)}")
            continue
        ok = True
        if fields[0] not in ("0", "1"):
            problems.append(f"{where}: label must be 0 or 1, got {fields[0]!r}")
            ok = False
        pair = []
        for path in fields[1:]:
            resolved = _resolve(root, path)
            if resolved is None:
                problems.append(f"{where}: {path} is not under the test root {root}")
                ok = False
                continue
            spk = resolved[1].split(os.sep)[0]
            pair.append(_Utt(*resolved, spk if _VOX_SPK.fullmatch(spk) else "", where))
        if ok:
            trials.append((int(fields[0]), pair[0], pair[1]))
    return trials


def drop_duplicates(utts, problems):
    """Keep the first utterance of each ID; report the others."""
    first, kept = {}, []
    for utt in utts:
        if utt.uid in first:
            problems.append(f"{utt.where}: duplicate ID {utt.uid} (first at {first[utt.uid]})")
            continue
        first[utt.uid] = utt.where
        kept.append(utt)
    return kept


# ----------------------------------------------------------------------------- audio


def probe(path):
    """``(duration_s, None)`` from the header of ``path``, or ``(None, what is wrong)``."""
    if not os.path.isfile(path):
        return None, f"missing file {path}"
    try:
        info = sf.info(path)
    except Exception as err:  # libsndfile raises several types
        return None, f"unreadable audio {path} ({str(err).strip()})"
    if info.frames <= 0:
        return None, f"empty audio {path}"
    if info.samplerate != SAMPLE_RATE:
        return None, f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE}: {path}"
    if info.channels != 1:
        return None, f"{info.channels} channels, expected mono: {path}"
    return info.frames / info.samplerate, None


def _probe_chunk(paths):
    return [probe(p) for p in paths]


def probe_all(paths, num_workers=2, chunk=256):
    """``probe`` every path, in ``num_workers`` processes, with a progress bar."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    bar = tqdm(total=len(paths), desc="reading audio headers", unit="file", disable=None)
    results = []
    with bar:
        if num_workers > 1 and len(chunks) > 1:
            with multiprocessing.get_context().Pool(num_workers) as pool:
                for part in pool.imap(_probe_chunk, chunks):
                    results += part
                    bar.update(len(part))
        else:
            for c in chunks:
                results += _probe_chunk(c)
                bar.update(len(c))
    return results


def check_audio(train, trials, problems, num_workers=2):
    """Probe each distinct file once; drop bad entries; return ``{path: duration}``."""
    paths = list(dict.fromkeys([u.path for u in train] + [u.path for t in trials for u in t[1:]]))
    durations, errors = {}, {}
    for path, (dur, err) in zip(paths, probe_all(paths, num_workers)):
        if err is None:
            durations[path] = dur
        else:
            errors[path] = err
    reported = set()

    def ok(utt):
        if utt.path not in errors:
            return True
        key = (utt.path, utt.where.rsplit(":", 1)[0])  # once per file and list
        if key not in reported:
            reported.add(key)
            problems.append(f"{utt.where}: {errors[utt.path]}")
        return False

    train = [u for u in train if ok(u)]
    trials = [t for t in trials if all([ok(t[1]), ok(t[2])])]
    return durations, train, trials


# ----------------------------------------------------------------------------- split, trials


def _dev_count(n, dev_share):
    """Dev utterances for a speaker with ``n``: at least 2 when any, keeping 2 for training."""
    if isinstance(dev_share, int) and not isinstance(dev_share, bool):
        k = dev_share
    else:
        k = math.ceil(float(dev_share) * n)
    if k > 0:
        k = max(k, 2)
    return max(0, min(k, n - 2))


def split_dev(utts, dev_share, seed):
    """Per speaker, hold out ``_dev_count`` random utterances -> ``(train, dev)``."""
    rng = np.random.default_rng(seed)
    by_spk = {}
    for utt in utts:
        by_spk.setdefault(utt.spk, []).append(utt)
    train, dev = [], []
    for spk in sorted(by_spk):
        items = sorted(by_spk[spk], key=lambda u: u.rel)
        if len(items) < 2:
            logger.warning("speaker %s has %d utterance(s); kept for training only", spk, len(items))
        held = set(rng.permutation(len(items))[: _dev_count(len(items), dev_share)].tolist())
        for i, utt in enumerate(items):
            (dev if i in held else train).append(utt)
    return train, dev


def make_trials(speakers, sessions, n_trials, rng):
    """Balanced trials over utterances ``0..N-1`` -> ``(labels, idx1, idx2)`` arrays.

    Target pairs from different sessions come first; as many non-target pairs
    (distinct speakers) as target pairs; at most ``n_trials`` in all, shuffled.

    >>> lab, a, b = make_trials(["a", "a", "b", "b"], ["s", "t", "s", "t"], 4, np.random.default_rng(0))
    >>> sorted(lab.tolist())
    [0, 0, 1, 1]
    """
    spk_codes = np.unique(np.asarray(speakers), return_inverse=True)[1]
    ses_codes = np.unique(np.asarray(sessions), return_inverse=True)[1]
    n_half = n_trials // 2
    t1, t2 = _target_pairs(spk_codes, ses_codes, n_half, rng)
    n1, n2 = _nontarget_pairs(spk_codes, len(t1), rng)
    t1, t2 = t1[: len(n1)], t2[: len(n1)]
    labels = np.r_[np.ones(len(t1), int), np.zeros(len(n1), int)]
    order = rng.permutation(len(labels))
    return labels[order], np.r_[t1, n1][order], np.r_[t2, n2][order]


def _target_pairs(spk, ses, n, rng):
    firsts, seconds = [], []
    for code in np.unique(spk):
        idx = np.flatnonzero(spk == code)
        i, j = np.triu_indices(len(idx), 1)
        firsts.append(idx[i])
        seconds.append(idx[j])
    if not firsts:
        return np.zeros(0, int), np.zeros(0, int)
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    priority = rng.random(len(a)) + (ses[a] == ses[b])  # cross-session first
    keep = np.argsort(priority, kind="stable")[:n]
    return a[keep], b[keep]


def _nontarget_pairs(spk, n, rng, rounds=20):
    total = len(spk)
    found = np.zeros(0, np.int64)
    for _ in range(rounds):
        if len(found) >= n or len(np.unique(spk)) < 2:
            break
        a, b = rng.integers(total, size=(2, 4 * n + 16))
        a, b = np.minimum(a, b), np.maximum(a, b)
        keys = (a * total + b)[spk[a] != spk[b]]
        keys = np.concatenate([found, keys])
        _, first = np.unique(keys, return_index=True)
        found = keys[np.sort(first)]
    found = found[:n]
    return found // total, found % total


# ----------------------------------------------------------------------------- outputs


def _csv_text(utts, durations):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for u in utts:
        writer.writerow([u.uid, f"{durations[u.path]:.6f}", u.path, u.spk])
    return buf.getvalue()


def _trials_text(rows):
    return "".join(f"{label} {a} {b}\n" for label, a, b in rows)


def _outputs(output_dir, with_test):
    names = {"train_csv": "train.csv", "dev_csv": "dev.csv", "dev_trials": "dev_trials.txt"}
    if with_test:
        names.update(test_csv="test.csv", trials="trials.txt")
    return {key: os.path.join(output_dir, name) for key, name in names.items()}


def _fingerprint(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _tree_fingerprint(utts):
    digest = hashlib.sha1("\n".join(u.rel for u in utts).encode()).hexdigest()
    return {"files": len(utts), "sha1": digest}


def _is_done(output_dir, options, outputs):
    path = os.path.join(output_dir, OPTIONS_FILE)
    if not all(os.path.isfile(p) for p in list(outputs.values()) + [path]):
        return False
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f).get("options") == options
        except json.JSONDecodeError:
            return False


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
        VoxCeleb trial list, ``label relpath1 relpath2`` per line.
    dev_share : float or int
        Share (float) or count (int) of each speaker's utterances held out as dev;
        at least 2 when any, and each speaker keeps at least 2 for training.
    n_dev_trials : int
        At most this many dev trials, half target, half non-target.
    seed : int
        Seed of the dev split and the dev trials.
    skip_bad : bool
        Drop bad entries (logging the report) instead of raising ``PrepError``.
    num_workers : int
        Processes reading audio headers.
    skip_if_done : bool
        Reuse the outputs when ``prep_options.json`` records the same arguments and
        input files (list sizes / mtimes, or the scanned file set).

    Returns
    -------
    dict
        Output paths: ``train_csv``, ``dev_csv``, ``dev_trials`` and, with
        ``trials``, ``test_csv`` and ``trials``.
    """
    output_dir = os.path.abspath(output_dir)
    train_root = os.path.abspath(train_root)
    test_root = os.path.abspath(test_root) if test_root else train_root
    outputs = _outputs(output_dir, trials is not None)
    missing = [f"{p}: list file not found" for p in (train_list, trials) if p and not os.path.isfile(p)]
    if missing:
        raise PrepError(missing)
    problems = []
    train = read_train_list(train_list, train_root, problems) if train_list else None
    if train is None:
        if not os.path.isdir(train_root):
            raise PrepError([f"{train_root}: train root is not a folder"])
        train = scan_tree(train_root, problems)
    options = {
        "version": FORMAT_VERSION,
        "train_root": train_root,
        "test_root": test_root,
        "train_list": _fingerprint(train_list) if train_list else None,
        "train_tree": None if train_list else _tree_fingerprint(train),
        "trials": _fingerprint(trials) if trials else None,
        "dev_share": dev_share,
        "n_dev_trials": n_dev_trials,
        "seed": seed,
        "skip_bad": skip_bad,
    }
    if skip_if_done and _is_done(output_dir, options, outputs):
        logger.info("%s is up to date; skipping data preparation", output_dir)
        return outputs

    trial_rows = read_trials(trials, test_root, problems) if trials else []
    train = drop_duplicates(train, problems)
    durations, train, trial_rows = check_audio(train, trial_rows, problems, num_workers)
    test = drop_duplicates(list({u.path: u for t in trial_rows for u in t[1:]}.values()), problems)
    if len(test) < len({u.path for t in trial_rows for u in t[1:]}):
        kept = {u.path for u in test}
        trial_rows = [t for t in trial_rows if t[1].path in kept and t[2].path in kept]
    problems.sort(key=_problem_key)
    if problems and not skip_bad:
        raise PrepError(problems)
    if problems:
        logger.warning("skipping bad entries; %s", format_report(problems))
    if not train:
        raise PrepError([f"{train_list or train_root}: no usable training utterances"])

    train, dev = split_dev(train, dev_share, seed)
    labels, i, j = make_trials(
        [u.spk for u in dev], [u.session for u in dev], n_dev_trials, np.random.default_rng(seed)
    )
    dev_trials = [(lab, dev[a].path, dev[b].path) for lab, a, b in zip(labels, i, j)]

    os.makedirs(output_dir, exist_ok=True)
    done_marker = os.path.join(output_dir, OPTIONS_FILE)
    if os.path.exists(done_marker):
        os.remove(done_marker)
    atomic_write_text(outputs["train_csv"], _csv_text(train, durations))
    atomic_write_text(outputs["dev_csv"], _csv_text(dev, durations))
    atomic_write_text(outputs["dev_trials"], _trials_text(dev_trials))
    if trials:
        atomic_write_text(outputs["test_csv"], _csv_text(test, durations))
        rows = [(label, a.path, b.path) for label, a, b in trial_rows]
        atomic_write_text(outputs["trials"], _trials_text(rows))
    summary = {"train": len(train), "dev": len(dev), "dev_trials": len(dev_trials),
               "test": len(test), "trials": len(trial_rows), "skipped_problems": len(problems)}
    atomic_write_text(done_marker, json.dumps({"options": options, "summary": summary}, indent=2))
    logger.info("data preparation done: %s", summary)
    return outputs


# ----------------------------------------------------------------------------- convert

FFMPEG_HINT = (
    "ffmpeg was not found on PATH; it is needed to convert m4a/aac audio. Install it, e.g. "
    "`sudo apt-get install ffmpeg` (Debian/Ubuntu), `conda install -c conda-forge ffmpeg` "
    "or `brew install ffmpeg` (macOS), or pass --ffmpeg /path/to/ffmpeg."
)


def _convert_one(ffmpeg, src, dst):
    """Convert one file; return None or an error message."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    part = dst + ".part"
    cmd = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", src,
           "-ac", "1", "-ar", str(SAMPLE_RATE), "-acodec", "pcm_s16le", "-f", "wav", part]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(part):
        if os.path.exists(part):
            os.remove(part)
        return f"{src}: ffmpeg exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    os.replace(part, dst)
    return None


def convert_tree(src_dir, dst_dir, num_workers=2, ffmpeg=None):
    """Convert every audio file under ``src_dir`` to 16 kHz mono wav under ``dst_dir``.

    Same relative paths with a ``.wav`` suffix; finished outputs are skipped, so an
    interrupted run resumes. Returns ``{"converted", "skipped", "failed": [messages]}``.
    Raises ``FfmpegNotFoundError`` when ffmpeg is not installed.
    """
    exe = shutil.which(ffmpeg or "ffmpeg")
    if exe is None:
        raise FfmpegNotFoundError(FFMPEG_HINT)
    jobs, skipped = [], 0
    for folder, dirs, files in os.walk(src_dir, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if name.startswith(".") or not name.lower().endswith(CONVERT_EXTS):
                continue
            src = os.path.join(folder, name)
            rel = os.path.splitext(os.path.relpath(src, src_dir))[0] + ".wav"
            dst = os.path.join(dst_dir, rel)
            if os.path.isfile(dst):
                skipped += 1
            else:
                jobs.append((src, dst))
    failed = []
    with ThreadPoolExecutor(max(1, num_workers)) as pool, tqdm(
        total=len(jobs), desc="converting", unit="file", disable=None
    ) as bar:
        for err in pool.map(lambda job: _convert_one(exe, *job), jobs):
            if err:
                failed.append(err)
            bar.update()
    return {"converted": len(jobs) - len(failed), "skipped": skipped, "failed": failed}


# ----------------------------------------------------------------------------- CLI


def _share(text):
    """``--dev-share``: an integer count or a float share."""
    return int(text) if text.isdigit() else float(text)


def _prepare_parser():
    p = argparse.ArgumentParser(
        prog="python -m data_prep.voxceleb",
        description="Write SpeechBrain CSVs (ID,duration,wav,spk_id) and trial lists from "
        "VoxCeleb lists or a <spk>/<session>/<utt>.wav tree: train.csv, dev.csv, "
        "dev_trials.txt and, with --trials, test.csv and trials.txt.",
        epilog="Convert VoxCeleb2 m4a first: python -m data_prep.voxceleb convert SRC_DIR "
        "DST_DIR [--num-workers N] (needs ffmpeg). Exit status 2 on bad input.",
    )
    p.add_argument("--train-root", required=True, help="folder the training paths are relative to")
    p.add_argument("--train-list", help="'spk_id relpath' lines; without it --train-root is scanned")
    p.add_argument("--trials", help="'label relpath1 relpath2' lines (e.g. veri_test2.txt)")
    p.add_argument("--test-root", help="folder the trial paths are relative to (default: --train-root)")
    p.add_argument("--output-dir", required=True, help="where the CSVs and lists are written")
    p.add_argument("--dev-share", type=_share, default=0.05,
                   help="share (0.05) or per-speaker count (3) of utterances held out as dev")
    p.add_argument("--n-dev-trials", type=int, default=10000, help="balanced dev trials (default 10000)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the dev split and dev trials")
    p.add_argument("--skip-bad", action="store_true", help="drop bad entries instead of failing")
    p.add_argument("--num-workers", type=int, default=2, help="processes reading audio headers")
    p.add_argument("--force", action="store_true", help="redo even if the outputs are up to date")
    return p


def _convert_parser():
    p = argparse.ArgumentParser(
        prog="python -m data_prep.voxceleb convert",
        description="Convert an audio tree (e.g. VoxCeleb2 m4a) to 16 kHz mono 16-bit wav with "
        "ffmpeg, keeping relative paths. Resumable: finished outputs are skipped.",
    )
    p.add_argument("src_dir")
    p.add_argument("dst_dir")
    p.add_argument("--num-workers", type=int, default=2, help="parallel ffmpeg processes")
    p.add_argument("--ffmpeg", help="ffmpeg executable (default: ffmpeg on PATH)")
    return p


def main(argv=None):
    """CLI entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        if argv[:1] == ["convert"]:
            a = _convert_parser().parse_args(argv[1:])
            result = convert_tree(a.src_dir, a.dst_dir, a.num_workers, a.ffmpeg)
            print(f"converted {result['converted']}, skipped {result['skipped']} already done, "
                  f"failed {len(result['failed'])}")
            for msg in result["failed"][:MAX_LISTED]:
                print(f"  {msg}", file=sys.stderr)
            return 1 if result["failed"] else 0
        a = _prepare_parser().parse_args(argv)
        out = prepare_voxceleb(
            a.output_dir, a.train_root, a.test_root, a.train_list, a.trials, a.dev_share,
            a.n_dev_trials, a.seed, a.skip_bad, a.num_workers, skip_if_done=not a.force,
        )
        print("\n".join(f"{key}: {path}" for key, path in out.items()))
        return 0
    except (PrepError, FfmpegNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

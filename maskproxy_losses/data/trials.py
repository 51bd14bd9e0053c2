"""Trial lists: one reader for ``label path1 path2`` lines, and trial indexing.

Every command that reads a trial list (data preparation, both recipes, calibration)
uses :func:`read_trials`, which reports each bad line as ``file:line: what``.
"""

import csv
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import list_fields, utf8_named

__all__ = [
    "Trial",
    "read_trials",
    "read_manifest_wavs",
    "read_speaker_wavs",
    "usable_speaker_wavs",
    "usable_trials",
    "read_prepared_trials",
    "index_trials",
    "check_classes",
]


class Trial(NamedTuple):
    """One line of a trial list: ``label`` (1 target, 0 non-target), the two paths as
    written (``enrol``, ``test``), the files they name (``enrol_path``, ``test_path``,
    absolute) and ``where`` (``file:line``)."""

    label: int
    enrol: str
    test: str
    enrol_path: str
    test_path: str
    where: str


def read_trials(trials_file, test_root=None, id_to_wav=None):
    r"""Parse ``label path1 path2`` lines.

    Each path is a ``test_csv`` ID (when ``id_to_wav`` is given), an absolute path, or a
    path relative to ``test_root`` (default: the trial file's folder). Returns
    ``(trials, problems)``: trials are :class:`Trial` records and each problem names
    ``file:line`` and what is wrong (a line that is not UTF-8 is one; with ``id_to_wav``,
    a name that is neither one of its IDs nor a file). Audio is not opened here.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> _ = open(path, "w").write("1 a.wav b.wav\n2 a.wav c.wav\n0 a.wav\n")
    >>> trials, problems = read_trials(path, test_root="/data")
    >>> trials[0].label, trials[0].enrol, trials[0].test_path
    (1, 'a.wav', '/data/b.wav')
    >>> for p in problems:
    ...     print(p.split(":", 1)[1])
    2: label must be 0 or 1, got '2'
    3: expected 3 fields 'label path1 path2', got 2
    """
    root = Path(test_root) if test_root else Path(trials_file).parent
    id_to_wav = id_to_wav or {}
    trials, problems = [], []
    known = {}  # token -> (token, path): one string per distinct file, however many trials
    is_file = {}  # with id_to_wav, a token that is no ID is stat-ed once
    for where, fields in list_fields(trials_file, problems):
        if len(fields) != 3:
            problems.append(f"{where}: expected 3 fields 'label path1 path2', got {len(fields)}")
            continue
        if fields[0] not in ("0", "1"):
            problems.append(f"{where}: label must be 0 or 1, got {fields[0]!r}")
            continue
        (e, e_path), (t, t_path) = (
            known.get(tok)
            or known.setdefault(
                tok, (tok, os.path.abspath(id_to_wav.get(tok) or os.path.join(root, tok)))
            )
            for tok in fields[1:]
        )
        unknown = [
            tok for tok, path in ((e, e_path), (t, t_path))
            if id_to_wav and tok not in id_to_wav
            and not is_file.setdefault(tok, os.path.isfile(path))
        ]  # fmt: skip
        if unknown:
            source = getattr(id_to_wav, "source", "the test_csv")
            problems.append(f"{where}: {unknown[0]} is not an ID in {source} (nor a file)")
            continue
        trials.append(Trial(int(fields[0]), e, t, e_path, t_path, where))
    return trials, problems


def index_trials(pairs):
    """Map ``(enrol_key, test_key)`` pairs (any iterable, read once) to ``(keys, enrol_idx,
    test_idx)``.

    ``keys`` lists each distinct key once, in order of first appearance; the index
    arrays point into it (and into an embedding matrix built in that order).

    >>> keys, e, t = index_trials([("a", "b"), ("b", "c"), ("a", "c")])
    >>> keys, e.tolist(), t.tolist()
    (['a', 'b', 'c'], [0, 1, 0], [1, 2, 2])
    """
    pos = {}
    flat = np.fromiter(
        (pos.setdefault(k, len(pos)) for pair in pairs for k in pair), dtype=np.int64
    )
    if flat.size % 2:
        raise ValueError("each trial must be a pair (enrol, test)")
    return list(pos), flat[0::2].copy(), flat[1::2].copy()


def check_classes(trials, source):
    """Raise ``InputError`` unless ``trials`` (tuples whose first item is the label) hold
    both target and non-target trials.

    >>> check_classes([(1, "a", "b"), (0, "a", "c")], "t.txt")
    >>> try:
    ...     check_classes([(1, "a", "b")], "t.txt")
    ... except InputError as err:
    ...     print(err)  # doctest: +NORMALIZE_WHITESPACE
    t.txt: all 1 trials have label 1; EER and minDCF need both target (1)
    and non-target (0) trials
    """
    if not trials:
        raise InputError(f"{source}: no trials to score (empty list, or every line was bad)")
    labels = {t[0] for t in trials}  # Trial records or (label, ...) rows
    if len(labels) < 2:
        raise InputError(
            f"{source}: all {len(trials)} trials have label {labels.pop()}; "
            "EER and minDCF need both target (1) and non-target (0) trials"
        )


class _IdWavs(dict):
    """``{ID: wav path}`` that knows its manifest (``source``)."""

    def __init__(self, source):
        super().__init__()
        self.source = source


def read_manifest_wavs(path):
    """``{ID: wav path}`` of a SpeechBrain manifest (columns ``ID``, ``wav``, ...), so that
    trial lists may name utterances by ID; its ``source`` is ``path``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: manifest not found")
    with utf8_named(path), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"ID", "wav"} <= set(reader.fieldnames or []):
            raise InputError(f"{path}:1: expected columns ID and wav")
        out = _IdWavs(path)
        for lineno, row in enumerate(reader, 2):
            if None in row.values() or None in row:
                raise InputError(f"{path}:{lineno}: expected {len(reader.fieldnames)} fields")
            out[row["ID"]] = row["wav"]
        return out


def read_prepared_trials(trials_path, csv_path):
    """The trials of a list that data preparation wrote, checked before training starts:
    well formed, both classes present, every file in the manifest ``csv_path``."""
    trials, problems = read_trials(trials_path)
    if problems:
        raise InputError(problems)
    check_classes(trials, trials_path)
    known = {os.path.abspath(w) for w in read_manifest_wavs(csv_path).values()}
    missing = [
        f"{t.where}: {p} is not in {csv_path}"
        for t in trials
        for p in (t.enrol_path, t.test_path)
        if p not in known
    ]
    if missing:
        raise InputError(missing)
    return trials


def read_speaker_wavs(csv_path, per_speaker=0, what="cohort_csv"):
    """``[(wav, spk_id, where)]`` of a manifest with ``wav`` and ``spk_id`` columns (a
    train.csv for a score-normalisation cohort, a test.csv for the embedding map); at
    most ``per_speaker`` per speaker when given. ``what`` names the option in errors."""
    if not os.path.isfile(csv_path):
        raise InputError(f"{csv_path}: {what} not found")
    out, count = [], {}
    with utf8_named(csv_path), open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"wav", "spk_id"} <= set(reader.fieldnames or []):
            raise InputError(f"{csv_path}:1: expected columns wav and spk_id")
        for lineno, row in enumerate(reader, 2):
            if None in row.values() or None in row:
                raise InputError(f"{csv_path}:{lineno}: expected {len(reader.fieldnames)} fields")
            spk = row["spk_id"]
            if per_speaker and count.get(spk, 0) >= per_speaker:
                continue
            count[spk] = count.get(spk, 0) + 1
            out.append((os.path.abspath(row["wav"]), spk, f"{csv_path}:{lineno}"))
    if not out:
        raise InputError(f"{csv_path}: no utterances in {what}")
    return out


def usable_trials(trials_file, test_root=None, id_to_wav=None, skip_bad=False, convert=True):
    """``(trials, samples by path, problems)``: the :func:`read_trials` trials whose two
    files are usable audio (each probed once; any sample rate and channel count with
    ``convert``, read resampled and mixed down), with both classes left. Bad lines and
    files stop with every problem named, or are dropped and returned as problems with
    ``skip_bad``."""
    from maskproxy_losses.data.audio import probe_entries

    trials, problems = read_trials(trials_file, test_root, id_to_wav)
    lengths, audio_problems, bad = probe_entries(
        ((t.where, (t.enrol_path, t.test_path)) for t in trials), convert=convert
    )
    problems += audio_problems
    if problems and not skip_bad:
        raise InputError(problems)
    trials = [t for t in trials if t.where not in bad]
    check_classes(trials, trials_file)
    return trials, lengths, problems


def usable_speaker_wavs(csv_path, per_speaker=0, skip_bad=False, what="cohort_csv", convert=True):
    """``(rows, samples by path, problems)``: the :func:`read_speaker_wavs` rows whose audio
    is usable (probed once each; any rate and channel count with ``convert``). Bad files
    stop with every problem named, or are dropped and returned as problems with
    ``skip_bad``."""
    from maskproxy_losses.data.audio import probe_entries

    rows = read_speaker_wavs(csv_path, per_speaker, what)
    lengths, problems, bad = probe_entries([(w, [p]) for p, _, w in rows], convert=convert)
    if problems and not skip_bad:
        raise InputError(problems)
    rows = [r for r in rows if r[2] not in bad]
    if not rows:
        raise InputError(f"{csv_path}: no usable utterances in {what}")
    return rows, lengths, problems

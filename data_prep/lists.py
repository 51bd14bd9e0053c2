"""Training lists, audio trees and trial lists -> utterance records.

Every bad line goes to a ``problems`` list as ``file:line: what``; nothing is raised
here. Paths are absolute and normalised, so they compare equal as strings.

Example
-------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> _ = open(os.path.join(d, "train.txt"), "w").write("id1 id1/s/1.wav\\nid2 ../x.wav\\n")
>>> problems = []
>>> [u.uid for u in read_train_list(os.path.join(d, "train.txt"), "/data", problems)]
['id1--s--1']
>>> problems[0].split(":", 2)[1:]
['2', ' ../x.wav is not under the train root /data']
"""

import logging
import os
import re

from data_prep.tree_walk import walk_audio
from maskproxy_losses.data.trials import read_trials
from maskproxy_losses.utils.files import list_fields

__all__ = [
    "AUDIO_EXTS",
    "Utt",
    "read_train_list",
    "scan_tree",
    "read_trial_list",
    "drop_duplicates",
    "duplicate_trials",
]


logger = logging.getLogger(__name__)

AUDIO_EXTS = (".wav", ".flac")
_VOX_SPK = re.compile(r"id\d+")


class Utt:
    """One audio reference: absolute path, path relative to its root, speaker, origin."""

    __slots__ = ("path", "rel", "spk", "where")

    def __init__(self, path, rel, spk, where):
        self.path, self.rel, self.spk, self.where = path, rel, spk, where

    @property
    def uid(self):
        """The relative path without extension, separators as ``--``."""
        return os.path.splitext(self.rel)[0].replace(os.sep, "--")

    @property
    def session(self):
        """The folder holding the file, when below the speaker folder; else empty."""
        parts = self.rel.split(os.sep)
        return parts[-2] if len(parts) >= 3 else ""


def _under(root, full):
    """``(full, path relative to root)`` for a normalised absolute path, or None."""
    rel = os.path.relpath(full, root)
    if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
        return None
    return full, rel


def read_train_list(list_path, root, problems):
    """Parse ``spk_id relpath`` lines into ``Utt`` records."""
    utts = []
    for where, fields in list_fields(list_path, problems):
        if len(fields) != 2:
            problems.append(f"{where}: expected 2 fields 'spk_id path', got {len(fields)}")
            continue
        resolved = _under(root, os.path.normpath(os.path.join(root, fields[1])))
        if resolved is None:
            problems.append(f"{where}: {fields[1]} is not under the train root {root}")
            continue
        utts.append(Utt(*resolved, fields[0], where))
    return utts


def scan_tree(root, problems):
    """Audio files under ``root/<spk>/.../<utt>.<wav|flac>``; speaker = first folder.
    Symbolic links are followed only inside the speaker's own folder, and loops are walked
    once (:func:`data_prep.tree_walk.walk_audio`; its notes are logged)."""
    utts, warnings = [], []
    for path, rel in walk_audio(root, AUDIO_EXTS, problems, warnings):
        if os.sep not in rel:
            problems.append(f"{path}: not inside a speaker folder <spk>/")
            continue
        utts.append(Utt(path, rel, rel.split(os.sep)[0], path))
    for warning in warnings:
        logger.warning(warning)
    return utts


def read_trial_list(trials_path, root, problems):
    """Parse ``label path1 path2`` lines (``maskproxy_losses.data.trials.read_trials``) into
    ``(label, Utt, Utt)``; paths must lie under ``root``. The speaker is the first path
    component when it looks like ``idNNNNN``, else empty."""
    parsed, line_problems = read_trials(trials_path, test_root=root)
    problems += line_problems
    rows = []
    for label, tok1, tok2, abs1, abs2, where in parsed:
        pair = []
        for tok, full in ((tok1, abs1), (tok2, abs2)):
            resolved = _under(root, full)
            if resolved is None:
                problems.append(f"{where}: {tok} is not under the test root {root}")
                continue
            spk = resolved[1].split(os.sep)[0]
            pair.append(Utt(*resolved, spk if _VOX_SPK.fullmatch(spk) else "", where))
        if len(pair) == 2:
            rows.append((label, pair[0], pair[1]))
    return rows


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


def duplicate_trials(rows, problems):
    """Drop repeats of an unordered pair; return a warning per repeat.

    A repeat with the same label is a warning (``file:line: duplicate trial ...``); one
    with the other label contradicts the first and goes to ``problems``.
    """
    first, kept, warnings = {}, [], []
    for row in rows:
        label, a, b = row
        key = frozenset((a.path, b.path))
        if key not in first:
            first[key] = row
            kept.append(row)
            continue
        prev = first[key]
        pair = f"{a.rel} / {b.rel}"
        if prev[0] == label:
            warnings.append(
                f"{a.where}: duplicate trial {pair} (first at {prev[1].where}); kept once"
            )
        else:
            problems.append(
                f"{a.where}: trial {pair} has label {label} but label {prev[0]} at {prev[1].where}"
            )
    return kept, warnings

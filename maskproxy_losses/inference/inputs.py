"""The audio a user names: wav lists, folder scans, ``speaker_id wav`` enrolment lists and
Kaldi ``wav.scp`` files (``key wav``).

Each reader returns its entries with where they came from (``list:line``), so that every
later problem (a missing file, a short one) names the user's line.

Example
-------
>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> _ = open(os.path.join(d, "list.txt"), "w").write("# two files\\na.wav\\n\\nsub/b.wav\\n")
>>> entries = read_wav_list(os.path.join(d, "list.txt"))
>>> [(given, os.path.basename(where)) for given, _, where in entries]
[('a.wav', 'list.txt:2'), ('sub/b.wav', 'list.txt:4')]
"""

import os

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import text_lines

__all__ = [
    "AUDIO_SUFFIXES",
    "read_wav_list",
    "scan_dir",
    "read_speaker_list",
    "drop_repeated_enrolments",
    "read_wav_scp",
]

AUDIO_SUFFIXES = (".wav", ".flac")


def _read_lines(path, what):
    """``(line number, stripped text)`` of the non-blank, non-``#`` lines of ``path``
    (UTF-8; a BOM is dropped; every line that is not UTF-8 is reported)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")
    lines, problems = [], []
    for i, text, problem in text_lines(path):
        if problem:
            problems.append(problem)
        elif text.strip() and not text.strip().startswith("#"):
            lines.append((i, text.strip()))
    if problems:
        raise InputError(problems)
    return lines


def read_wav_list(list_file):
    """``[(path as given, path to open, "list:line")]``: one path per line, relative to
    the list's folder; blank lines and ``#`` comments skipped."""
    base = os.path.dirname(str(list_file))
    out = [
        (t, os.path.join(base, t), f"{list_file}:{i}")
        for i, t in _read_lines(list_file, "wav list")
    ]
    if not out:
        raise InputError(f"{list_file}: the wav list names no files")
    return out


def scan_dir(folder):
    """``[(path, path, folder)]`` of every .wav / .flac under ``folder`` (recursive, sorted,
    hidden files skipped)."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: --dir is not a directory")
    found = sorted(
        os.path.join(root, name)
        for root, dirs, names in os.walk(folder)
        for name in names
        if name.lower().endswith(AUDIO_SUFFIXES) and not name.startswith(".")
    )
    if not found:
        raise InputError(f"{folder}: no .wav or .flac files under this directory")
    return [(p, p, str(folder)) for p in found]


def read_speaker_list(path):
    """``[(speaker_id, path as given, path to open, "file:line")]`` of ``speaker_id wav``
    lines (wav relative to the file's folder); malformed lines raise one ``InputError``."""
    base = os.path.dirname(str(path))
    rows, problems = [], []
    for i, text in _read_lines(path, "speaker list"):
        fields = text.split(None, 1)
        if len(fields) != 2:
            problems.append(f"{path}:{i}: expected 'speaker_id wav_path', got {text!r}")
            continue
        rows.append((fields[0], fields[1], os.path.join(base, fields[1]), f"{path}:{i}"))
    if problems:
        raise InputError(problems)
    if not rows:
        raise InputError(f"{path}: the speaker list names no utterances")
    return rows


def drop_repeated_enrolments(rows):
    """``(rows, warnings)``: :func:`read_speaker_list` rows with a repeated ``speaker
    file`` line kept once (it would count twice in the speaker's mean), and a warning for
    each file enrolled under two speakers (kept for both: the list is ambiguous).

    >>> rows = [("a", "x.wav", "x.wav", "l:1"), ("a", "x.wav", "x.wav", "l:2"),
    ...         ("b", "x.wav", "x.wav", "l:3")]
    >>> kept, warnings = drop_repeated_enrolments(rows)
    >>> [r[3] for r in kept], warnings
    (['l:1', 'l:3'], ['l:2: repeats l:1; kept once', 'l:3: x.wav is also enrolled for a at l:1'])
    """
    first, owner, kept, warnings = {}, {}, [], []
    for row in rows:
        spk, _, path, where = row
        key = os.path.normpath(path)
        if (spk, key) in first:
            warnings.append(f"{where}: repeats {first[spk, key]}; kept once")
            continue
        first[spk, key] = where
        if key in owner and owner[key][0] != spk:
            warnings.append(
                f"{where}: {row[1]} is also enrolled for {owner[key][0]} at {owner[key][1]}"
            )
        owner.setdefault(key, (spk, where))
        kept.append(row)
    return kept, warnings


def read_wav_scp(path):
    """``[(key, path to open, "file:line")]`` of a Kaldi-style ``wav.scp`` (``key wav``
    lines; wav relative to the file's folder). Malformed lines, piped commands (``... |``)
    and repeated keys raise one ``InputError``."""
    base = os.path.dirname(str(path))
    rows, problems, first = [], [], {}
    for i, text in _read_lines(path, "wav.scp"):
        fields = text.split(None, 1)
        where = f"{path}:{i}"
        if len(fields) != 2:
            problems.append(f"{where}: expected 'key wav_path', got {text!r}")
        elif fields[1].rstrip().endswith("|"):
            problems.append(f"{where}: piped commands are not read; give a 16 kHz audio file")
        elif fields[0] in first:
            problems.append(f"{where}: key {fields[0]} repeats {first[fields[0]]}")
        else:
            first[fields[0]] = where
            rows.append((fields[0], os.path.join(base, fields[1]), where))
    if problems:
        raise InputError(problems)
    if not rows:
        raise InputError(f"{path}: the wav.scp names no files")
    return rows

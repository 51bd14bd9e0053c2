"""What ``prepare_voxceleb`` writes: CSV and trial-list text, paths, the done record.

Trial lists hold paths RELATIVE to the folder they are written to (the output folder),
so a data path with a space in a shared ancestor (``/home/Jane Doe/...``) round-trips:
``maskproxy_losses.data.trials.read_trials`` resolves them against the list's folder to the
same absolute paths as the CSVs' ``wav`` column. A relative path that would still hold
whitespace cannot be written to a whitespace-separated list and is refused.

Each CSV row keeps its file's ``size`` and ``mtime_ns`` at preparation time; when the
outputs are reused, :func:`check_files` stats every listed file again and names each one
that is missing or changed since.

Example
-------
>>> trials_text([(1, "/d/a b/x.wav", "/d/a b/y.wav")], "/d/a b/out")
'1 ../x.wav ../y.wav\\n'
>>> spaced_part("/data/my corpus/wav"), spaced_part("/data/wav")
('/data/my corpus', None)
"""

import csv
import hashlib
import io
import json
import os

from maskproxy_losses.utils.files import stat_many, utf8_named

__all__ = [
    "CSV_FIELDS",
    "OPTIONS_FILE",
    "FORMAT_VERSION",
    "output_paths",
    "csv_text",
    "trials_text",
    "has_whitespace",
    "spaced_part",
    "fingerprint",
    "tree_fingerprint",
    "read_done",
    "check_files",
    "stat_files",
    "changed_since",
]

CSV_FIELDS = ("ID", "duration", "wav", "spk_id", "size", "mtime_ns")
OPTIONS_FILE = "prep_options.json"
FORMAT_VERSION = 3  # 2: trial-list paths relative to the output folder; 3: size, mtime_ns


def output_paths(output_dir, with_test):
    """``{key: path}`` of the outputs (``test_csv`` / ``trials`` only ``with_test``)."""
    names = {"train_csv": "train.csv", "dev_csv": "dev.csv", "dev_trials": "dev_trials.txt"}
    if with_test:
        names.update(test_csv="test.csv", trials="trials.txt")
    return {key: os.path.join(output_dir, name) for key, name in names.items()}


def csv_text(utts, infos):
    """``ID,duration,wav,spk_id,size,mtime_ns`` rows of ``Utt`` records (absolute wav
    paths); ``infos`` maps a path to ``(duration_s, size, mtime_ns)``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for u in utts:
        duration, size, mtime_ns = infos[u.path]
        writer.writerow([u.uid, f"{duration:.6f}", u.path, u.spk, size, mtime_ns])
    return buf.getvalue()


def has_whitespace(text):
    """True when ``str.split`` would cut ``text`` (any Unicode whitespace)."""
    return any(c.isspace() for c in text)


def trials_text(rows, folder):
    """``label rel1 rel2`` lines of ``(label, abs1, abs2)``, paths relative to ``folder``.

    Raises ``ValueError`` on a relative path with whitespace (callers check first).
    """
    lines = []
    for label, a, b in rows:
        rel = [os.path.relpath(p, folder) for p in (a, b)]
        if any(has_whitespace(r) for r in rel):
            raise ValueError(f"whitespace in a trial path relative to {folder}: {rel}")
        lines.append(f"{label} {rel[0]} {rel[1]}\n")
    return "".join(lines)


def spaced_part(path):
    """The leading part of ``path`` up to its last component with whitespace, or None."""
    head = path
    while head and os.path.dirname(head) != head:
        if has_whitespace(os.path.basename(head)):
            return head
        head = os.path.dirname(head)
    return None


def fingerprint(path):
    """Absolute path, size and mtime of an input list."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def tree_fingerprint(utts):
    """File count and digest of the relative paths of a scanned tree."""
    digest = hashlib.sha1("\n".join(u.rel for u in utts).encode()).hexdigest()
    return {"files": len(utts), "sha1": digest}


def read_done(output_dir, options, outputs):
    """The record of a finished run with these ``options`` when every output exists,
    else None."""
    path = os.path.join(output_dir, OPTIONS_FILE)
    if not all(os.path.isfile(p) for p in list(outputs.values()) + [path]):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("options") == options else None


def check_files(csv_paths, workers=8, chunk=4096):
    r"""The ``file:line: what`` problems of the rows of the manifests ``csv_paths`` whose
    audio is missing or changed (size or modification time) since data preparation. One
    ``stat`` per file, ``chunk`` files per task in ``workers`` threads (stat releases the
    GIL; a network file system answers several at once).

    >>> import tempfile
    >>> d = tempfile.mkdtemp(); wav = os.path.join(d, "a.wav")
    >>> _ = open(wav, "wb").write(b"x" * 10); st = os.stat(wav)
    >>> m = os.path.join(d, "train.csv")
    >>> _ = open(m, "w").write(f"ID,duration,wav,spk_id,size,mtime_ns\na,1.0,{wav},s,10,"
    ...                        f"{st.st_mtime_ns}\n")
    >>> check_files([m])
    []
    >>> _ = open(wav, "ab").write(b"y")
    >>> [p.split(": ", 1)[1][:48] for p in check_files([m])]
    ['changed since data preparation (size 10 -> 11 by']
    """
    wheres, wavs, stats = [], [], []
    for path in csv_paths:
        with utf8_named(path), open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            column = {name: i for i, name in enumerate(next(reader))}
            w, s, m = column["wav"], column["size"], column["mtime_ns"]
            for lineno, row in enumerate(reader, 2):
                wheres.append((path, lineno))
                wavs.append(row[w])
                stats.append((int(row[s]), int(row[m])))
    now = stat_many(wavs, workers, chunk)
    problems = []
    for (path, lineno), wav, before, stat in zip(wheres, wavs, stats, now):
        if stat == before:
            continue
        where = f"{path}:{lineno}"
        if stat is None:
            problems.append(f"{where}: missing since data preparation: {wav}")
        else:
            problems.append(
                f"{where}: changed since data preparation (size {before[0]} -> {stat[0]} "
                f"bytes, mtime {'same' if stat[1] == before[1] else 'changed'}): {wav}"
            )
    return problems


def stat_files(paths):
    """``{path: [size, mtime_ns] or None}`` (None: missing) of ``paths``."""
    paths = list(paths)
    return {p: None if st is None else list(st) for p, st in zip(paths, stat_many(paths))}


def changed_since(recorded):
    """``path: what`` notes for the paths of a :func:`stat_files` record whose stat differs
    now (a file skipped as bad that was mended, added or removed since).

    >>> changed_since({"/no/such/file.wav": None}), changed_since({"/no/such/x.wav": [1, 2]})
    ([], ['/no/such/x.wav: changed since data preparation, where it was skipped as bad'])
    """
    notes = []
    for (path, before), now in zip(recorded.items(), stat_many(list(recorded))):
        if (None if now is None else list(now)) != before:
            notes.append(f"{path}: changed since data preparation, where it was skipped as bad")
    return notes

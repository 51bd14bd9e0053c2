"""What ``prepare_voxceleb`` writes: CSV and trial-list text, paths, the done record.

Trial lists hold paths RELATIVE to the folder they are written to (the output folder),
so a data path with a space in a shared ancestor (``/home/Jane Doe/...``) round-trips:
``maskproxy_losses.data.trials.read_trials`` resolves them against the list's folder to the
same absolute paths as the CSVs' ``wav`` column. A relative path that would still hold
whitespace cannot be written to a whitespace-separated list and is refused.

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
]

CSV_FIELDS = ("ID", "duration", "wav", "spk_id")
OPTIONS_FILE = "prep_options.json"
FORMAT_VERSION = 2  # 2: trial-list paths relative to the output folder


def output_paths(output_dir, with_test):
    """``{key: path}`` of the outputs (``test_csv`` / ``trials`` only ``with_test``)."""
    names = {"train_csv": "train.csv", "dev_csv": "dev.csv", "dev_trials": "dev_trials.txt"}
    if with_test:
        names.update(test_csv="test.csv", trials="trials.txt")
    return {key: os.path.join(output_dir, name) for key, name in names.items()}


def csv_text(utts, durations):
    """``ID,duration,wav,spk_id`` rows of ``Utt`` records (absolute wav paths)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for u in utts:
        writer.writerow([u.uid, f"{durations[u.path]:.6f}", u.path, u.spk])
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

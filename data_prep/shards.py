"""The training manifest as WebDataset tar shards, with a JSON shard index.

WebDataset rather than Lhotse Shar: SpeechBrain 1.1.2 already supports WebDataset, its
shards are plain tar files that any tool (``tar tf``, Python's ``tarfile``) reads, and no
further manifest format is needed beside the one JSON index written here.

:func:`write_shards` reads ``train.csv`` (``ID,duration,wav,spk_id``, from
``data_prep.voxceleb.prepare_voxceleb``) and writes, in ``output_dir``:

- ``shard-000000.tar``, ...: per utterance two tar members, ``<key>.json``
  (``{"id", "spk_id", "row", "duration"}``; ``row`` is the utterance's 0-based row in the
  manifest, which seeds its training crops as on the file path) and ``<key>.wav`` (or
  ``.flac``: the audio file's bytes, unchanged). ``<key>`` is the row as 9 digits.
- ``shards.json``: the index (format below), written last.

Command line: ``maskproxy shards TRAIN_CSV OUTPUT_DIR [--shard-size N]`` (or ``python -m
data_prep.shards``).

The order: each speaker's utterances are shuffled and cut into *runs* of ``block``
utterances (the rest in one shorter run; a rest of 1 joins the previous run); all runs are
shuffled together (seed ``seed``) and cut into ``ceil(N / shard_size)`` shards of about
equal size (``N`` utterances; a run is never split, so a shard may exceed ``shard_size`` by
up to ``block`` utterances). A shard therefore holds about ``shard_size / block``
speakers, and a speaker's run is contiguous, so the reader
(:mod:`maskproxy_losses.data.shards`) forms speaker groups with a small buffer.

Index (``format: maskproxy-shards``, ``version: 1``): ``manifest`` (path, sha256, rows),
``options`` (shard_size, block, seed), ``plan`` (manifest digest and options: what a rerun
compares), ``speakers`` (the manifest's speakers in order of
first appearance: the order of the training labels), ``utterances``, ``duration`` (s), and
``shards``: per shard ``path`` (relative to the index), ``utterances``, ``duration``,
``bytes`` and ``speakers``, the runs in shard order as ``[speaker index, count]`` pairs.

Resumable and atomic: every shard is written to a temporary file renamed into place, then
recorded in ``shards.progress.jsonl`` (the plan, then one line per finished shard); a rerun
after a kill removes the killed process's temporaries and writes only the missing shards;
``shards.json`` is written after the last shard (a stale one is removed before any shard
is rewritten), so an index never names a half-written or foreign shard. A rerun with the
same manifest content and options reuses complete outputs.

Example
-------
>>> import tempfile, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> rows = ["ID,duration,wav,spk_id"]
>>> for i in range(6):
...     sf.write(f"{d}/{i}.wav", np.zeros(1600, dtype=np.int16), 16000)
...     rows.append(f"u{i},0.1,{d}/{i}.wav,spk{i % 2}")
>>> _ = open(f"{d}/train.csv", "w").write("\\n".join(rows) + "\\n")
>>> index = read_index(write_shards(f"{d}/train.csv", f"{d}/shards", shard_size=3, block=3))
>>> [(s["path"], s["utterances"], s["speakers"]) for s in index["shards"]]
[('shard-000000.tar', 3, [[0, 3]]), ('shard-000001.tar', 3, [[1, 3]])]
>>> index["speakers"], index["duration"]
(['spk0', 'spk1'], 0.6)
"""

import csv
import hashlib
import json
import logging
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import (
    atomic_write_text,
    check_not_input,
    check_writable_dir,
    remove_stale_temps,
    temp_path,
    umask_mode,
    utf8_named,
)

__all__ = [
    "INDEX_FORMAT",
    "INDEX_VERSION",
    "manifest_sha256",
    "read_train_manifest",
    "layout",
    "write_shards",
    "read_index",
    "main",
]

logger = logging.getLogger(__name__)

INDEX_FORMAT = "maskproxy-shards"
INDEX_VERSION = 1
INDEX_NAME = "shards.json"
PROGRESS_NAME = "shards.progress.jsonl"
_SHARD = re.compile(r"shard-\d{6}\.tar$")
_FIELDS = ("ID", "duration", "wav", "spk_id")


def manifest_sha256(path):
    """The SHA-256 of a manifest's bytes (the index's ``manifest.sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_train_manifest(path):
    """``(rows, speakers)`` of a training CSV: ``rows[i] = (id, duration, wav, speaker
    index)`` in file order, ``speakers`` in order of first appearance.

    Raises ``InputError`` naming ``file:line`` for each bad row (missing column, duration
    that is not a positive number, audio file not found, repeated ID).
    """
    problems, rows, speakers, seen = [], [], {}, set()
    with utf8_named(path), open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:4]] != list(_FIELDS):
            raise InputError(f"{path}:1: expected the header {','.join(_FIELDS)}, got {header}")
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if not fields:
                continue
            if len(fields) < 4:
                problems.append(f"{where}: expected 4 fields, got {len(fields)}")
                continue
            uid, duration, wav, spk = fields[:4]
            try:
                duration = float(duration)
            except ValueError:
                duration = float("nan")
            if not duration > 0 or not math.isfinite(duration):
                problems.append(f"{where}: duration {fields[1]!r} is not a positive number")
            elif not os.path.isfile(wav):
                problems.append(f"{where}: audio file not found: {wav}")
            elif uid in seen:
                problems.append(f"{where}: ID {uid} appears twice")
            else:
                seen.add(uid)
                rows.append((uid, duration, wav, speakers.setdefault(spk, len(speakers))))
    if problems:
        raise InputError(problems)
    if not rows:
        raise InputError(f"{path}: no utterances")
    return rows, list(speakers)


def layout(row_speakers, shard_size, block, seed):
    """The shards as lists of runs ``(speaker index, [row, ...])`` (see the module).

    >>> layout([0, 0, 0, 1, 1], shard_size=3, block=3, seed=0)
    [[(0, [2, 0, 1])], [(1, [4, 3])]]
    """
    if shard_size < 1 or block < 1:
        raise InputError(f"shard_size and block must be >= 1, got {shard_size} and {block}")
    rng = np.random.default_rng(seed)
    by_speaker = {}
    for row, spk in enumerate(row_speakers):
        by_speaker.setdefault(spk, []).append(row)
    runs = []
    for spk, rows in by_speaker.items():
        rows = rng.permutation(rows).tolist()
        cuts = list(range(0, len(rows), block))[1:]
        if cuts and len(rows) - cuts[-1] == 1:  # a rest of one joins the previous run
            cuts.pop()
        runs += [(spk, part) for part in np.split(rows, cuts)]
    n_shards = math.ceil(len(row_speakers) / shard_size)
    shards, current, done = [], [], 0
    for i in rng.permutation(len(runs)):
        spk, rows = runs[i]
        current.append((int(spk), [int(r) for r in rows]))
        done += len(rows)
        if done * n_shards >= (len(shards) + 1) * len(row_speakers):  # an even share reached
            shards.append(current)
            current = []
    return shards


def _write_shard(path, runs):
    """Write one shard of runs ``(speaker index, [(row, id, duration, wav, speaker), ...])``
    atomically; return its index entry (without ``path``)."""
    import webdataset as wds

    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, umask_mode())
        with os.fdopen(fd, "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as tar:
            for _, members in runs:
                for row, uid, duration, wav, spk in members:
                    meta = {"id": uid, "spk_id": spk, "row": row, "duration": duration}
                    with open(wav, "rb") as audio:
                        data = audio.read()
                    ext = os.path.splitext(wav)[1].lower().lstrip(".") or "wav"
                    tar.write(
                        {"__key__": f"{row:09d}", "json": json.dumps(meta).encode(), ext: data}
                    )
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return {
        "utterances": sum(len(m) for _, m in runs),
        "duration": round(sum(u[2] for _, m in runs for u in m), 6),
        "bytes": os.path.getsize(path),
        "speakers": [[spk, len(m)] for spk, m in runs],
    }


def read_index(path):
    """The shard index at ``path`` (``InputError`` when it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: shard index not found") from None
    except ValueError as err:
        raise InputError(f"{path}: not a JSON shard index ({err})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise InputError(f"{path}: not a shard index (no 'format: {INDEX_FORMAT}')")
    if index.get("version") != INDEX_VERSION:
        raise InputError(
            f"{path}: shard index version {index.get('version')}, this code reads "
            f"{INDEX_VERSION}; rewrite the shards (python -m data_prep.shards)"
        )
    return index


def _complete(folder, shards):
    """True when every shard of the index entries ``shards`` exists with its size."""
    for shard in shards:
        path = os.path.join(folder, shard["path"])
        if not os.path.isfile(path) or os.path.getsize(path) != shard["bytes"]:
            return False
    return True


def _read_progress(path, plan):
    """``{shard name: index entry}`` of the progress file at ``path`` when it is for
    ``plan``, else ``{}`` (a line cut by a kill is ignored)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    done = {}
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if i == 0 and record != {"plan": plan}:
            return {}
        if i > 0 and isinstance(record, dict) and "path" in record:
            done[record.pop("path")] = record
    return done


def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_shards(
    train_csv, output_dir, shard_size=1000, block=12, seed=0, num_workers=1, before_rewrite=None
):
    """Write the shards and ``shards.json`` of ``train_csv`` to ``output_dir``; return the
    index path (see the module docstring). ``num_workers`` processes write shards;
    ``before_rewrite`` is called once the shards are found stale, before any is touched
    (the recipe refuses there to rewrite shards another run reads)."""
    output_dir = os.path.abspath(output_dir)
    for name in (INDEX_NAME, PROGRESS_NAME):
        check_not_input(os.path.join(output_dir, name), [(train_csv, "the manifest")], "OUTPUT_DIR")
    check_writable_dir(output_dir, "shard folder")
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_temps(output_dir)
    rows, speakers = read_train_manifest(train_csv)
    manifest = {
        "path": os.path.abspath(train_csv),
        "sha256": manifest_sha256(train_csv),
        "rows": len(rows),
    }
    options = {"shard_size": int(shard_size), "block": int(block), "seed": int(seed)}
    plan = {"manifest": manifest["sha256"], "options": options, "version": INDEX_VERSION}
    index_path = os.path.join(output_dir, INDEX_NAME)
    progress_path = os.path.join(output_dir, PROGRESS_NAME)

    old = _load_json(index_path)
    if old and old.get("plan") == plan and _complete(output_dir, old.get("shards", [])):
        logger.info("%s is up to date; reusing the shards", index_path)
        return index_path
    if before_rewrite and (old or os.listdir(output_dir)):
        before_rewrite()
    if os.path.lexists(index_path):  # before any shard changes: no index names a new shard
        os.remove(index_path)

    shards = layout([r[3] for r in rows], options["shard_size"], options["block"], seed)
    names = [f"shard-{i:06d}.tar" for i in range(len(shards))]
    done = {
        name: entry
        for name, entry in _read_progress(progress_path, plan).items()
        if name in names and _complete(output_dir, [{**entry, "path": name}])
    }
    lines = [{"plan": plan}] + [{"path": name, **entry} for name, entry in done.items()]
    atomic_write_text(progress_path, "".join(json.dumps(x) + "\n" for x in lines))
    for name in os.listdir(output_dir):  # shards of another plan
        if _SHARD.match(name) and name not in done:
            os.remove(os.path.join(output_dir, name))
    todo = [i for i, name in enumerate(names) if name not in done]
    logger.info("writing %d of %d shards of %s to %s", len(todo), len(names), train_csv, output_dir)

    def record(i, entry):  # a shard renamed into place, then recorded
        done[names[i]] = entry
        with open(progress_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": names[i], **entry}) + "\n")

    def job(i):
        runs = [(spk, [(r, *rows[r][:3], speakers[spk]) for r in m]) for spk, m in shards[i]]
        return os.path.join(output_dir, names[i]), runs

    if num_workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(num_workers) as pool:
            futures = {pool.submit(_write_shard, *job(i)): i for i in todo}
            for future, i in futures.items():
                record(i, future.result())
    else:
        for i in todo:
            record(i, _write_shard(*job(i)))

    entries = [{"path": name, **done[name]} for name in names]
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "plan": plan,
        "manifest": manifest,
        "options": options,
        "speakers": speakers,
        "utterances": len(rows),
        "duration": round(sum(r[1] for r in rows), 6),
        "shards": entries,
    }
    atomic_write_text(index_path, json.dumps(index, separators=(",", ":")))
    os.remove(progress_path)
    logger.info("wrote %s: %d shards, %d utterances", index_path, len(entries), len(rows))
    return index_path


if __name__ == "__main__":  # the same as `maskproxy shards ...`
    from maskproxy_losses.cli import main

    sys.exit(main(["shards", *sys.argv[1:]]))

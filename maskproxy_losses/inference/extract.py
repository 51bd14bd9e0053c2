"""Embedding extraction at scale: a list of millions of files, N processes, resumable.

A job embeds the entries ``(key, path)`` of a list into ``output_dir``. The list is cut
into *parts* of ``part_size`` consecutive entries; process ``i`` of ``N`` (``--shard i/N``,
or torchrun's ``RANK`` / ``WORLD_SIZE``) embeds parts ``i, i + N, i + 2N, ...``. Per part,
``num_workers`` DataLoader workers read the audio headers, then the audio; the main
process embeds batches of at most ``batch_seconds`` of padded audio, longest files first,
files over ``max_seconds`` as the mean of chunks (the batching and chunking of
:class:`~maskproxy_losses.inference.embedding.Embedder`), and writes, each file atomically
and in this order:

- ``parts/part-NNNNNN.ark``: one Kaldi binary float vector per key (kaldiio);
- ``parts/part-NNNNNN.scp``: ``key <absolute path of the ark>:offset`` lines;
- ``parts/part-NNNNNN.json``: the record that the part is finished (the model's
  fingerprint, the job's digest, entries, embedded, skipped, the ark's size, the shard).

A part counts as finished when its record exists and matches its ark. A rerun (after a
``kill -9``, with the same or another N) skips the finished parts and redoes the others
from their start, so a finished part is never embedded again nor lost, and at most one
part per process is redone. A part's content depends on the list and ``part_size`` only,
not on N, so any split gives the same embeddings. ``job.json``, written once by whichever
process comes first, holds what every part shares (model fingerprint, digest of the
entries, part size, batching, resolved precision); a process or a part record that
differs is refused with one ``InputError``. The process that finds every part finished
writes ``embeddings.scp``, the parts' lines in list order: one index over all parts, as
Kaldi, kaldiio and WeSpeaker read it (and ``skipped.txt``, with ``skip_bad``). Its ark
paths are absolute; after moving the folder, :func:`merge` rewrites them.

Kaldi ark/scp rather than numpy or HDF5: it is what Kaldi (``copy-vector``,
``ivector-*``), WeSpeaker (``xvector.scp``) and ESPnet read, ``kaldiio.load_scp`` reads it
lazily in Python, an scp is an index, so the merge copies no embedding, and N processes
write their own files (one HDF5 file cannot take N writers without MPI).

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf, torch, kaldiio
>>> from maskproxy_losses import ResNetSE34L, export_model
>>> from maskproxy_losses.inference.api import load_model
>>> tmp = tempfile.mkdtemp()
>>> _ = torch.manual_seed(0)
>>> model = load_model(export_model(os.path.join(tmp, "model"),
...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval()))
>>> entries = []
>>> for i in range(5):
...     sf.write(f"{tmp}/{i}.wav", np.random.default_rng(i).uniform(-.5, .5, 8000), 16000)
...     entries.append((f"utt{i}", f"{tmp}/{i}.wav", f"list:{i + 1}"))
>>> out = os.path.join(tmp, "emb")
>>> extract(model, entries, out, shard=(1, 2), part_size=2, precision="fp32")["merged"]
>>> done = extract(model, entries, out, shard=(0, 2), part_size=2, precision="fp32")
>>> done["parts"], done["embedded_parts"], os.path.basename(done["merged"])
(3, 2, 'embeddings.scp')
>>> emb = kaldiio.load_scp(done["merged"])
>>> list(emb), emb["utt3"].shape
(['utt0', 'utt1', 'utt2', 'utt3', 'utt4'], (16,))
"""

import hashlib
import io
import json
import logging
import os
import re
import time

import numpy as np
import torch

from maskproxy_losses.data.audio import SAMPLE_RATE, probe, read_wav
from maskproxy_losses.inference.embedding import Embedder
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_writable_dir,
    remove_stale_temps,
    stat_many,
    temp_path,
    umask_mode,
)

__all__ = [
    "FORMAT",
    "INDEX_NAME",
    "parse_shard",
    "shard_from_env",
    "entries_digest",
    "check_keys",
    "extract",
    "merge",
]

logger = logging.getLogger(__name__)

FORMAT, VERSION = "maskproxy-extract", 1
JOB_NAME, INDEX_NAME, SKIPPED_NAME, PARTS = "job.json", "embeddings.scp", "skipped.txt", "parts"
# What every part of a job shares; a process asking for other values is refused.
_SHARED = ("fingerprint", "digest", "entries", "part_size", "batch_seconds", "max_seconds")
_SHARED += ("precision", "resample")
_REQUIRED = {"fingerprint": str, "model_dir": str, "parts": int}  # read directly
_PROBE_CHUNK = 256


def parse_shard(text):
    """``(i, N)`` of ``--shard i/N`` (``0 <= i < N``).

    >>> parse_shard("1/4")
    (1, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise InputError(f"--shard {text}: expected i/N with 0 <= i < N, e.g. 0/4")
    return int(match[1]), int(match[2])


def shard_from_env(environ=None):
    """``(RANK, WORLD_SIZE)`` when torchrun (or another launcher) set them, else None.

    >>> shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}), shard_from_env({})
    ((1, 2), None)
    """
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    return parse_shard(f"{environ['RANK']}/{environ['WORLD_SIZE']}")


def entries_digest(entries):
    """SHA-256 of the ``(key, path)`` sequence of ``entries`` (what parts are cut from)."""
    digest = hashlib.sha256()
    for key, path, *_ in entries:
        digest.update(f"{key}\0{os.path.abspath(path)}\n".encode())
    return digest.hexdigest()


def check_keys(entries):
    """Refuse keys that repeat or hold whitespace (a Kaldi scp line is ``key value``)."""
    problems, first = [], {}
    for key, _, where in entries:
        if not key or any(c.isspace() for c in key):
            problems.append(f"{where}: key {key!r} is empty or holds whitespace")
        elif key in first:
            problems.append(f"{where}: key {key} repeats {first[key]}")
        else:
            first[key] = where
    if problems:
        raise InputError(problems)


# ------------------------------------------------------------------ the job record
def _open_job(folder, spec):
    """Create ``job.json`` with ``spec``, or check the existing one against it."""
    path = os.path.join(folder, JOB_NAME)
    if not os.path.exists(path):  # create-if-absent: link a complete temporary into place
        tmp = temp_path(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, umask_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process of the job came first
            pass
        finally:
            os.remove(tmp)
    try:
        with open(path, encoding="utf-8") as f:
            job = json.load(f)
    except ValueError as err:
        raise InputError(f"{path}: not an extraction job record ({err})") from None
    if not isinstance(job, dict) or job.get("format") != FORMAT or job.get("version") != VERSION:
        raise InputError(f"{path}: not a {FORMAT} v{VERSION} job; use another output folder")
    bad = [k for k, kind in _REQUIRED.items() if not isinstance(job.get(k), kind)]
    if bad:
        raise InputError(
            f"{path}: an incomplete {FORMAT} job record (no valid {', '.join(bad)}); "
            "use another output folder"
        )
    if job["fingerprint"] != spec["fingerprint"]:
        raise InputError(
            f"{path}: the job's parts are embedded with model {job['model_dir']} (fingerprint "
            f"{job['fingerprint'][:16]}), not {spec['model_dir']} ({spec['fingerprint'][:16]}); "
            "parts from different models are refused: use another output folder"
        )
    differ = [f"{k} {job.get(k)!r} (asked: {spec[k]!r})" for k in _SHARED if job.get(k) != spec[k]]
    if differ:
        raise InputError(
            f"{path}: the job was started with other values: {'; '.join(differ)}; rerun it "
            "with the job's list and options, or use another output folder"
        )
    return job


def _part_paths(folder, j):
    stem = os.path.join(folder, PARTS, f"part-{j:06d}")
    return stem + ".ark", stem + ".scp", stem + ".json"


def _finished(folder, job, j):
    """Part ``j``'s record when it is finished (record and files complete), else None;
    ``InputError`` when the record belongs to another model or list."""
    ark, scp, record_path = _part_paths(folder, j)
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != job["fingerprint"] or record.get("digest") != job["digest"]:
        raise InputError(
            f"{record_path}: a part embedded with model fingerprint "
            f"{str(record.get('fingerprint'))[:16]} from list {str(record.get('digest'))[:16]}, "
            f"this job is {job['fingerprint'][:16]} from {job['digest'][:16]} "
            f"({os.path.join(folder, JOB_NAME)}); parts from different models or lists are "
            "refused: remove the part or use another output folder"
        )
    ok = os.path.isfile(scp) and os.path.isfile(ark) and os.path.getsize(ark) == record["ark_bytes"]
    if not ok:
        logger.warning("%s: its ark or scp is missing or of another size; embedding it again", ark)
    return record if ok else None


# ------------------------------------------------------------------ reading in workers
class _Probes(torch.utils.data.Dataset):
    """Chunks of paths -> ``probe`` results (audio headers), read by loader workers;
    ``convert``: any rate and channel count is usable (resampled when read)."""

    def __init__(self, paths, convert=True):
        self.chunks = [paths[i : i + _PROBE_CHUNK] for i in range(0, len(paths), _PROBE_CHUNK)]
        self.convert = convert

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return [probe(p, convert=self.convert) for p in self.chunks[i]]


class _Batches(torch.utils.data.Dataset):
    """Batches of paths -> their waveforms (or the read error, as text), read by workers."""

    def __init__(self, batches, convert=True):
        self.batches, self.convert = batches, convert

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        out = []
        for path in self.batches[i]:
            try:
                out.append(read_wav(path, convert=self.convert))
            except Exception as err:  # libsndfile raises several types
                out.append(f"unreadable audio {path} ({str(err).strip()})")
        return out


def _as_is(item):
    return item


def _loader(dataset, num_workers):
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is
    )


def missing_files(rows):
    """``"where: missing file path"`` of each ``(key, path, where)`` row whose file does not
    exist, in list order (:func:`~maskproxy_losses.utils.files.stat_many`: a typo on line
    1,000,000 is found before any embedding, not hours in; the audio headers are still
    read per part, in loader workers)."""
    paths = list(dict.fromkeys(p for _, p, _ in rows))
    gone = {p for p, st in zip(paths, stat_many(paths, workers=32)) if st is None}
    first = {}
    for _, p, where in rows:
        if p in gone:
            first.setdefault(p, f"{where}: missing file {p}")
    return list(first.values())


# ------------------------------------------------------------------ one part
def _embed_part(embedder, rows, num_workers, skip_bad):
    """``({path: embedding}, {path: problem})`` of one part's ``(key, path, where)`` rows."""
    paths = list(dict.fromkeys(p for _, p, _ in rows))
    where = {}
    for _, p, w in rows:
        where.setdefault(p, w)
    probes = [r for chunk in _loader(_Probes(paths, embedder.resample), num_workers) for r in chunk]
    lengths, bad = {}, {}
    for p, (duration, err) in zip(paths, probes):
        if err is None:
            lengths[p] = int(round(duration * SAMPLE_RATE))
        else:
            bad[p] = err

    def refuse_or_skip():
        if bad and not skip_bad:
            raise InputError([f"{where[p]}: {what}" for p, what in bad.items()])

    refuse_or_skip()
    good = [p for p in paths if p in lengths]
    batches = list(embedder._batches(good, [lengths[p] for p in good])) if good else []
    embeddings = {}
    for batch, wavs in zip(batches, _loader(_Batches(batches, embedder.resample), num_workers)):
        for p, w in zip(batch, wavs):
            if isinstance(w, str):
                bad[p] = w
        refuse_or_skip()
        read = [(p, w) for p, w in zip(batch, wavs) if not isinstance(w, str)]
        for (p, _), e in zip(read, embedder.embed_waveforms([w for _, w in read]) if read else []):
            e = e if isinstance(e, str) else np.asarray(e, dtype=np.float32)
            if isinstance(e, str) or not np.isfinite(e).all():  # never written: named or skipped
                bad[p] = e if isinstance(e, str) else "the embedding is not finite (NaN/Inf)"
            else:
                embeddings[p] = e
        refuse_or_skip()
    return embeddings, bad


def _write_part(folder, j, job, rows, embeddings, bad, seconds, shard, device):
    """The part's ark, scp and (last) record, each atomically."""
    import kaldiio

    ark, scp, record_path = _part_paths(folder, j)
    data = {key: embeddings[p] for key, p, _ in rows if p in embeddings}
    buf, index = io.BytesIO(), io.StringIO()
    buf.name = os.path.abspath(ark)  # what kaldiio writes into the scp lines
    kaldiio.save_ark(buf, data, scp=index)
    atomic_write_bytes(ark, buf.getvalue())
    atomic_write_text(scp, index.getvalue())
    record = {
        "part": j,
        "fingerprint": job["fingerprint"],
        "digest": job["digest"],
        "first": j * job["part_size"],
        "entries": len(rows),
        "embedded": len(data),
        "skipped": [[key, f"{w}: {bad[p]}"] for key, p, w in rows if p in bad],
        "ark_bytes": len(buf.getvalue()),
        "seconds": round(seconds, 3),
        "shard": list(shard),
        "device": device,
    }
    atomic_write_text(record_path, json.dumps(record))
    return record


# ------------------------------------------------------------------ the job
def merge(output_dir):
    """Write ``embeddings.scp`` (and ``skipped.txt`` when files were skipped) of the job in
    ``output_dir`` when every part is finished; return its path, else None."""
    folder = os.path.abspath(output_dir)
    with open(os.path.join(folder, JOB_NAME), encoding="utf-8") as f:
        job = json.load(f)
    records = [_finished(folder, job, j) for j in range(job["parts"])]
    if any(r is None for r in records):
        return None
    index, skipped = os.path.join(folder, INDEX_NAME), os.path.join(folder, SKIPPED_NAME)
    tmp = temp_path(index)
    try:
        with open(tmp, "w", encoding="utf-8") as out:  # streamed: millions of lines
            for j in range(job["parts"]):
                ark, scp, _ = _part_paths(folder, j)
                with open(scp, encoding="utf-8") as part:  # the ark where it is now
                    for line in part:
                        key, _, offset = line.rstrip("\n").partition(" ")
                        out.write(f"{key} {ark}:{offset.rpartition(':')[2]}\n")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, index)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    lines = [f"{key}\t{what}\n" for r in records for key, what in r["skipped"]]
    if lines:
        atomic_write_text(skipped, "".join(lines))
    elif os.path.exists(skipped):
        os.remove(skipped)
    return index


def extract(
    model,
    entries,
    output_dir,
    shard=(0, 1),
    part_size=10000,
    batch_seconds=200.0,
    max_seconds=300.0,
    precision="auto",
    num_workers=0,
    skip_bad=False,
    progress=None,
    resample=True,
):
    """Embed this process's parts of ``entries`` (``(key, path, where)``) into
    ``output_dir`` with ``model`` (a :class:`~maskproxy_losses.inference.api.Model`), as
    the module describes; merge when every part is finished.

    ``shard``: ``(i, N)``; ``progress``: called with one line per part; ``resample``
    (default, as every inference path): audio at another rate than 16 kHz is resampled
    and stereo mixed down when read, ``False`` refuses it. Returns a dict:
    ``parts`` (in the job), ``mine`` (this process's), ``done_before`` (of mine, finished
    by an earlier run), ``embedded_parts``, ``embedded_files``, ``skipped_files``,
    ``merged`` (the index path, or None while parts are missing), ``job`` (its record).
    """
    from maskproxy_losses.inference.api import MIN_MAX_SECONDS
    from maskproxy_losses.utils.precision import resolve_precision

    if int(part_size) < 1:
        raise InputError(f"--part-size must be at least 1, got {part_size}")
    if batch_seconds < 0:
        raise InputError(f"--batch-seconds must be >= 0, got {batch_seconds:g}")
    if not max_seconds >= MIN_MAX_SECONDS:
        raise InputError(f"--max-seconds must be at least {MIN_MAX_SECONDS:g}, got {max_seconds:g}")
    if int(num_workers) < 0:
        raise InputError(f"--num-workers must be >= 0, got {num_workers}")
    entries = list(entries)
    if not entries:
        raise InputError("no audio files to embed")
    check_keys(entries)
    device = str(model.encoder.device)
    try:
        precision, _ = resolve_precision(precision, device)
    except ValueError as err:
        raise InputError(f"--precision: {err}") from None
    folder = os.path.abspath(output_dir)
    check_writable_dir(folder, "extraction output folder")
    os.makedirs(os.path.join(folder, PARTS), exist_ok=True)
    remove_stale_temps(folder)
    remove_stale_temps(os.path.join(folder, PARTS))
    n_parts = -(-len(entries) // int(part_size))
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "model_dir": os.path.abspath(model.model_dir),
        "fingerprint": model.fingerprint,
        "digest": entries_digest(entries),
        "entries": len(entries),
        "part_size": int(part_size),
        "parts": n_parts,
        "batch_seconds": float(batch_seconds),
        "max_seconds": float(max_seconds),
        "precision": precision,
        "resample": bool(resample),
    }
    job = _open_job(folder, spec)
    index, count = shard
    mine = list(range(index, n_parts, count))
    todo = [j for j in mine if _finished(folder, job, j) is None]
    size = job["part_size"]
    if not skip_bad:  # with skip_bad, each part skips its missing files
        missing = missing_files([r for j in todo for r in entries[j * size : (j + 1) * size]])
        if missing:
            raise InputError(missing)
    embedder = Embedder(
        model.encoder, None, None, batch_seconds, max_seconds, precision, resample=resample
    )
    say = progress or (lambda line: logger.info("%s", line))
    say(
        f"shard {index}/{count}: {len(mine)} of {n_parts} parts of {job['part_size']} "
        f"entries, {len(mine) - len(todo)} finished before, {len(todo)} to embed"
    )
    files = skipped = 0
    for n, j in enumerate(todo, 1):
        start = time.perf_counter()
        rows = entries[j * job["part_size"] : (j + 1) * job["part_size"]]
        embeddings, bad = _embed_part(embedder, rows, int(num_workers), skip_bad)
        seconds = time.perf_counter() - start
        record = _write_part(folder, j, job, rows, embeddings, bad, seconds, shard, device)
        files += record["embedded"]
        skipped += len(record["skipped"])
        say(
            f"part {j} ({n} of {len(todo)}): {record['embedded']} embedded, "
            f"{len(record['skipped'])} skipped, {seconds:.1f} s"
        )
    return {
        "parts": n_parts,
        "mine": len(mine),
        "done_before": len(mine) - len(todo),
        "embedded_parts": len(todo),
        "embedded_files": files,
        "skipped_files": skipped,
        "merged": merge(folder),
        "job": job,
    }

"""Batched, cached embedding extraction with an ``EncoderClassifier``.

:class:`Embedder` embeds lists of wav files in batches bounded by seconds of padded
audio, full utterances (long files in chunks) or the authors' K crops per file, and
keeps every embedding in an :class:`EmbeddingCache`: one folder per model and extraction
mode (:func:`cache_folder`), entries keyed by each audio file's path, mtime and size
(:func:`file_key`), so a second run with
another scoring option embeds nothing again. Used by the verification recipe and the
``maskproxy_losses.inference.api`` command. A non-finite (NaN / Inf) embedding is never
cached nor returned as a value: it is reported with the ``list:line`` that named its file
(see :meth:`Embedder.__call__`), and cache entries that are not finite (written by an
older version) are ignored.

Example
-------
>>> import tempfile
>>> cache = EmbeddingCache(tempfile.mkdtemp())
>>> cache.put("k", np.ones(3, dtype=np.float32)); cache.flush()
>>> EmbeddingCache(cache.folder).get("k").tolist()
[1.0, 1.0, 1.0]
"""

import hashlib
import io
import logging
import math
import os
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskproxy_losses.data.audio import (
    SAMPLE_RATE,
    crop_samples,
    probe,
    read_wav,
    signal_problem,
)
from maskproxy_losses.data.length_batches import budget_batches, float32_lengths, frame_pad
from maskproxy_losses.scoring.cosine import make_crops
from maskproxy_losses.utils.errors import InputError, problem_key
from maskproxy_losses.utils.files import atomic_write_bytes, remove_stale_temps
from maskproxy_losses.utils.precision import autocast_for

__all__ = [
    "default_cache_dir",
    "model_fingerprint",
    "file_key",
    "cache_folder",
    "EmbeddingCache",
    "Embedder",
    "embed_trials",
    "embed_rows",
]

logger = logging.getLogger(__name__)


def default_cache_dir():
    """The per-user embedding cache: ``$MASKPROXY_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/maskproxy/embeddings``, else ``~/.cache/maskproxy/embeddings`` (the
    XDG convention torch, Hugging Face and SpeechBrain follow for their caches).

    >>> import os
    >>> os.environ["MASKPROXY_CACHE_DIR"] = "/tmp/mp-cache"
    >>> str(default_cache_dir())
    '/tmp/mp-cache'
    >>> del os.environ["MASKPROXY_CACHE_DIR"]
    """
    if os.environ.get("MASKPROXY_CACHE_DIR"):
        return Path(os.environ["MASKPROXY_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maskproxy" / "embeddings"


def model_fingerprint(model_dir):
    """sha256 over the names and contents of the model dir's yaml and checkpoint files."""
    h = hashlib.sha256()
    files = sorted(
        p
        for p in Path(model_dir).iterdir()
        if p.is_file() and p.suffix in (".yaml", ".ckpt", ".pt", ".pth", ".txt")
    )
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_folder(cache_dir, fingerprint, crops=None, max_seconds=300.0, precision="fp32"):
    """The cache folder of a model (its :func:`model_fingerprint`) and extraction mode
    (``crops=(K, F)`` or full utterances up to ``max_seconds``, at ``precision``): entries
    of one folder are keyed by :func:`file_key` alone, so model and mode are in the folder."""
    mode = f"crops{crops[0]}x{crops[1]}" if crops else f"full_max{float(max_seconds):g}s"
    return (
        Path(cache_dir)
        / fingerprint[:16]
        / (mode if precision == "fp32" else f"{mode}_{precision}")
    )


def file_key(path):
    """Cache key of an audio file: absolute path, mtime (ns) and size."""
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}\0{st.st_mtime_ns}\0{st.st_size}"
    return hashlib.sha1(ident.encode()).hexdigest()


class EmbeddingCache:
    """Embeddings on disk as ``shard-*.npz`` files (``keys``, ``emb``) in one folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)
        self.table = {}
        dropped = 0
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, emb = z["keys"].tolist(), z["emb"]
            except Exception as err:  # a damaged shard is only a cache miss
                logger.warning("ignoring unreadable cache shard %s (%s)", shard, err)
                continue
            finite = np.isfinite(emb.reshape(len(emb), -1)).all(axis=1)
            dropped += int((~finite).sum())
            self.table.update((k, e) for k, e, ok in zip(keys, emb, finite) if ok)
        if dropped:
            logger.warning("ignoring %d non-finite cached embedding(s) in %s", dropped, self.folder)
        self.pending = {}

    def get(self, key):
        return self.table.get(key)

    def put(self, key, emb):
        if not np.isfinite(emb).all():
            raise ValueError(f"refusing to cache a non-finite embedding (key {key})")
        self.table[key] = emb
        self.pending[key] = emb

    def flush(self):
        if not self.pending:
            return
        keys = list(self.pending)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), emb=np.stack([self.pending[k] for k in keys]))
        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
        atomic_write_bytes(self.folder / name, buf.getvalue())
        self.pending = {}


class Embedder:
    """Batched, cached embedding extraction with an ``EncoderClassifier``.

    ``crops=None`` embeds full utterances (files over ``max_seconds`` are cut into
    equal chunks of at most ``max_seconds`` whose embeddings are averaged); ``crops=(K,
    F)`` embeds K crops of F frames per file (the authors' protocol). A batch holds at
    most ``batch_seconds`` of (padded) audio. With ``resample`` (default) files of another
    rate are resampled to 16 kHz and multi-channel files mixed down (as SpeechBrain's
    ``load_audio`` does); without it they are refused.
    """

    def __init__(
        self,
        encoder,
        cache,
        crops=None,
        batch_seconds=200.0,
        max_seconds=300.0,
        precision="fp32",
        resample=True,
    ):
        self.encoder, self.cache, self.crops = encoder, cache, crops
        self.precision, self.resample = precision, resample
        self.budget = max(1, int(batch_seconds * SAMPLE_RATE))
        self.max_len = max(1, int(max_seconds * SAMPLE_RATE))

    @torch.no_grad()
    def _encode(self, wavs, lens=None):
        if lens is not None:  # SpeechBrain's ECAPA-TDNN computes in the lengths' dtype
            lens = float32_lengths(lens)
        with autocast_for(self.precision, str(self.encoder.device)):
            out = self.encoder.encode_batch(wavs, lens)
        return out.reshape(wavs.shape[0], -1).float().cpu().numpy()

    def embed_waveform(self, wav):
        """Embedding ``[D]`` of one 16 kHz waveform (1-D tensor), alone (no padding); a
        waveform over ``max_seconds`` is embedded as the mean of its chunks."""
        return self._full(wav)

    def _full(self, wav):
        """Embedding of one long waveform, chunk by chunk."""
        n_chunks = math.ceil(wav.shape[0] / self.max_len)
        chunks = list(torch.tensor_split(wav, n_chunks))
        per_batch = max(1, self.budget // chunks[0].shape[0])
        embs = [
            self._encode(*frame_pad(chunks[i : i + per_batch]))
            for i in range(0, n_chunks, per_batch)
        ]
        return np.concatenate(embs).mean(axis=0)

    def _batches(self, paths, lengths):
        """Groups of paths (longest first) whose padded size fits the budget."""
        order = sorted(range(len(paths)), key=lambda i: -lengths[i])
        if self.crops:
            k, frames = self.crops
            size = k * crop_samples(frames)
            per_batch = max(1, self.budget // size)
            for s in range(0, len(order), per_batch):
                yield [paths[i] for i in order[s : s + per_batch]]
            return
        for batch in budget_batches(lengths, self.budget, self.max_len):
            yield [paths[i] for i in batch]

    def _embed_batch(self, paths, wheres):
        """The embedding of each path, or a problem (str) for audio with NaN / Inf samples
        (read, but kept out of the batch)."""
        wavs = []
        for p in paths:
            try:
                wavs.append(read_wav(p, convert=self.resample))
            except Exception as err:
                raise InputError(f"{wheres.get(p, p)}: unreadable audio {p} ({err})") from None
        return self.embed_waveforms(wavs)

    def embed_waveforms(self, wavs):
        """Embeddings of the 1-D waveforms of one batch (as :meth:`_batches` groups files;
        the extraction job reads them in loader workers), a list; a waveform that cannot be
        embedded (:func:`~maskproxy_losses.data.audio.signal_problem`: NaN / Inf, silent,
        shorter than its header said) gets a problem (str) instead and is kept out."""
        out = [signal_problem(wav) for wav in wavs]
        todo = [i for i in range(len(wavs)) if out[i] is None]
        if self.crops and todo:
            k, frames = self.crops
            crops = torch.cat([make_crops(wavs[i], frames, k) for i in todo])
            for i, e in zip(todo, self._encode(crops).reshape(len(todo), k, -1)):
                out[i] = e
            return out
        short = [i for i in todo if wavs[i].shape[0] <= self.max_len]
        for i in todo:
            if wavs[i].shape[0] > self.max_len:
                out[i] = self._full(wavs[i])
        if short:
            for i, e in zip(short, self._encode(*frame_pad([wavs[i] for i in short]))):
                out[i] = e
        return out

    def __call__(
        self,
        paths,
        lengths,
        wheres=None,
        desc="embedding",
        flush_every=2000,
        bad=None,
        progress=True,
    ):
        """Embeddings of ``paths`` (``[N, D]`` or ``[N, K, D]``) and ``(hits, computed)``.

        ``lengths`` gives each file's samples (for batching); ``wheres`` maps a path to
        the ``file:line`` that named it (for error messages); ``progress=False`` hides the
        progress bar. A file whose embedding is not finite is never cached: by default
        every such file is named in one ``InputError`` once the others are embedded (and
        cached); given a dict ``bad`` (``--skip-bad``), each goes into it as ``{path:
        problem}`` and its row is NaN, for the caller to drop.
        """
        wheres = wheres or {}
        if not self.resample:  # refused whatever the cache holds
            refused = [(p, probe(p)[1]) for p in dict.fromkeys(paths)]
            refused = [f"{wheres.get(p, p)}: {err}" for p, err in refused if err]
            if refused:
                raise InputError(refused)
        keys = [file_key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if self.cache.get(k) is None]
        hits = len(paths) - len(todo)
        logger.info(
            "%s: %d of %d files from the embedding cache, %d to compute",
            desc,
            hits,
            len(paths),
            len(todo),
        )
        todo_paths = list(dict.fromkeys(paths[i] for i in todo))
        key_of = {paths[i]: keys[i] for i in todo}
        found = {}
        hide = not todo or not progress
        bar = tqdm(total=len(todo_paths), desc=desc, unit="file", disable=hide)
        try:  # what is embedded stays cached, also after Ctrl-C or an error
            for batch in self._batches(todo_paths, [lengths[p] for p in todo_paths]):
                for p, e in zip(batch, self._embed_batch(batch, wheres)):
                    if isinstance(e, str):
                        found[p] = f"{wheres.get(p, p)}: {e}: {p}"
                    elif np.isfinite(e).all():
                        self.cache.put(key_of[p], e.astype(np.float32))
                    else:
                        found[p] = (
                            f"{wheres.get(p, p)}: non-finite embedding (NaN/Inf) of {p}; "
                            "check this audio file"
                        )
                bar.update(len(batch))
                if len(self.cache.pending) >= flush_every:
                    self.cache.flush()
        finally:
            bar.close()
            self.cache.flush()
        if found and bad is None:
            raise InputError(sorted(found.values(), key=problem_key))
        if bad is not None:
            bad.update(found)
        rows = [self.cache.get(k) for k in keys]
        shape = next((r.shape for r in rows if r is not None), None)
        if shape is None:  # every file was bad
            return np.zeros((len(paths), 0), np.float32), (hits, len(todo))
        nan = np.full(shape, np.nan, np.float32)
        return np.stack([nan if r is None else r for r in rows]), (hits, len(todo))


def embed_trials(embedder, trials, lengths, source, skip_bad=False, desc="test embeddings"):
    """``(trials, emb, enrol_idx, test_idx, (hits, computed), problems)``: the embeddings of
    the distinct files of ``trials`` (:class:`~maskproxy_losses.data.trials.Trial`) and each
    trial's rows. A file whose samples or embedding are not finite stops the run, named by
    the first trial line that uses it; with ``skip_bad`` its trials are dropped instead and
    ``problems`` names it (both classes must remain in ``source``'s trials)."""
    from maskproxy_losses.data.trials import check_classes, index_trials

    keys = list(dict.fromkeys(p for t in trials for p in (t.enrol_path, t.test_path)))
    wheres = {p: t.where for t in reversed(trials) for p in (t.enrol_path, t.test_path)}
    bad = {} if skip_bad else None
    emb, counts = embedder(keys, lengths, wheres, desc=desc, bad=bad)
    if bad:
        trials = [t for t in trials if t.enrol_path not in bad and t.test_path not in bad]
        check_classes(trials, source)
    kept, enrol, test = index_trials((t.enrol_path, t.test_path) for t in trials)
    if len(kept) < len(keys):
        row = {k: i for i, k in enumerate(keys)}
        emb = emb[[row[k] for k in kept]]
    return trials, emb, enrol, test, counts, sorted((bad or {}).values(), key=problem_key)


def embed_rows(embedder, rows, lengths, skip_bad=False, desc="cohort embeddings"):
    """``(rows, emb, (hits, computed), problems)`` for ``(path, speaker, where)`` rows (a
    cohort, an embedding map): as :func:`embed_trials`, a non-finite embedding stops the
    run naming its line, or with ``skip_bad`` drops its row."""
    bad = {} if skip_bad else None
    emb, counts = embedder([r[0] for r in rows], lengths, {r[0]: r[2] for r in rows}, desc, bad=bad)
    if bad:
        keep = [i for i, r in enumerate(rows) if r[0] not in bad]
        if not keep:
            raise InputError(["no usable utterance left:", *bad.values()])
        rows, emb = [rows[i] for i in keep], emb[keep]
    return rows, emb, counts, sorted((bad or {}).values(), key=problem_key)

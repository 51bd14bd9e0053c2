"""Batched, cached embedding extraction with an ``EncoderClassifier``.

:class:`Embedder` embeds lists of wav files in batches bounded by seconds of padded
audio, full utterances (long files in chunks) or the authors' K crops per file, and
keeps every embedding in an :class:`EmbeddingCache`: one folder per model and extraction
mode (:func:`cache_folder`), entries keyed by each audio file's path, mtime and size
(:func:`file_key`), so a second run with
another scoring option embeds nothing again. Used by the verification recipe and the
``maskproxy_losses.inference.api`` command.

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

from maskproxy_losses.data.audio import SAMPLE_RATE, crop_samples, pad_batch, read_wav
from maskproxy_losses.data.length_batches import budget_batches
from maskproxy_losses.scoring.cosine import make_crops
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_bytes, remove_stale_temps
from maskproxy_losses.utils.precision import autocast_for

__all__ = ["model_fingerprint", "file_key", "cache_folder", "EmbeddingCache", "Embedder"]

logger = logging.getLogger(__name__)


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
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard) as z:
                    self.table.update(zip(z["keys"].tolist(), z["emb"]))
            except Exception as err:  # a damaged shard is only a cache miss
                logger.warning("ignoring unreadable cache shard %s (%s)", shard, err)
        self.pending = {}

    def get(self, key):
        return self.table.get(key)

    def put(self, key, emb):
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
    most ``batch_seconds`` of (padded) audio.
    """

    def __init__(
        self, encoder, cache, crops=None, batch_seconds=200.0, max_seconds=300.0, precision="fp32"
    ):
        self.encoder, self.cache, self.crops = encoder, cache, crops
        self.precision = precision
        self.budget = max(1, int(batch_seconds * SAMPLE_RATE))
        self.max_len = max(1, int(max_seconds * SAMPLE_RATE))

    @torch.no_grad()
    def _encode(self, wavs, lens=None):
        with autocast_for(self.precision, str(self.encoder.device)):
            out = self.encoder.encode_batch(wavs, lens)
        return out.reshape(wavs.shape[0], -1).float().cpu().numpy()

    def _full(self, wav):
        """Embedding of one long waveform, chunk by chunk."""
        n_chunks = math.ceil(wav.shape[0] / self.max_len)
        chunks = list(torch.tensor_split(wav, n_chunks))
        per_batch = max(1, self.budget // chunks[0].shape[0])
        embs = [
            self._encode(*pad_batch(chunks[i : i + per_batch]))
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
        wavs = []
        for p in paths:
            try:
                wavs.append(read_wav(p))
            except Exception as err:
                raise InputError(f"{wheres.get(p, p)}: unreadable audio {p} ({err})") from None
        if self.crops:
            k, frames = self.crops
            crops = torch.cat([make_crops(w, frames, k) for w in wavs])
            return list(self._encode(crops).reshape(len(wavs), k, -1))
        out = [None] * len(wavs)
        short = [i for i, w in enumerate(wavs) if w.shape[0] <= self.max_len]
        for i, w in enumerate(wavs):
            if w.shape[0] > self.max_len:
                out[i] = self._full(w)
        if short:
            for i, e in zip(short, self._encode(*pad_batch([wavs[i] for i in short]))):
                out[i] = e
        return out

    def __call__(self, paths, lengths, wheres=None, desc="embedding", flush_every=2000):
        """Embeddings of ``paths`` (``[N, D]`` or ``[N, K, D]``) and ``(hits, computed)``.

        ``lengths`` gives each file's samples (for batching); ``wheres`` maps a path to
        the ``file:line`` that named it (for error messages).
        """
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
        todo_paths = [paths[i] for i in todo]
        key_of = {paths[i]: keys[i] for i in todo}
        done = 0
        with tqdm(total=len(todo), desc=desc, unit="file", disable=not todo) as bar:
            for batch in self._batches(todo_paths, [lengths[p] for p in todo_paths]):
                for p, e in zip(batch, self._embed_batch(batch, wheres or {})):
                    self.cache.put(key_of[p], e.astype(np.float32))
                bar.update(len(batch))
                done += len(batch)
                if len(self.cache.pending) >= flush_every:
                    self.cache.flush()
        self.cache.flush()
        return np.stack([self.cache.get(k) for k in keys]), (hits, len(todo))

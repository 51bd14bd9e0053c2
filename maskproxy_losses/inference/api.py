"""The Python API of a trained model: load it once, embed files, verify a pair.

:func:`load_model` loads a model directory (safely, see :mod:`.model_dir`);
:func:`embed_files` returns the embedding matrix of a list of files (checked first,
batched, optionally cached like the verification recipe's); :func:`verify_pair` gives the
cosine score of two files and, with the model directory's ``calibration.json``, the
calibrated LLR and the accept / reject decision at the Bayes threshold of ``p_target``.
The command line on top of it is ``maskproxy embed | enrol | identify | verify``
(:mod:`maskproxy_losses.cli.embed`).

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf, torch
>>> from maskproxy_losses import ResNetSE34L, export_model
>>> from maskproxy_losses.scoring.calibration import Calibration
>>> tmp = tempfile.mkdtemp()
>>> _ = torch.manual_seed(0)
>>> model_dir = export_model(os.path.join(tmp, "model"),
...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval())
>>> rng = np.random.default_rng(0)
>>> wav1, wav2 = os.path.join(tmp, "a.wav"), os.path.join(tmp, "b.wav")
>>> sf.write(wav1, rng.uniform(-0.5, 0.5, 16000), 16000)
>>> sf.write(wav2, rng.uniform(-0.5, 0.5, 12000), 16000)
>>> result = verify_pair(model_dir, wav1, wav2, p_target=0.01)
>>> -1.0 <= result.score <= 1.0, result.llr, result.accept  # no calibration.json
(True, None, None)
>>> Calibration(scale=10.0, offset=-5.0).save(os.path.join(model_dir, "calibration.json"))
>>> result = verify_pair(model_dir, wav1, wav2, p_target=0.01)
>>> result.llr == 10.0 * result.score - 5.0, result.accept == (result.llr >= result.threshold)
(True, True)
>>> round(result.threshold, 4)  # log(0.99 / 0.01)
4.5951
"""

import dataclasses

import numpy as np
import torch

from maskproxy_losses.data.audio import MIN_SAMPLES, SAMPLE_RATE, probe_entries
from maskproxy_losses.inference.embedding import (
    Embedder,
    EmbeddingCache,
    cache_folder,
    model_fingerprint,
)
from maskproxy_losses.inference.model_dir import load_encoder
from maskproxy_losses.scoring.calibration import bayes_threshold, load_model_calibration
from maskproxy_losses.scoring.cosine import cosine_scores
from maskproxy_losses.scoring.qmf import indexed_quality, qmf_for
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import check_writable_dir
from maskproxy_losses.utils.precision import resolve_precision

__all__ = [
    "DEFAULT_CACHE_DIR",
    "MIN_MAX_SECONDS",
    "Model",
    "PairResult",
    "load_model",
    "check_device",
    "embed_files",
    "verify_pair",
]

DEFAULT_CACHE_DIR = "results/embedding_cache"  # the verification recipe's default cache_dir
MIN_MAX_SECONDS = 2 * MIN_SAMPLES / SAMPLE_RATE  # chunks of long files stay embeddable


# ------------------------------------------------------------------ the model
@dataclasses.dataclass
class Model:
    """A loaded model directory: its encoder and the fingerprint of its files."""

    model_dir: str
    encoder: object
    fingerprint: str


def check_device(device):
    """``device`` as a string, refused in one line when it is not a torch device or CUDA is
    absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}: not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return str(dev)


def load_model(model_dir, device="cpu", trust=False):
    """:class:`Model` of ``model_dir`` (yaml checked unless ``trust``, see ``load_encoder``)."""
    encoder = load_encoder(model_dir, check_device(device), trust=trust)
    return Model(str(model_dir), encoder, model_fingerprint(model_dir))


class _MemoryCache:
    """An :class:`EmbeddingCache` stand-in that keeps nothing on disk."""

    folder = None

    def __init__(self):
        self.table, self.pending = {}, {}

    def get(self, key):
        return self.table.get(key)

    def put(self, key, emb):
        self.table[key] = emb

    def flush(self):
        pass


def embed_files(
    model_dir,
    paths,
    device="cpu",
    trust=False,
    cache_dir=None,
    batch_seconds=200.0,
    max_seconds=300.0,
    wheres=None,
    stats=None,
    precision="auto",
):
    """Embeddings ``[N, D]`` (float32) of the audio files ``paths``, in order.

    ``model_dir`` is a model directory or a :class:`Model` from :func:`load_model`. Every
    file is probed first and all bad ones are reported in one ``InputError`` (each as
    ``wheres[i]: what``, e.g. ``list.txt:3: missing file x.wav``) before anything is
    embedded. Batches hold at most ``batch_seconds`` of padded audio (0: one file per
    batch, no padding); files over ``max_seconds`` are embedded as the mean of chunks of at
    most that length (bounded memory). With ``cache_dir`` embeddings are cached there as
    the verification recipe does; ``stats`` (a dict) receives ``hits``, ``computed``,
    ``fingerprint``, ``cache`` (the folder or None), ``precision`` and ``seconds`` (each
    file's duration, the QMF quality measure). ``precision``:
    ``auto`` (bfloat16 autocast where the device does it natively), ``fp32`` or ``bf16``.
    """
    if batch_seconds < 0:
        raise InputError(f"--batch-seconds must be >= 0, got {batch_seconds:g}")
    if not max_seconds >= MIN_MAX_SECONDS:
        raise InputError(f"--max-seconds must be at least {MIN_MAX_SECONDS:g}, got {max_seconds:g}")
    model = model_dir if isinstance(model_dir, Model) else load_model(model_dir, device, trust)
    paths = [str(p) for p in paths]
    if not paths:
        raise InputError("no audio files to embed")
    wheres = [""] * len(paths) if wheres is None else [str(w) for w in wheres]
    samples, problems, _ = probe_entries([(w, [p]) for p, w in zip(paths, wheres)])
    if problems:
        raise InputError(problems)
    try:
        precision, _ = resolve_precision(precision, str(model.encoder.device))
    except ValueError as err:
        raise InputError(f"--precision: {err}") from None
    if cache_dir is None:
        cache = _MemoryCache()
    else:
        folder = cache_folder(cache_dir, model.fingerprint, None, max_seconds, precision)
        check_writable_dir(folder, "embedding cache folder")
        cache = EmbeddingCache(folder)
    unique = list(dict.fromkeys(paths))
    where_of = {}
    for p, w in zip(paths, wheres):
        where_of.setdefault(p, w or p)
    embedder = Embedder(model.encoder, cache, None, batch_seconds, max_seconds, precision)
    emb, (hits, computed) = embedder(unique, samples, where_of, desc="embedding")
    row = {p: i for i, p in enumerate(unique)}
    if stats is not None:
        stats.update(
            hits=hits,
            computed=computed,
            fingerprint=model.fingerprint,
            cache=None if cache.folder is None else str(cache.folder),
            precision=precision,
            seconds=[samples[p] / SAMPLE_RATE for p in paths],
        )
    return emb[[row[p] for p in paths]].astype(np.float32)


# ------------------------------------------------------------- verification
@dataclasses.dataclass(frozen=True)
class PairResult:
    """Result of :func:`verify_pair`: cosine ``score``; with calibration, ``llr`` (natural
    log), ``accept`` (``llr >= threshold``) and the Bayes ``threshold``; else ``None``;
    ``calibrated_with``: ``"qmf"`` (quality-aware), ``"linear"`` or ``None``."""

    score: float
    llr: float | None
    accept: bool | None
    threshold: float | None
    p_target: float
    calibrated_with: str | None = None


def verify_pair(
    model_dir,
    wav1,
    wav2,
    p_target=0.01,
    device="cpu",
    trust=False,
    precision="auto",
    calibration="model_dir",
    qmf="model_dir",
):
    """Score two wav files with ``model_dir`` (a path or a :class:`Model`): a
    :class:`PairResult`.

    Each file is embedded alone (no padding, no cache). The score is the cosine of the
    two embeddings; it is turned into an LLR by the quality-aware calibration ``qmf`` (by
    default the model directory's ``qmf.json``, if any; or a ``QMF``; or None: the score,
    the two durations and embedding norms) or else by ``calibration`` (by default the
    model directory's ``calibration.json``, if any; or a ``Calibration``; or None:
    ``scale * score + offset``), and accepted when the LLR reaches the Bayes threshold
    ``log((1 - p_target) / p_target)``. ``precision`` as in :func:`embed_files`. Bad input
    raises ``InputError`` naming the file.
    """
    if not 0.0 < float(p_target) < 1.0:
        raise InputError(f"p_target must be in (0, 1), got {p_target}")
    model = model_dir if isinstance(model_dir, Model) else load_model(model_dir, device, trust)
    if isinstance(calibration, str) and calibration == "model_dir":
        calibration = load_model_calibration(model.model_dir)
    if isinstance(qmf, str) and qmf == "model_dir":  # fitted on full-utterance cosine scores
        qmf, _ = qmf_for(model.model_dir, "cosine", "none")
    stats = {}
    emb = embed_files(
        model,
        [wav1, wav2],
        batch_seconds=0.0,
        wheres=["wav1", "wav2"],
        precision=precision,
        stats=stats,
    )
    score = float(cosine_scores(emb, [0], [1])[0])
    if qmf is not None:
        llr, used = float(qmf([score], indexed_quality(emb, stats["seconds"], [0], [1]))[0]), "qmf"
    elif calibration is not None:
        llr, used = float(calibration(score)), "linear"
    else:
        return PairResult(score, None, None, None, float(p_target))
    threshold = bayes_threshold(p_target)
    return PairResult(score, llr, bool(llr >= threshold), threshold, float(p_target), used)

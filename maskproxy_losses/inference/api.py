"""The Python API of a trained model: load it once, embed files, verify a pair.

:class:`SpeakerEmbedder` and :class:`Verifier` hold a loaded model: ``embed(path or
waveform)``, ``verify(a, b)`` with the calibrated LLR and decision, ``enrol`` and
``identify``, without reloading and without a progress bar. The functions below do one
job each (and load the model directory when given a path):

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

import collections
import dataclasses
import logging
import os
from typing import NamedTuple

import numpy as np
import torch

from maskproxy_losses.data.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    conversion_note,
    probe_entries,
    signal_problem,
)
from maskproxy_losses.inference.embedding import (
    Embedder,
    EmbeddingCache,
    cache_folder,
    file_key,
    model_fingerprint,
)
from maskproxy_losses.inference.model_dir import load_encoder
from maskproxy_losses.scoring.calibration import bayes_threshold, load_model_calibration
from maskproxy_losses.scoring.cosine import cosine_scores
from maskproxy_losses.scoring.qmf import indexed_quality, model_qmf
from maskproxy_losses.utils.errors import InputError, problem_key
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
    "SpeakerEmbedder",
    "Verifier",
    "EnrolledSpeakers",
    "Match",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "results/embedding_cache"  # before 0.2: the default of every tool
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
    skip_bad=False,
    resample=True,
    progress=True,
):
    """Embeddings ``[N, D]`` (float32) of the audio files ``paths``, in order.

    ``model_dir`` is a model directory or a :class:`Model` from :func:`load_model`. Every
    file is probed first and all bad ones are reported in one ``InputError`` (each as
    ``wheres[i]: what``, e.g. ``list.txt:3: missing file x.wav``) before anything is
    embedded; a file whose samples or embedding are NaN / Inf is reported the same way
    once the others are embedded. With ``skip_bad`` bad files are dropped instead: the
    rows are those of the kept files, and ``stats`` gets ``kept`` (their indices into
    ``paths``) and ``skipped`` (the problems). Batches hold at most ``batch_seconds`` of
    padded audio (0: one file per batch, no padding); files over ``max_seconds`` are
    embedded as the mean of chunks of at most that length (bounded memory). With
    ``cache_dir`` embeddings are cached there as the verification recipe does; ``stats``
    (a dict) receives ``hits``, ``computed``, ``fingerprint``, ``cache`` (the folder or
    None), ``precision``, ``seconds`` (each kept file's duration, the QMF quality
    measure) and ``note`` (which files were resampled or mixed down, or None;
    also logged). ``precision``: ``auto`` (bfloat16 autocast where the device does it
    natively), ``fp32`` or ``bf16``. With ``resample`` (default) files at another rate
    than 16 kHz are resampled and stereo ones mixed down, as SpeechBrain's ``load_audio``
    does; ``resample=False`` refuses them. ``progress=False`` hides the progress bar.
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
    samples, problems, _ = probe_entries(
        [(w, [p]) for p, w in zip(paths, wheres)], convert=resample
    )
    if problems and not skip_bad:
        raise InputError(problems)
    note = conversion_note(paths) if resample else None
    if note:
        logger.info("%s", note)
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
    unique = list(dict.fromkeys(p for p in paths if p in samples))
    where_of = {}
    for p, w in zip(paths, wheres):
        where_of.setdefault(p, w or p)
    embedder = Embedder(
        model.encoder, cache, None, batch_seconds, max_seconds, precision, resample=resample
    )
    bad = {} if skip_bad else None
    if unique:
        emb, (hits, computed) = embedder(
            unique, samples, where_of, desc="embedding", bad=bad, progress=progress
        )
    else:
        emb, hits, computed = np.zeros((0, 0), np.float32), 0, 0
    row = {p: i for i, p in enumerate(unique) if not (bad and p in bad)}
    kept = [i for i, p in enumerate(paths) if p in row]
    if skip_bad and not kept:
        raise InputError(["no usable audio file left; every one is bad:", *problems, *bad.values()])
    if stats is not None:
        stats.update(
            hits=hits,
            computed=computed,
            fingerprint=model.fingerprint,
            cache=None if cache.folder is None else str(cache.folder),
            precision=precision,
            kept=kept,
            skipped=problems + sorted((bad or {}).values(), key=problem_key),
            note=note,
            seconds=[samples[paths[i]] / SAMPLE_RATE for i in kept],
        )
    return emb[[row[paths[i]] for i in kept]].astype(np.float32)


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
    resample=True,
    qmf="model_dir",
):
    """Score two wav files with ``model_dir`` (a path or a :class:`Model`): a
    :class:`PairResult`. To score many pairs, load the model once with :class:`Verifier`.

    Each file is embedded alone (no padding, no cache). The score is the cosine of the
    two embeddings; it is turned into an LLR by the quality-aware calibration ``qmf`` (by
    default the model directory's ``qmf.json``, if any; or a ``QMF``; or None: the score,
    the two durations and embedding norms) or else by ``calibration`` (by default the
    model directory's ``calibration.json``, if any; or a ``Calibration``; or None:
    ``scale * score + offset``), and accepted when the LLR reaches the Bayes threshold
    ``log((1 - p_target) / p_target)`` (the precedence of
    :func:`~maskproxy_losses.scoring.qmf.model_qmf`). ``precision`` as in
    :func:`embed_files`. Bad input raises ``InputError`` naming the file.
    """
    if not 0.0 < float(p_target) < 1.0:
        raise InputError(f"p_target must be in (0, 1), got {p_target}")
    model = model_dir if isinstance(model_dir, Model) else load_model(model_dir, device, trust)
    if isinstance(calibration, str) and calibration == "model_dir":
        calibration = load_model_calibration(model.model_dir)
    if isinstance(qmf, str) and qmf == "model_dir":  # fitted on full-utterance cosine scores
        qmf = model_qmf(model.model_dir)
    stats = {}
    emb = embed_files(
        model,
        [wav1, wav2],
        batch_seconds=0.0,
        wheres=["wav1", "wav2"],
        precision=precision,
        resample=resample,
        progress=False,
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


# ------------------------------------------------------- the object API
class EnrolledSpeakers(NamedTuple):
    """Speaker models: ``ids``, ``models`` ``[S, D]`` (mean of the length-normalised
    utterance embeddings) and ``counts`` (utterances per speaker)."""

    ids: list
    models: np.ndarray
    counts: np.ndarray


class Match(NamedTuple):
    """One ranked speaker of :meth:`Verifier.identify`: cosine ``score``; with a
    calibration the ``llr`` and ``accept`` decision, else ``None``."""

    speaker: str
    rank: int
    score: float
    llr: float | None
    accept: bool | None


def _waveform(audio, sample_rate):
    """A 16 kHz mono 1-D float tensor from ``[samples]`` or ``[channels, samples]``."""
    from maskproxy_losses.data.audio import to_16k_mono

    wav = torch.as_tensor(
        np.asarray(audio, dtype=np.float32) if not torch.is_tensor(audio) else audio
    )
    wav = wav.detach().float().cpu()
    if wav.dim() == 2:  # torchaudio's layout: [channels, samples]
        wav = wav.mean(dim=0)
    if wav.dim() != 1:
        raise InputError(
            f"expected a waveform [samples] or [channels, samples], got {list(wav.shape)}"
        )
    if int(sample_rate) != SAMPLE_RATE:
        wav = to_16k_mono(wav, sample_rate)
    if wav.shape[0] < MIN_SAMPLES:
        raise InputError(
            f"waveform too short to embed: {wav.shape[0]} samples at {SAMPLE_RATE} Hz, "
            f"at least {MIN_SAMPLES} needed"
        )
    problem = signal_problem(wav)
    if problem:
        raise InputError(f"waveform cannot be embedded: {problem}")
    return wav.contiguous()


def _seconds(audio, sample_rate):
    """The duration of a file path (its header) or of a waveform at ``sample_rate``."""
    if isinstance(audio, (str, os.PathLike)):
        import soundfile as sf

        return float(sf.info(str(audio)).duration)
    return float(np.shape(audio)[-1]) / float(sample_rate)


class SpeakerEmbedder:
    """A model directory loaded once: embeddings of audio files or waveforms, no progress bar.

    ``embed(audio)`` takes a file path (any sample rate and channel count: resampled to
    16 kHz and mixed down, as SpeechBrain's ``load_audio`` does, unless
    ``resample=False``, which refuses such files) or a waveform (numpy array or tensor,
    ``[samples]`` or ``[channels, samples]``, floats in [-1, 1], at ``sample_rate``) and
    returns a float32 ``[D]`` embedding; ``embed_many(paths)`` returns ``[N, D]``, batched.
    ``device``, ``trust`` and ``precision`` as for :func:`embed_files`.

    Example
    -------
    >>> import os, tempfile, torch
    >>> from maskproxy_losses import ResNetSE34L, export_model
    >>> _ = torch.manual_seed(0)
    >>> d = export_model(os.path.join(tempfile.mkdtemp(), "m"),
    ...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=8).eval())
    >>> embedder = SpeakerEmbedder(d, precision="fp32")
    >>> wav = torch.rand(16000) - 0.5
    >>> embedder.embed(wav).shape, embedder.dimension
    ((8,), 8)
    """

    sample_rate = SAMPLE_RATE
    MEMORY = 10000  # file embeddings kept in memory

    def __init__(
        self,
        model_dir,
        device="cpu",
        trust=False,
        precision="auto",
        resample=True,
        max_seconds=300.0,
    ):
        self.model = (
            model_dir if isinstance(model_dir, Model) else load_model(model_dir, device, trust)
        )
        try:
            self.precision, _ = resolve_precision(precision, str(self.model.encoder.device))
        except ValueError as err:
            raise InputError(f"precision: {err}") from None
        self.resample, self.max_seconds = bool(resample), float(max_seconds)
        self._embedder = Embedder(
            self.model.encoder,
            _MemoryCache(),
            None,
            0.0,
            self.max_seconds,
            self.precision,
            resample,
        )
        self._dimension = None
        self._memory = collections.OrderedDict()

    @property
    def model_dir(self):
        return self.model.model_dir

    @property
    def fingerprint(self):
        return self.model.fingerprint

    @property
    def dimension(self):
        """The embedding size."""
        if self._dimension is None:
            probe_wav = torch.sin(torch.arange(SAMPLE_RATE, dtype=torch.float32) * 0.05) * 0.1
            self._dimension = int(self._embedder.embed_waveform(probe_wav).shape[0])
        return self._dimension

    def embed(self, audio, sample_rate=SAMPLE_RATE):
        """The float32 ``[D]`` embedding of a file path or a waveform (see the class)."""
        if isinstance(audio, (str, os.PathLike)):
            return self.embed_many([audio])[0]
        return self._embedder.embed_waveform(_waveform(audio, sample_rate)).astype(np.float32)

    def embed_many(self, paths, batch_seconds=200.0, progress=False):
        """Embeddings ``[N, D]`` of the files ``paths`` (checked first, batched). The
        embeddings of the last :attr:`MEMORY` files are kept in memory, keyed by path, mtime
        and size: a file met again (the enrolment side of many trials) is not re-embedded."""
        paths = [str(p) for p in paths]
        keys = {p: file_key(p) for p in dict.fromkeys(paths) if os.path.isfile(p)}
        todo = [p for p in keys if keys[p] not in self._memory] + [
            p
            for p in dict.fromkeys(paths)
            if p not in keys  # missing: reported by the probe
        ]
        if todo:
            emb = embed_files(
                self.model,
                todo,
                batch_seconds=batch_seconds,
                max_seconds=self.max_seconds,
                precision=self.precision,
                resample=self.resample,
                progress=progress,
            )
            for p, e in zip(todo, emb):
                self._memory[keys[p]] = e
                self._memory.move_to_end(keys[p])
            while len(self._memory) > self.MEMORY:
                self._memory.popitem(last=False)
        return np.stack([self._memory[keys[p]] for p in paths])

    def _embed_all(self, items, sample_rate):
        paths = [a for a in items if isinstance(a, (str, os.PathLike))]
        by_path = dict(zip(map(str, paths), self.embed_many(paths, 0.0))) if paths else {}
        return np.stack(
            [
                by_path[str(a)] if isinstance(a, (str, os.PathLike)) else self.embed(a, sample_rate)
                for a in items
            ]
        )


class Verifier(SpeakerEmbedder):
    """:class:`SpeakerEmbedder` that decides: calibrated verification and identification.

    ``calibration``: the model directory's ``calibration.json`` (default; ``None`` when it
    has none), a :class:`~maskproxy_losses.scoring.calibration.Calibration`, or ``None``
    (cosine scores only); ``qmf``: the model directory's ``qmf.json`` (default; used
    before ``calibration`` when present, in ``verify`` only: see
    :func:`~maskproxy_losses.scoring.qmf.model_qmf`), a
    :class:`~maskproxy_losses.scoring.qmf.QMF`, or ``None``. Decisions accept when the LLR
    reaches the Bayes threshold of ``p_target``. ``verify(a, b)`` returns a
    :class:`PairResult`; ``enrol({speaker: [audio, ...]})`` an :class:`EnrolledSpeakers`;
    ``identify(audio, speakers)`` the top-k :class:`Match` list against those or a
    speakers file of ``maskproxy enrol``.

    Example
    -------
    >>> import os, tempfile, torch
    >>> from maskproxy_losses import ResNetSE34L, export_model
    >>> from maskproxy_losses.scoring.calibration import Calibration
    >>> _ = torch.manual_seed(0)
    >>> d = export_model(os.path.join(tempfile.mkdtemp(), "m"),
    ...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=8).eval())
    >>> v = Verifier(d, calibration=Calibration(scale=10.0, offset=-5.0), precision="fp32")
    >>> a, b = torch.rand(16000) - 0.5, torch.rand(12000) - 0.5
    >>> r = v.verify(a, b)
    >>> abs(r.llr - (10.0 * r.score - 5.0)) < 1e-9, r.accept == (r.llr >= r.threshold)
    (True, True)
    >>> speakers = v.enrol({"ann": [a], "bob": [b]})
    >>> [m.speaker for m in v.identify(a, speakers, top_k=2)][0]
    'ann'
    """

    def __init__(
        self, model_dir, p_target=0.01, calibration="model_dir", qmf="model_dir", **kwargs
    ):
        super().__init__(model_dir, **kwargs)
        if not 0.0 < float(p_target) < 1.0:
            raise InputError(f"p_target must be in (0, 1), got {p_target}")
        self.p_target = float(p_target)
        if isinstance(calibration, str) and calibration == "model_dir":
            calibration = load_model_calibration(self.model.model_dir)
        if isinstance(qmf, str) and qmf == "model_dir":  # fitted on full-utterance cosine
            qmf = model_qmf(self.model.model_dir)
        self.calibration, self.qmf = calibration, qmf

    def _decide(self, score, p_target):
        p = self.p_target if p_target is None else float(p_target)
        if self.calibration is None:
            return None, None, None, p
        llr = float(self.calibration(score))
        threshold = bayes_threshold(p)
        return llr, bool(llr >= threshold), threshold, p

    def score(self, a, b, sample_rate=SAMPLE_RATE):
        """The cosine of the embeddings of ``a`` and ``b`` (paths or waveforms)."""
        emb = self._embed_all([a, b], sample_rate)
        return float(cosine_scores(emb, [0], [1])[0])

    def verify(self, a, b, p_target=None, sample_rate=SAMPLE_RATE):
        """:class:`PairResult` of ``a`` and ``b``: cosine, LLR, decision, threshold. The
        LLR comes from the model directory's ``qmf.json`` (the score, both durations and
        embedding norms) when it has one, as in :func:`verify_pair`, else from its
        ``calibration.json``."""
        if self.qmf is None:
            score = self.score(a, b, sample_rate)
            llr, accept, threshold, p = self._decide(score, p_target)
            return PairResult(
                score, llr, accept, threshold, p, "linear" if llr is not None else None
            )
        emb = self._embed_all([a, b], sample_rate)
        score = float(cosine_scores(emb, [0], [1])[0])
        seconds = [_seconds(x, sample_rate) for x in (a, b)]
        llr = float(self.qmf([score], indexed_quality(emb, seconds, [0], [1]))[0])
        p = self.p_target if p_target is None else float(p_target)
        threshold = bayes_threshold(p)
        return PairResult(score, llr, bool(llr >= threshold), threshold, p, "qmf")

    def enrol(self, utterances, sample_rate=SAMPLE_RATE):
        """:class:`EnrolledSpeakers` of ``{speaker_id: [audio, ...]}`` (paths or waveforms)."""
        from maskproxy_losses.inference.speakers import enrol_speakers

        items = [(spk, a) for spk, audios in utterances.items() for a in audios]
        if not items:
            raise InputError("enrol: no utterances given")
        emb = self._embed_all([a for _, a in items], sample_rate)
        return EnrolledSpeakers(*enrol_speakers(emb, [spk for spk, _ in items]))

    def identify(self, audio, speakers, top_k=5, p_target=None, sample_rate=SAMPLE_RATE):
        """The ``top_k`` :class:`Match` es of ``audio`` among ``speakers`` (an
        :class:`EnrolledSpeakers` or the path of a speakers file from ``maskproxy enrol``
        with this model). LLRs are approximate against speaker models averaged over
        several utterances (the calibration was fitted on single-utterance trials)."""
        from maskproxy_losses.inference.speakers import load_speakers, top_speakers

        if isinstance(speakers, (str, os.PathLike)):
            speakers = EnrolledSpeakers(*load_speakers(str(speakers), self.fingerprint))
        emb = self._embed_all([audio], sample_rate)
        k = min(int(top_k), len(speakers.ids))
        out = []
        for _, rank, j, score in top_speakers(emb, speakers.models, k, ["audio"]):
            llr, accept, _, _ = self._decide(score, p_target)
            out.append(Match(speakers.ids[j], rank, score, llr, accept))
        return out

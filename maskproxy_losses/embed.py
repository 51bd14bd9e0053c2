"""Embeddings, speaker enrolment, identification and pairwise verification with a model dir.

Command line (``python -m maskproxy_losses.embed --help``; every subcommand has ``--help``)::

    python -m maskproxy_losses.embed MODEL_DIR --wav-list wavs.txt --output emb.npz
    python -m maskproxy_losses.embed enrol MODEL_DIR --speakers enrol.txt --output spk.npz
    python -m maskproxy_losses.embed identify MODEL_DIR --speakers spk.npz --dir test/ --top-k 3

``embed`` is the default subcommand (``python -m maskproxy_losses.embed embed MODEL_DIR ...``
is the same). Embeddings are cached like the verification recipe's (same folder layout,
default ``results/embedding_cache``), so either reuses what the other computed. Bad input
ends in one ``error: ...`` line naming the user's file (``list:line`` for list entries)
and exit code 2; ``--debug`` shows the traceback instead.

Python: :func:`verify_pair` gives the cosine score of two wav files, and with the model
dir's ``calibration.json`` (written by the training recipe) the calibrated LLR and the
accept / reject decision at the Bayes threshold of ``p_target``; :func:`embed_files`
returns the embedding matrix of a list of files.

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf, torch
>>> from maskproxy_losses import ResNetSE34L, export_model
>>> from maskproxy_losses.calibration import Calibration
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

import argparse
import dataclasses
import io
import os
import sys
import time

import numpy as np
import torch

from maskproxy_losses.audio import MIN_SAMPLES, SAMPLE_RATE, probe_entries
from maskproxy_losses.calibration import bayes_threshold, load_model_calibration
from maskproxy_losses.embedding import Embedder, EmbeddingCache, cache_folder, model_fingerprint
from maskproxy_losses.errors import InputError, run_cli
from maskproxy_losses.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_writable_dir,
    text_lines,
)
from maskproxy_losses.model_dir import load_encoder
from maskproxy_losses.precision import resolve_precision
from maskproxy_losses.scoring import cosine_scores, l2_normalize

__all__ = [
    "DEFAULT_CACHE_DIR",
    "SPEAKERS_FORMAT",
    "Model",
    "PairResult",
    "load_model",
    "cache_folder",
    "embed_files",
    "verify_pair",
    "read_wav_list",
    "scan_dir",
    "read_speaker_list",
    "enrol_speakers",
    "save_speakers",
    "load_speakers",
    "top_speakers",
    "main",
]

DEFAULT_CACHE_DIR = "results/embedding_cache"  # the verification recipe's default cache_dir
SPEAKERS_FORMAT = "maskproxy-speakers"
_SPEAKERS_VERSION = 1
AUDIO_SUFFIXES = (".wav", ".flac")
MIN_MAX_SECONDS = 2 * MIN_SAMPLES / SAMPLE_RATE  # chunks of long files stay embeddable


# ------------------------------------------------------------------ the model
@dataclasses.dataclass
class Model:
    """A loaded model directory: its encoder and the fingerprint of its files."""

    model_dir: str
    encoder: object
    fingerprint: str


def _check_device(device):
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}: not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return str(dev)


def load_model(model_dir, device="cpu", trust=False):
    """:class:`Model` of ``model_dir`` (yaml checked unless ``trust``, see ``load_encoder``)."""
    encoder = load_encoder(model_dir, _check_device(device), trust=trust)
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
    ``fingerprint``, ``cache`` (the folder or None) and ``precision``. ``precision``:
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
        )
    return emb[[row[p] for p in paths]].astype(np.float32)


# ------------------------------------------------------------- verification
@dataclasses.dataclass(frozen=True)
class PairResult:
    """Result of :func:`verify_pair`: cosine ``score``; with calibration, ``llr`` (natural
    log), ``accept`` (``llr >= threshold``) and the Bayes ``threshold``; else ``None``."""

    score: float
    llr: float | None
    accept: bool | None
    threshold: float | None
    p_target: float


def verify_pair(model_dir, wav1, wav2, p_target=0.01, device="cpu", trust=False, precision="auto"):
    """Score two wav files with ``model_dir``: a :class:`PairResult`.

    Each file is embedded alone (no padding, no cache). The score is the cosine of the
    two embeddings; when ``model_dir/calibration.json`` exists it is turned into an LLR
    (``scale * score + offset``) and accepted when the LLR reaches the Bayes threshold
    ``log((1 - p_target) / p_target)``. ``precision`` as in :func:`embed_files`. Bad input
    raises ``InputError`` naming the file.
    """
    if not 0.0 < float(p_target) < 1.0:
        raise InputError(f"p_target must be in (0, 1), got {p_target}")
    model = load_model(model_dir, device, trust)
    calibration = load_model_calibration(model_dir)
    emb = embed_files(
        model, [wav1, wav2], batch_seconds=0.0, wheres=["wav1", "wav2"], precision=precision
    )
    score = float(cosine_scores(emb, [0], [1])[0])
    if calibration is None:
        return PairResult(score, None, None, None, float(p_target))
    llr = float(calibration(score))
    threshold = bayes_threshold(p_target)
    return PairResult(score, llr, bool(llr >= threshold), threshold, float(p_target))


# ------------------------------------------------------------------ inputs
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


# --------------------------------------------------------------- speakers
def enrol_speakers(emb, speaker_ids):
    """``(ids, models, counts)``: each speaker's model is the mean of its length-normalised
    utterance embeddings (ids in order of first appearance).

    >>> ids, models, counts = enrol_speakers([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], ["a", "a", "b"])
    >>> ids, np.round(models.astype(float), 4).tolist(), counts.tolist()
    (['a', 'b'], [[0.5, 0.5], [0.7071, 0.7071]], [2, 1])
    """
    ids = list(dict.fromkeys(speaker_ids))
    index = {s: i for i, s in enumerate(ids)}
    rows = np.array([index[s] for s in speaker_ids])
    unit = l2_normalize(np.asarray(emb, dtype=np.float64))
    counts = np.bincount(rows, minlength=len(ids))
    models = np.zeros((len(ids), unit.shape[1]))
    np.add.at(models, rows, unit)
    return ids, (models / counts[:, None]).astype(np.float32), counts.astype(np.int64)


def save_speakers(path, ids, models, counts, fingerprint):
    """Write a speakers file (npz) atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        format=np.array(SPEAKERS_FORMAT),
        version=np.array(_SPEAKERS_VERSION),
        speaker_ids=np.array(ids, dtype=str),
        models=np.asarray(models, np.float32),
        counts=np.asarray(counts, np.int64),
        model_fingerprint=np.array(fingerprint),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_speakers(path, fingerprint=None):
    """``(ids, models, counts)`` of a speakers file; ``InputError`` when it is not one or
    (given ``fingerprint``) was enrolled with another model."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: speakers file not found")
    not_ours = f"{path}: not a speakers file written by 'python -m maskproxy_losses.embed enrol'"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception:  # not a zip / npz, or a pickled object array
        raise InputError(not_ours) from None
    keys = {"format", "version", "speaker_ids", "models", "counts", "model_fingerprint"}
    if not keys <= set(data) or str(data["format"]) != SPEAKERS_FORMAT:
        raise InputError(not_ours)
    if int(data["version"]) != _SPEAKERS_VERSION:
        raise InputError(f"{path}: unsupported speakers file version {int(data['version'])}")
    ids, models, counts = data["speaker_ids"].tolist(), data["models"], data["counts"]
    if models.ndim != 2 or len(ids) != models.shape[0] or len(ids) != counts.shape[0] or not ids:
        raise InputError(f"{path}: damaged speakers file (ids, models and counts disagree)")
    if fingerprint is not None and str(data["model_fingerprint"]) != fingerprint:
        raise InputError(
            f"{path}: enrolled with another model (fingerprint "
            f"{str(data['model_fingerprint'])[:16]}, this model {fingerprint[:16]}); "
            "run enrol again with this model directory"
        )
    return ids, models.astype(np.float32), counts


# -------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit code 2, like every other bad input."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _probability(text):
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _common(parser, inputs):
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a model directory (hyperparams.yaml + embedding_model.ckpt) written "
        "by the export, the converter or the training recipe",
    )
    if inputs:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--wav-list",
            metavar="FILE",
            help="one audio path per line, relative to the list's folder "
            "(blank lines and # comments skipped)",
        )
        group.add_argument(
            "--dir", metavar="DIR", help="every .wav / .flac under DIR (recursive, sorted)"
        )
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE_DIR,
        metavar="D",
        help=f"embedding cache, shared with the verification recipe (default {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--batch-seconds",
        type=_number,
        default=200.0,
        metavar="S",
        help="padded audio per batch, a memory bound (default 200; 0 = one "
        "file per batch, no padding)",
    )
    parser.add_argument(
        "--max-seconds",
        type=_number,
        default=300.0,
        metavar="S",
        help="longer files are embedded as the mean of chunks of at most S "
        "seconds (bounded memory; default 300)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto (default): bfloat16 autocast where the CPU / GPU does it natively, else fp32",
    )
    parser.add_argument(
        "--trust-model-dir",
        action="store_true",
        help="load a hyperparams.yaml that names code the export never writes "
        "(only for a directory whose author you trust)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show a traceback on bad input instead of one error line",
    )


def _parser():
    parser = _Parser(
        prog="python -m maskproxy_losses.embed",
        description="Speaker embeddings, enrolment and identification with a model directory.",
        epilog="'embed' is the default: 'python -m maskproxy_losses.embed MODEL_DIR --wav-list "
        "FILE --output OUT.npz' works as is. Bad input exits with code 2 and one "
        "'error:' line naming the file (list:line for list entries).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}
    p = subs["embed"] = sub.add_parser(
        "embed",
        help="embed audio files into an .npz (paths, embeddings)",
        description="Embed audio files (16 kHz mono) into OUT.npz holding 'paths' (as given) "
        "and 'embeddings' [N, D] float32. Every file is checked before anything "
        "is embedded; embeddings are cached like the verification recipe's.",
    )
    _common(p, inputs=True)
    p.add_argument("--output", required=True, metavar="OUT.npz", help="the .npz to write")
    p = subs["enrol"] = subs["enroll"] = sub.add_parser(
        "enrol",
        aliases=["enroll"],
        help="build speaker models from enrolment utterances",
        description="Read 'speaker_id wav_path' lines (several per speaker; paths relative to "
        "the file's folder) and store one model per speaker: the mean of its "
        "length-normalised utterance embeddings. SPEAKERS.npz holds speaker_ids, "
        "models [S, D], counts and the model's fingerprint (identify refuses a "
        "speakers file enrolled with another model).",
    )
    _common(p, inputs=False)
    p.add_argument("--speakers", required=True, metavar="FILE", help="lines 'speaker_id wav_path'")
    p.add_argument("--output", required=True, metavar="SPEAKERS.npz", help="the .npz to write")
    p = subs["identify"] = sub.add_parser(
        "identify",
        help="rank enrolled speakers for each audio file",
        description="Score each audio file against every enrolled speaker model (cosine) and "
        "report the top-k. When MODEL_DIR has calibration.json the calibrated LLR "
        "(llr = scale * score + offset) and the accept / reject decision at the "
        "Bayes threshold of --p-target are reported too. The calibration was fitted "
        "on single-utterance trials; scores against a model averaged over several "
        "utterances may be distributed differently, so read the LLRs as "
        "approximate.",
    )
    _common(p, inputs=True)
    p.add_argument("wavs", nargs="*", metavar="WAV", help="audio files (or --wav-list / --dir)")
    p.add_argument(
        "--speakers",
        required=True,
        metavar="SPEAKERS.npz",
        help="the output of 'enrol' with the same model",
    )
    p.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        metavar="K",
        help="speakers reported per file (default 5)",
    )
    p.add_argument(
        "--p-target",
        type=_probability,
        default=0.01,
        metavar="P",
        help="target prior of the accept decision (default 0.01)",
    )
    p.add_argument(
        "--output", metavar="OUT.tsv", help="write the table here (default: print it to stdout)"
    )
    return parser, subs


def _check_output(path):
    """Refuse an output that is a folder or lies in a folder that cannot be written."""
    if os.path.isdir(path):
        raise InputError(f"{path}: --output is a directory, expected a file name")
    folder = os.path.dirname(str(path)) or "."
    check_writable_dir(folder, "output folder")
    os.makedirs(folder, exist_ok=True)


def _inputs(args):
    """The ``(given, path, where)`` entries named by --wav-list, --dir or WAV arguments."""
    wavs = getattr(args, "wavs", None) or []
    if wavs and (args.wav_list or args.dir):
        raise InputError("give audio files either as WAV arguments or with --wav-list / --dir")
    if args.wav_list:
        return read_wav_list(args.wav_list)
    if args.dir:
        return scan_dir(args.dir)
    if wavs:
        return [(w, w, f"argument {i}") for i, w in enumerate(wavs, 1)]
    raise InputError(
        "no audio given: use --wav-list FILE or --dir DIR"
        + (" or WAV arguments" if args.command == "identify" else "")
    )


def _embed_entries(args, model, entries):
    stats = {}
    emb = embed_files(
        model,
        [e[1] for e in entries],
        cache_dir=None if args.no_cache else args.cache_dir,
        batch_seconds=args.batch_seconds,
        max_seconds=args.max_seconds,
        wheres=[e[2] for e in entries],
        stats=stats,
        precision=args.precision,
    )
    return emb, stats


def _summary(what, emb, stats, t0):
    where = f" ({stats['cache']})" if stats["cache"] else " (no cache)"
    return (
        f"{what}: {emb.shape[0]} files, {emb.shape[1]} dims; embeddings {stats['hits']} "
        f"from cache, {stats['computed']} computed{where}; {time.time() - t0:.1f} s"
    )


def _run_embed(args, t0):
    entries = _inputs(args)
    _check_output(args.output)
    model = load_model(args.model_dir, args.device, args.trust_model_dir)
    emb, stats = _embed_entries(args, model, entries)
    buf = io.BytesIO()
    np.savez(
        buf,
        paths=np.array([e[0] for e in entries], dtype=str),
        embeddings=emb,
        model_fingerprint=np.array(model.fingerprint),
    )
    atomic_write_bytes(args.output, buf.getvalue())
    print(_summary("embedded", emb, stats, t0))
    print(f"written: {args.output}")
    return emb


def _run_enrol(args, t0):
    rows = read_speaker_list(args.speakers)
    _check_output(args.output)
    model = load_model(args.model_dir, args.device, args.trust_model_dir)
    emb, stats = _embed_entries(args, model, [r[1:] for r in rows])
    ids, models, counts = enrol_speakers(emb, [r[0] for r in rows])
    save_speakers(args.output, ids, models, counts, model.fingerprint)
    print(_summary("enrolment utterances", emb, stats, t0))
    print(
        f"enrolled {len(ids)} speakers ({int(counts.min())} to {int(counts.max())} "
        f"utterances each); written: {args.output}"
    )
    return ids, models, counts


def _run_identify(args, t0):
    entries = _inputs(args)
    if args.output:
        _check_output(args.output)
    model = load_model(args.model_dir, args.device, args.trust_model_dir)
    ids, models, _ = load_speakers(args.speakers, model.fingerprint)
    calibration = load_model_calibration(args.model_dir)
    _warn_calibration(calibration, args.model_dir)
    emb, stats = _embed_entries(args, model, entries)
    k = min(args.top_k, len(ids))
    header = ["path", "rank", "speaker", "score"]
    threshold = None
    if calibration is not None:
        header += ["llr", "decision"]
        threshold = bayes_threshold(args.p_target)
    lines = ["\t".join(header)]
    for given, rank, j, score in top_speakers(emb, models, k, [e[0] for e in entries]):
        cells = [given, str(rank), ids[j], f"{score:.6f}"]
        if calibration is not None:
            llr = float(calibration(score))
            cells += [f"{llr:.4f}", "accept" if llr >= threshold else "reject"]
        lines.append("\t".join(cells))
    table = "\n".join(lines) + "\n"
    notes = [_summary("identified", emb, stats, t0) + f"; {len(ids)} enrolled speakers, top {k}"]
    if calibration is not None:
        notes.append(
            f"calibrated with {os.path.join(args.model_dir, 'calibration.json')}: "
            f"accept when llr >= {threshold:.4f} (p_target {args.p_target:g})"
        )
    if args.output:
        atomic_write_text(args.output, table)
        print("\n".join(notes + [f"written: {args.output}"]))
    else:
        sys.stdout.write(table)
        print("\n".join(notes), file=sys.stderr)
    return table


def top_speakers(emb, models, k, names, chunk=1024):
    """``(name, rank, speaker index, cosine)`` of the ``k`` best speakers of each row of
    ``emb``, scored ``chunk`` rows at a time (memory bounded for long lists).

    >>> emb, models = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0], [2.0, 0.0]])
    >>> [(n, r, j, round(s, 4)) for n, r, j, s in top_speakers(emb, models, 2, "ab", chunk=1)]
    [('a', 1, 1, 1.0), ('a', 2, 0, 0.7071), ('b', 1, 0, 0.7071), ('b', 2, 1, 0.0)]
    """
    unit_models = l2_normalize(np.asarray(models, dtype=np.float64))
    for s in range(0, len(names), chunk):
        scores = l2_normalize(np.asarray(emb[s : s + chunk], dtype=np.float64)) @ unit_models.T
        for name, row in zip(names[s : s + chunk], scores):
            for rank, j in enumerate(np.argsort(-row, kind="stable")[:k], 1):
                yield name, rank, int(j), float(row[j])


def _warn_calibration(calibration, model_dir):
    if calibration is None:
        return
    mode, norm = calibration.meta.get("score_mode"), calibration.meta.get("norm")
    if mode not in (None, "cosine") or norm not in (None, "none"):
        print(
            f"warning: {model_dir}/calibration.json was fitted on score_mode={mode}, "
            f"norm={norm}; these are full-utterance cosine scores",
            file=sys.stderr,
        )


COMMANDS = ("embed", "enrol", "enroll", "identify")


def main(argv=None):
    """Command-line entry point (see ``--help``); ``embed`` when no subcommand is named."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["embed"] + argv
    parser, subs = _parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, or a usage error
        parser.print_help()
        return None
    # Options may come between or after WAV arguments (identify MODEL --top-k 2 a.wav b.wav).
    args = subs[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    t0 = time.time()
    if args.command == "embed":
        return _run_embed(args, t0)
    if args.command in ("enrol", "enroll"):
        return _run_enrol(args, t0)
    return _run_identify(args, t0)


if __name__ == "__main__":
    run_cli(main)

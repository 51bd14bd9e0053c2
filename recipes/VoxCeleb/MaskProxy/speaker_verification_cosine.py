#!/usr/bin/env python3
"""Score a speaker-verification trial list with an exported embedding model.

    python speaker_verification_cosine.py hparams/verification.yaml --pretrained_path DIR

``DIR`` is a directory written by ``maskproxy_losses.export`` (or any
``EncoderClassifier`` directory). By default the built-in corpus's test trials are
scored (the corpus and its manifests are generated when missing); ``--trials_file``
(+ ``--test_root``), ``--manifest_folder`` or ``--test_csv`` point it elsewhere.
Scoring is full-utterance cosine (``--score_mode cosine``) or the authors' multi-crop
protocol (``--score_mode ten_crop --num_crops 10 --crop_frames 400``), optionally
S-norm / AS-norm against per-speaker means of ``cohort_csv`` (``--norm asnorm``).

Embeddings are cached under ``cache_dir`` per model (hash of the model files), mode and
file (path, mtime, size), so rerunning with another scoring option does not re-embed.
Outputs in ``output_folder``: ``scores.txt``, ``metrics.json``, ``det_and_scores.png``.
Bad input (malformed trial lines, missing / unreadable audio, bad labels, an empty or
one-class list) is reported as ``file:line: what`` with exit code 2; ``--skip_bad True``
drops the bad trials and scores the rest.
"""

import csv
import hashlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from tqdm import tqdm

from data_prep.demo_corpus import prepare_builtin
from data_prep.voxceleb import atomic_write_bytes, atomic_write_text, probe
from maskproxy_losses import scoring
from maskproxy_losses.trials import index_trials, read_trials

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MAX_LISTED = 20


class BadInput(Exception):
    """Input the script cannot score; ``problems`` holds ``file:line: what`` lines."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(report(self.problems))


def report(problems, limit=MAX_LISTED):
    """The first ``limit`` problems, one per line, then a count of the rest."""
    lines = list(problems[:limit])
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    return "\n".join(lines)


# ------------------------------------------------------------------- inputs
def read_test_csv(path):
    """``{ID: wav path}`` of a SpeechBrain manifest (columns ID, wav, ...)."""
    if not os.path.isfile(path):
        raise BadInput(f"{path}: test_csv not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"ID", "wav"} <= set(rows[0]):
        raise BadInput(f"{path}:1: expected columns ID and wav")
    return {r["ID"]: r["wav"] for r in rows}


def check_audio(entries):
    """Probe each distinct audio file once.

    ``entries`` are ``(where, [paths])``; returns ``(n_samples by path, problems,
    bad wheres)`` with one problem per entry naming a bad file.
    """
    info, problems, bad = {}, [], set()
    for where, paths in entries:
        for p in paths:
            if p not in info:
                dur, err = probe(p)
                info[p] = err if err else int(round(dur * SAMPLE_RATE))
            if isinstance(info[p], str):
                problems.append(f"{where}: {info[p]}")
                bad.add(where)
    return {p: n for p, n in info.items() if not isinstance(n, str)}, problems, bad


def check_classes(trials, source):
    """Raise ``BadInput`` unless ``trials`` hold both target and non-target trials."""
    if not trials:
        raise BadInput(f"{source}: no trials to score (empty list, or every line was bad)")
    labels = {t[0] for t in trials}
    if len(labels) < 2:
        raise BadInput(
            f"{source}: all {len(trials)} trials have label {labels.pop()}; "
            "EER and minDCF need both target (1) and non-target (0) trials"
        )


def read_cohort(cohort_csv, per_speaker=0):
    """``[(wav, spk_id, where)]`` of a train.csv; at most ``per_speaker`` per speaker."""
    if not os.path.isfile(cohort_csv):
        raise BadInput(f"{cohort_csv}: cohort_csv not found (needed for score normalisation)")
    out, count = [], {}
    with open(cohort_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"wav", "spk_id"} <= set(reader.fieldnames or []):
            raise BadInput(f"{cohort_csv}:1: expected columns wav and spk_id")
        for lineno, row in enumerate(reader, 2):
            spk = row["spk_id"]
            if per_speaker and count.get(spk, 0) >= per_speaker:
                continue
            count[spk] = count.get(spk, 0) + 1
            out.append((os.path.abspath(row["wav"]), spk, f"{cohort_csv}:{lineno}"))
    if not out:
        raise BadInput(f"{cohort_csv}: no cohort utterances")
    return out


# --------------------------------------------------------------- embeddings
def model_fingerprint(model_dir):
    """sha256 over the names and contents of the model dir's yaml and checkpoint files."""
    h = hashlib.sha256()
    files = sorted(
        p for p in Path(model_dir).iterdir()
        if p.is_file() and p.suffix in (".yaml", ".ckpt", ".pt", ".pth", ".txt")
    )
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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


def read_wav(path):
    """Mono float32 waveform in [-1, 1]."""
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != SAMPLE_RATE:
        raise ValueError(f"sample rate {sr} Hz, expected {SAMPLE_RATE}")
    return torch.from_numpy(wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0])


def pad_batch(wavs):
    """Stack 1-D tensors, zero-padded at the end; return (batch, relative lengths)."""
    longest = max(w.shape[0] for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, w in enumerate(wavs):
        batch[i, : w.shape[0]] = w
    lens = torch.tensor([w.shape[0] / longest for w in wavs])
    return batch, lens


class Embedder:
    """Batched, cached embedding extraction with an ``EncoderClassifier``.

    ``crops=None`` embeds full utterances (files over ``max_seconds`` are cut into
    equal chunks of at most ``max_seconds`` whose embeddings are averaged); ``crops=(K,
    F)`` embeds K crops of F frames per file (the authors' protocol). A batch holds at
    most ``batch_seconds`` of (padded) audio.
    """

    def __init__(self, encoder, cache, crops=None, batch_seconds=200.0, max_seconds=300.0):
        self.encoder, self.cache, self.crops = encoder, cache, crops
        self.budget = max(1, int(batch_seconds * SAMPLE_RATE))
        self.max_len = max(1, int(max_seconds * SAMPLE_RATE))

    @torch.no_grad()
    def _encode(self, wavs, lens=None):
        out = self.encoder.encode_batch(wavs, lens)
        return out.reshape(wavs.shape[0], -1).float().cpu().numpy()

    def _full(self, wav):
        """Embedding of one long waveform, chunk by chunk."""
        n_chunks = math.ceil(wav.shape[0] / self.max_len)
        chunks = list(torch.tensor_split(wav, n_chunks))
        per_batch = max(1, self.budget // chunks[0].shape[0])
        embs = [self._encode(*pad_batch(chunks[i : i + per_batch]))
                for i in range(0, n_chunks, per_batch)]
        return np.concatenate(embs).mean(axis=0)

    def _batches(self, paths, lengths):
        """Groups of paths (longest first) whose padded size fits the budget."""
        order = sorted(range(len(paths)), key=lambda i: -lengths[i])
        if self.crops:
            k, frames = self.crops
            size = k * scoring.crop_samples(frames)
            per_batch = max(1, self.budget // size)
            for s in range(0, len(order), per_batch):
                yield [paths[i] for i in order[s : s + per_batch]]
            return
        batch, longest = [], 0
        for i in order:
            n = min(lengths[i], self.max_len)
            if batch and (len(batch) + 1) * max(longest, n) > self.budget:
                yield batch
                batch, longest = [], 0
            batch.append(paths[i])
            longest = max(longest, n)
        if batch:
            yield batch

    def _embed_batch(self, paths, wheres):
        wavs = []
        for p in paths:
            try:
                wavs.append(read_wav(p))
            except Exception as err:
                raise BadInput(f"{wheres.get(p, p)}: unreadable audio {p} ({err})") from err
        if self.crops:
            k, frames = self.crops
            crops = torch.cat([scoring.make_crops(w, frames, k) for w in wavs])
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
        logger.info("%s: %d of %d files from the embedding cache, %d to compute",
                    desc, hits, len(paths), len(todo))
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


# ------------------------------------------------------------------ scoring
def metrics_of(scores, labels):
    """EER, minDCF at p=0.01 and p=0.05, their thresholds and trial counts."""
    eer, eer_thr = scoring.compute_eer(scores, labels)
    out = {"EER": eer, "EER_percent": 100.0 * eer, "EER_threshold": eer_thr}
    for p in (0.01, 0.05):
        dcf, thr = scoring.compute_min_dcf(scores, labels, p_target=p)
        out[f"minDCF_p{p}"] = dcf
        out[f"minDCF_p{p}_threshold"] = thr
    labels = np.asarray(labels)
    out.update(n_trials=int(labels.size), n_target=int(labels.sum()),
               n_nontarget=int(labels.size - labels.sum()))
    return out


def plot(scores, labels, metrics, path):
    """DET curve (probit axes) and target / non-target score histograms -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import norm

    scores, labels = np.asarray(scores), np.asarray(labels)
    fpr, fnr, _ = scoring.roc(scores, labels)
    # axes from about one error in the smaller class to 50% (99% for a worse system)
    lo = max(1e-4, min(0.01, 0.5 / min(labels.sum(), (1 - labels).sum())))
    hi = 0.5 if metrics["EER"] < 0.4 else 0.99
    ppf = lambda p: norm.ppf(np.clip(p, lo, hi))  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax1.plot(ppf(fpr), ppf(fnr))
    ticks = np.array([0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 40, 60, 80, 95, 99]) / 100
    ticks = ticks[(ticks >= lo) & (ticks <= hi)]
    for set_ticks, set_labels in ((ax1.set_xticks, ax1.set_xticklabels),
                                  (ax1.set_yticks, ax1.set_yticklabels)):
        set_ticks(norm.ppf(ticks))
        set_labels([f"{100 * t:g}" for t in ticks])
    eer = metrics["EER"]
    ax1.plot(ppf(eer), ppf(eer), "o", label=f"EER {100 * eer:.2f}%")
    lim = norm.ppf([lo, hi])
    ax1.set(xlim=lim, ylim=lim, xlabel="false alarm rate (%)", ylabel="miss rate (%)",
            title="DET curve")
    ax1.grid(True, alpha=0.3)
    ax1.legend()
    bins = np.linspace(scores.min(), scores.max(), 60)
    ax2.hist(scores[labels == 1], bins=bins, alpha=0.6, density=True, label="target")
    ax2.hist(scores[labels == 0], bins=bins, alpha=0.6, density=True, label="non-target")
    ax2.axvline(metrics["EER_threshold"], color="k", ls="--", lw=1, label="EER threshold")
    ax2.set(xlabel="score", ylabel="density", title="score distributions")
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- the recipe
def load_hparams(argv):
    """``sb.parse_arguments`` + ``load_hyperpyyaml``."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as f:
        hparams = load_hyperpyyaml(f, overrides)
    return hparams, run_opts


def load_encoder(model_dir, device):
    from speechbrain.inference.speaker import EncoderClassifier

    model_dir = Path(model_dir)
    if not (model_dir / "hyperparams.yaml").is_file():
        raise BadInput(f"{model_dir}: not a model directory (no hyperparams.yaml)")
    with tempfile.TemporaryDirectory(prefix="sv_model_") as savedir:
        encoder = EncoderClassifier.from_hparams(
            source=str(model_dir.resolve()), savedir=savedir, run_opts={"device": device}
        )
    encoder.eval()
    return encoder


def run(hparams, device="cpu"):
    """Score the trials described by ``hparams``; write outputs; return the metrics."""
    t0 = time.time()
    skip_bad = bool(hparams.get("skip_bad", False))
    mode = hparams["score_mode"]
    if mode not in ("cosine", "ten_crop"):
        raise BadInput(f"score_mode must be cosine or ten_crop, got {mode!r}")
    norm = str(hparams.get("norm") or "none").lower()
    if norm not in ("none", "snorm", "asnorm"):
        raise BadInput(f"norm must be none, snorm or asnorm, got {norm!r}")
    model_dir = hparams["pretrained_path"]
    if not Path(model_dir).is_dir():
        raise BadInput(f"{model_dir}: pretrained_path is not a directory")

    trials_file = Path(hparams["trials_file"])
    manifests = Path(hparams["manifest_folder"]).resolve()
    if (not trials_file.is_file() and hparams.get("prepare_demo")
            and trials_file.resolve() == manifests / "trials.txt"
            and manifests == (Path(hparams["data_folder"]) / "manifests").resolve()):
        prepare_builtin(hparams["data_folder"], hparams["manifest_folder"],
                        corpus_seed=int(hparams["corpus_seed"]), prep_seed=int(hparams["prep_seed"]))
    if not trials_file.is_file():
        raise BadInput(f"{trials_file}: trial list not found")
    id_to_wav = read_test_csv(hparams["test_csv"]) if hparams.get("test_csv") else None

    trials, problems = read_trials(trials_file, hparams.get("test_root"), id_to_wav)
    lengths, audio_problems, bad = check_audio([(t[5], t[3:5]) for t in trials])
    problems += audio_problems
    trials = [t for t in trials if t[5] not in bad]
    if problems and not skip_bad:
        raise BadInput(problems)
    if problems:
        logger.warning("skipping %d bad trial line(s):\n%s", len(problems), report(problems))
    check_classes(trials, trials_file)

    cohort = None
    if norm != "none":
        cohort = read_cohort(hparams["cohort_csv"], int(hparams.get("cohort_utts_per_spk") or 0))
        c_lengths, c_problems, c_bad = check_audio([(w, [p]) for p, _, w in cohort])
        if c_problems and not skip_bad:
            raise BadInput(c_problems)
        problems += c_problems
        cohort = [c for c in cohort if c[2] not in c_bad]
        if not cohort:
            raise BadInput(f"{hparams['cohort_csv']}: no usable cohort utterances")

    out_dir = Path(hparams["output_folder"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model_hash = model_fingerprint(model_dir)
    crops = (int(hparams["num_crops"]), int(hparams["crop_frames"])) if mode == "ten_crop" else None
    mode_key = f"crops{crops[0]}x{crops[1]}" if crops else f"full_max{hparams['max_seconds']:g}s"
    cache = EmbeddingCache(Path(hparams["cache_dir"]) / model_hash[:16] / mode_key)
    embed = Embedder(load_encoder(model_dir, device), cache, crops,
                     float(hparams["batch_seconds"]), float(hparams["max_seconds"]))

    keys, enrol, test = index_trials([(t[3], t[4]) for t in trials])
    wheres = {}
    for t in trials:
        wheres.setdefault(t[3], t[5])
        wheres.setdefault(t[4], t[5])
    emb, (hits, computed) = embed(keys, lengths, wheres, desc="test embeddings")
    if crops:
        scores = scoring.ten_crop_scores(emb, enrol, test)
    else:
        scores = scoring.cosine_scores(emb, enrol, test)

    cohort_info = None
    if cohort is not None:
        c_emb, (c_hits, c_computed) = embed(
            [c[0] for c in cohort], c_lengths, {c[0]: c[2] for c in cohort},
            desc="cohort embeddings")
        speakers, means = scoring.speaker_means(c_emb, [c[1] for c in cohort])
        top_n = int(hparams["cohort_top_n"]) if norm == "asnorm" else None
        scores = scoring.score_norm(scores, emb, enrol, test, means, top_n=top_n)
        hits, computed = hits + c_hits, computed + c_computed
        cohort_info = {"cohort_csv": str(hparams["cohort_csv"]), "speakers": len(speakers),
                       "utterances": len(cohort), "top_n": top_n}

    labels = np.array([t[0] for t in trials])
    metrics = metrics_of(scores, labels)
    metrics["options"] = {
        "pretrained_path": str(Path(model_dir).resolve()),
        "model_hash": model_hash,
        "trials_file": str(trials_file.resolve()),
        "score_mode": mode,
        "num_crops": crops[0] if crops else None,
        "crop_frames": crops[1] if crops else None,
        "norm": norm,
        "cohort": cohort_info,
    }
    metrics["embedding_cache"] = {"hits": hits, "computed": computed, "dir": str(cache.folder)}
    metrics["skipped"] = {"count": len(problems), "problems": problems[:100]}
    metrics["seconds"] = round(time.time() - t0, 2)

    atomic_write_text(
        out_dir / "scores.txt",
        "".join(f"{t[0]} {s!r} {t[1]} {t[2]}\n" for t, s in zip(trials, scores.tolist())),
    )
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot(scores, labels, metrics, out_dir / "det_and_scores.png")

    if problems:
        print(f"skipped {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}:\n"
              f"{report(problems)}")
    print(f"embeddings: {hits} from cache, {computed} computed ({cache.folder})")
    print(f"trials: {metrics['n_trials']} ({metrics['n_target']} target, "
          f"{metrics['n_nontarget']} non-target); score_mode={mode}, norm={norm}")
    print(f"EER: {metrics['EER_percent']:.4f}% (threshold {metrics['EER_threshold']:.6f})")
    print(f"minDCF(p=0.01): {metrics['minDCF_p0.01']:.4f}")
    print(f"minDCF(p=0.05): {metrics['minDCF_p0.05']:.4f}")
    print(f"outputs: {out_dir}")
    return metrics


def main(argv=None):
    """Command-line entry point; bad input exits with code 2 and no traceback."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        hparams, run_opts = load_hparams(sys.argv[1:] if argv is None else argv)
    except Exception as err:  # unreadable yaml, missing --pretrained_path, ...
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    device = run_opts["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        return run(hparams, device)
    except BadInput as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

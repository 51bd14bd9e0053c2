#!/usr/bin/env python3
"""Score a speaker-verification trial list with an exported embedding model.

    python speaker_verification_cosine.py hparams/verification.yaml --pretrained_path DIR

``DIR`` (from the training recipe, the export or the converter) is loaded safely unless
``--trust_model_dir True``. By default the built-in corpus's test trials are scored
(generated when missing); ``--trials_file`` (+ ``--test_root``), ``--manifest_folder`` or
``--test_csv`` point elsewhere. Scoring: full-utterance cosine or the authors' multi-crop
protocol (``--score_mode ten_crop``), optionally S-norm / AS-norm (``--norm asnorm``).
Embeddings are cached per model, mode and file. Outputs: ``scores.txt``, ``metrics.json``,
``det_and_scores.png``. Bad input: one ``file:line: what`` error, exit code 2.
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.demo_corpus import prepare_builtin
from maskproxy_losses.data.audio import SAMPLE_RATE
from maskproxy_losses.data.trials import (
    index_trials,
    read_manifest_wavs,
    usable_speaker_wavs,
    usable_trials,
)
from maskproxy_losses.inference.api import check_device
from maskproxy_losses.inference.embedding import (
    Embedder,
    EmbeddingCache,
    cache_folder,
    embed_rows,
    embed_trials,
    model_fingerprint,
)
from maskproxy_losses.inference.model_dir import load_encoder
from maskproxy_losses.scoring import cosine as scoring
from maskproxy_losses.scoring.calibration import calibration_for
from maskproxy_losses.scoring.plots import plot_det_and_scores, plot_embedding_map
from maskproxy_losses.scoring.qmf import QMF_FILE, fit_qmf, indexed_quality, qmf_for
from maskproxy_losses.scoring.report import assess, verification_summary
from maskproxy_losses.training.options import split_arguments
from maskproxy_losses.utils.errors import InputError, run_cli
from maskproxy_losses.utils.files import atomic_write_lines, atomic_write_text
from maskproxy_losses.utils.precision import resolve_precision

logger = logging.getLogger(__name__)


def check_options(hparams):
    """The scoring options, checked before any work: ``(mode, norm, crops)``."""
    mode = hparams["score_mode"]
    if mode not in ("cosine", "ten_crop"):
        raise InputError(f"score_mode must be cosine or ten_crop, got {mode!r}")
    norm = str(hparams.get("norm") or "none").lower()
    if norm not in ("none", "snorm", "asnorm"):
        raise InputError(f"norm must be none, snorm or asnorm, got {norm!r}")
    if not Path(hparams["pretrained_path"]).is_dir():
        raise InputError(f"{hparams['pretrained_path']}: pretrained_path is not a directory")
    crops = (int(hparams["num_crops"]), int(hparams["crop_frames"])) if mode == "ten_crop" else None
    return mode, norm, crops


def load_trials(hparams, skip_bad):
    """The usable trials, the samples of each file, and the problems skipped."""
    trials_file = Path(hparams["trials_file"])
    manifests = Path(hparams["manifest_folder"]).resolve()
    if (
        not trials_file.is_file()
        and hparams.get("prepare_demo")
        and trials_file.resolve() == manifests / "trials.txt"
        and manifests == (Path(hparams["data_folder"]) / "manifests").resolve()
    ):
        prepare_builtin(
            hparams["data_folder"],
            hparams["manifest_folder"],
            corpus_seed=int(hparams["corpus_seed"]),
            prep_seed=int(hparams["prep_seed"]),
        )
    if not trials_file.is_file():
        raise InputError(f"{trials_file}: trial list not found")
    id_to_wav = read_manifest_wavs(hparams["test_csv"]) if hparams.get("test_csv") else None
    return usable_trials(trials_file, hparams.get("test_root"), id_to_wav, skip_bad)


def load_cohort(hparams, norm, skip_bad):
    """``((cohort rows, samples by path), problems)`` for S-norm / AS-norm, or None."""
    if norm == "none":
        return None, []
    per_spk = int(hparams.get("cohort_utts_per_spk") or 0)
    rows, lengths, problems = usable_speaker_wavs(hparams["cohort_csv"], per_spk, skip_bad)
    return (rows, lengths), problems


def build_embedder(hparams, device, crops):
    """``(embedder, cache, precision, model hash)`` of the model to score with."""
    model_dir = hparams["pretrained_path"]
    encoder = load_encoder(model_dir, device, trust=bool(hparams.get("trust_model_dir")))
    model_hash = model_fingerprint(model_dir)
    precision, why = resolve_precision(hparams.get("precision") or "auto", device)
    logger.info("embedding precision: %s (%s)", precision, why)
    max_s, batch_s = float(hparams["max_seconds"]), float(hparams["batch_seconds"])
    cache = EmbeddingCache(cache_folder(hparams["cache_dir"], model_hash, crops, max_s, precision))
    resample = bool(hparams.get("resample", True))  # False: refuse other rates / stereo
    embed = Embedder(encoder, cache, crops, batch_s, max_s, precision, resample)
    return embed, cache, precision, model_hash


def score(embed, trials, lengths, cohort, hparams, norm, source=None):
    """``(trials, scores, counts, cohort summary, problems, quality)``: raw (cosine or
    ten-crop) scores, normalised against the cohort's speaker means when asked; counts are
    cache hits / computed; with ``skip_bad`` trials and cohort rows whose audio embeds to
    NaN / Inf are dropped (``problems``), else such a file stops the run, named by its
    line; the trials' durations and embedding norms (for QMF)."""
    skip = bool(hparams.get("skip_bad", False))
    trials, emb, enrol, test, counts, problems = embed_trials(
        embed, trials, lengths, source or hparams["trials_file"], skip
    )
    keys, _, _ = index_trials((t.enrol_path, t.test_path) for t in trials)  # emb's rows
    quality = indexed_quality(emb, [lengths[k] / SAMPLE_RATE for k in keys], enrol, test)
    scores = (scoring.ten_crop_scores if emb.ndim == 3 else scoring.cosine_scores)(emb, enrol, test)
    if cohort is None:
        return trials, scores, counts, None, problems, quality
    rows, c_emb, c_counts, c_problems = embed_rows(embed, *cohort, skip)
    speakers, means = scoring.speaker_means(c_emb, [r[1] for r in rows])
    top_n = int(hparams["cohort_top_n"]) if norm == "asnorm" else None
    scores = scoring.score_norm(scores, emb, enrol, test, means, top_n=top_n)
    counts = (counts[0] + c_counts[0], counts[1] + c_counts[1])
    info = {"cohort_csv": str(hparams["cohort_csv"]), "speakers": len(speakers)}
    info.update(utterances=len(rows), top_n=top_n)
    return trials, scores, counts, info, problems + c_problems, quality


def fit_qmf_on(hparams, embed, cohort, mode, norm, out_dir, skip_bad):
    """``(QMF, its file)`` fitted on ``qmf_fit_trials`` scored as the test trials (same
    mode, normalisation and cohort), saved as ``out_dir/qmf.json``."""
    trials, lengths, _ = usable_trials(hparams["qmf_fit_trials"], None, None, skip_bad)
    source = hparams["qmf_fit_trials"]
    trials, scores, _, _, _, quality = score(embed, trials, lengths, cohort, hparams, norm, source)
    labels, source = [t.label for t in trials], str(Path(hparams["qmf_fit_trials"]).resolve())
    qmf = fit_qmf(scores, labels, quality, hparams["qmf_features"], source=source)
    qmf.meta = {"score_mode": mode, "norm": norm}
    qmf.save(out_dir / QMF_FILE)
    return qmf, str(out_dir / QMF_FILE)


def embedding_map(hparams, embed, out_dir):
    """Draw ``embedding_map.png``: a t-SNE map of per-speaker test utterances."""
    map_csv, per_spk = hparams["embedding_map_csv"], int(hparams["embedding_map_utts_per_spk"])
    rows, map_lengths, _ = usable_speaker_wavs(map_csv, per_spk, False, "embedding_map_csv")
    rows, map_emb, _, _ = embed_rows(embed, rows, map_lengths, desc="embedding map")
    if map_emb.ndim == 3:  # ten_crop: one embedding per file, the mean of its crops
        map_emb = scoring.l2_normalize(map_emb).mean(axis=1)
    if len(map_emb) < 3:
        raise InputError(f"{map_csv}: an embedding map needs at least 3 files")
    plot_embedding_map(map_emb, [r[1] for r in rows], out_dir / "embedding_map.png")


def run(hparams, device="cpu"):
    """Score the trials described by ``hparams``; write outputs; return the metrics."""
    t0, skip_bad = time.time(), bool(hparams.get("skip_bad", False))
    mode, norm, crops = check_options(hparams)
    embed, cache, precision, model_hash = build_embedder(hparams, device, crops)  # model first
    model_dir = hparams["pretrained_path"]  # its JSON files are read before any embedding
    calibration, calibration_file = calibration_for(
        model_dir, mode, norm, hparams.get("calibration")
    )
    if not hparams.get("qmf_fit_trials"):  # the model directory's, a file, or none
        qmf, qmf_file = qmf_for(model_dir, mode, norm, hparams.get("qmf"))
    out_dir = Path(hparams["output_folder"])
    out_dir.mkdir(parents=True, exist_ok=True)
    trials, lengths, problems = load_trials(hparams, skip_bad)
    cohort, c_problems = load_cohort(hparams, norm, skip_bad)
    trials, scores, (hits, computed), cohort_info, bad, quality = score(
        embed, trials, lengths, cohort, hparams, norm
    )
    problems += c_problems + bad
    labels = np.array([t.label for t in trials])
    if hparams.get("qmf_fit_trials"):  # e.g. the AS-normalised dev trials
        qmf, qmf_file = fit_qmf_on(hparams, embed, cohort, mode, norm, out_dir, skip_bad)
    metrics = assess(scores, labels, quality, calibration, qmf)
    calibrated = bool((qmf or calibration) and hparams.get("calibrated_scores"))
    written = (qmf(scores, quality) if qmf else calibration(scores)) if calibrated else scores
    metrics["options"] = {
        "pretrained_path": str(Path(hparams["pretrained_path"]).resolve()),
        "model_hash": model_hash,
        "trials_file": str(Path(hparams["trials_file"]).resolve()),
        "score_mode": mode,
        **dict(zip(("num_crops", "crop_frames"), crops or (None, None))),
        "norm": norm,
        "cohort": cohort_info,
        "calibration": calibration_file,
        "qmf": qmf_file,
        "precision": precision,
        "scores_txt": ("QMF LLR" if qmf else "calibrated LLR") if calibrated else "raw score",
    }
    metrics["embedding_cache"] = {"hits": hits, "computed": computed, "dir": str(cache.folder)}
    metrics["skipped"] = {"count": len(problems), "problems": problems[:100]}
    metrics["seconds"] = round(time.time() - t0, 2)
    lines = (f"{t.label} {float(s)!r} {t.enrol} {t.test}\n" for t, s in zip(trials, written))
    atomic_write_lines(out_dir / "scores.txt", lines)  # streamed: a long list stays small
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_det_and_scores(scores, labels, out_dir / "det_and_scores.png")
    if hparams.get("embedding_map"):
        embedding_map(hparams, embed, out_dir)
    summary = verification_summary(metrics, problems, cache.folder, calibration_file, qmf_file)
    print(summary + f"\noutputs: {out_dir}")
    return metrics


def load_hparams(argv):
    """``sb.parse_arguments`` + ``load_hyperpyyaml``; problems become ``InputError``. A
    ``--precision`` given to SpeechBrain's parser wins over the yaml's."""
    hparams_file, run_opts, overrides = split_arguments(argv)  # no option twice
    try:
        with open(hparams_file, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f, overrides)
    except Exception as err:  # unreadable yaml, missing --pretrained_path, ...
        if isinstance(err, OSError):
            raise
        raise InputError(str(err).strip() or type(err).__name__) from None
    if "precision" in run_opts.overridden_args:
        hparams["precision"] = run_opts.precision
    return hparams, run_opts


def verify(argv):
    """Score a trial list as the command line ``argv`` says; return the metrics."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    hparams, run_opts = load_hparams(argv)
    device = check_device(run_opts["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    return run(hparams, device)


def main(argv=None):
    """Command-line entry point: 0, or 2 after one ``error:`` line for bad input."""
    return run_cli(lambda args: verify(args) and 0, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

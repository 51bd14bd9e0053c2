#!/usr/bin/env python3
"""Score a speaker-verification trial list with an exported embedding model.

    python speaker_verification_cosine.py hparams/verification.yaml --pretrained_path DIR

``DIR`` is a directory written by ``maskproxy_losses.export`` or the converter. Its
``hyperparams.yaml`` is checked against what the export writes before it is loaded
(``--trust_model_dir True`` skips that check for a directory whose author you trust).
By default the built-in corpus's test trials are scored (the corpus and its manifests
are generated when missing); ``--trials_file`` (+ ``--test_root``), ``--manifest_folder``
or ``--test_csv`` point it elsewhere. Scoring is full-utterance cosine (``--score_mode
cosine``) or the authors' multi-crop protocol (``--score_mode ten_crop --num_crops 10
--crop_frames 400``), optionally S-norm / AS-norm against per-speaker means of
``cohort_csv`` (``--norm asnorm``).

Embeddings are cached under ``cache_dir`` per model (hash of the model files), mode and
file (path, mtime, size), so rerunning with another scoring option does not re-embed.
Outputs in ``output_folder``: ``scores.txt``, ``metrics.json``, ``det_and_scores.png``.
Bad input (malformed trial lines, missing / unreadable / too short audio, bad labels, an
empty or one-class list) is reported as ``file:line: what`` with exit code 2 (a
traceback only with ``--debug``); ``--skip_bad True`` drops the bad trials.
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.demo_corpus import prepare_builtin
from maskproxy_losses import scoring
from maskproxy_losses.audio import probe_entries
from maskproxy_losses.calibration import calibration_for, calibration_metrics, min_cllr
from maskproxy_losses.embedding import Embedder, EmbeddingCache, cache_folder, model_fingerprint
from maskproxy_losses.errors import InputError, report, run_cli
from maskproxy_losses.files import atomic_write_text
from maskproxy_losses.model_dir import load_encoder
from maskproxy_losses.plotting import plot_det_and_scores, plot_embedding_map
from maskproxy_losses.precision import resolve_precision
from maskproxy_losses.trials import (
    check_classes,
    index_trials,
    read_manifest_wavs,
    read_trials,
    usable_speaker_wavs,
)

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
    trials, problems = read_trials(trials_file, hparams.get("test_root"), id_to_wav)
    lengths, audio_problems, bad = probe_entries([(t[5], t[3:5]) for t in trials])
    problems += audio_problems
    trials = [t for t in trials if t[5] not in bad]
    if problems and not skip_bad:
        raise InputError(problems)
    if problems:
        logger.warning("skipping %d bad trial line(s):\n%s", len(problems), report(problems))
    check_classes(trials, trials_file)
    return trials, lengths, problems


def run(hparams, device="cpu"):
    """Score the trials described by ``hparams``; write outputs; return the metrics."""
    t0 = time.time()
    skip_bad = bool(hparams.get("skip_bad", False))
    mode, norm, crops = check_options(hparams)
    model_dir = hparams["pretrained_path"]
    encoder = load_encoder(model_dir, device, trust=bool(hparams.get("trust_model_dir")))
    out_dir = Path(hparams["output_folder"])
    out_dir.mkdir(parents=True, exist_ok=True)
    trials, lengths, problems = load_trials(hparams, skip_bad)
    cohort = None
    if norm != "none":
        per_spk = int(hparams.get("cohort_utts_per_spk") or 0)
        cohort, c_lengths, c_problems = usable_speaker_wavs(
            hparams["cohort_csv"], per_spk, skip_bad
        )
        problems += c_problems

    model_hash = model_fingerprint(model_dir)
    precision, why = resolve_precision(hparams.get("precision") or "auto", device)
    logger.info("embedding precision: %s (%s)", precision, why)
    max_s = float(hparams["max_seconds"])
    cache = EmbeddingCache(cache_folder(hparams["cache_dir"], model_hash, crops, max_s, precision))
    embed = Embedder(encoder, cache, crops, float(hparams["batch_seconds"]), max_s, precision)

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
            [c[0] for c in cohort],
            c_lengths,
            {c[0]: c[2] for c in cohort},
            desc="cohort embeddings",
        )
        speakers, means = scoring.speaker_means(c_emb, [c[1] for c in cohort])
        top_n = int(hparams["cohort_top_n"]) if norm == "asnorm" else None
        scores = scoring.score_norm(scores, emb, enrol, test, means, top_n=top_n)
        hits, computed = hits + c_hits, computed + c_computed
        cohort_info = {
            "cohort_csv": str(hparams["cohort_csv"]),
            "speakers": len(speakers),
            "utterances": len(cohort),
            "top_n": top_n,
        }

    labels = np.array([t[0] for t in trials])
    metrics = scoring.verification_metrics(scores, labels)
    calibration, calibration_file = calibration_for(
        model_dir, mode, norm, hparams.get("calibration")
    )
    metrics.update(
        calibration_metrics(scores, labels, calibration)
        if calibration
        else {"minCllr": min_cllr(scores, labels)}
    )
    written = calibration(scores) if calibration and hparams.get("calibrated_scores") else scores
    metrics["options"] = {
        "pretrained_path": str(Path(model_dir).resolve()),
        "model_hash": model_hash,
        "trials_file": str(Path(hparams["trials_file"]).resolve()),
        "score_mode": mode,
        "num_crops": crops[0] if crops else None,
        "crop_frames": crops[1] if crops else None,
        "norm": norm,
        "cohort": cohort_info,
        "calibration": calibration_file,
        "precision": precision,
        "scores_txt": "calibrated LLR" if written is not scores else "raw score",
    }
    metrics["embedding_cache"] = {"hits": hits, "computed": computed, "dir": str(cache.folder)}
    metrics["skipped"] = {"count": len(problems), "problems": problems[:100]}
    metrics["seconds"] = round(time.time() - t0, 2)

    atomic_write_text(
        out_dir / "scores.txt",
        "".join(f"{t[0]} {s!r} {t[1]} {t[2]}\n" for t, s in zip(trials, written.tolist())),
    )
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_det_and_scores(scores, labels, out_dir / "det_and_scores.png")
    if hparams.get("embedding_map"):
        map_csv, per_spk = hparams["embedding_map_csv"], int(hparams["embedding_map_utts_per_spk"])
        rows, map_lengths, _ = usable_speaker_wavs(map_csv, per_spk, False, "embedding_map_csv")
        map_emb, _ = embed([r[0] for r in rows], map_lengths, desc="embedding map")
        if map_emb.ndim == 3:  # ten_crop: one embedding per file, the mean of its crops
            map_emb = scoring.l2_normalize(map_emb).mean(axis=1)
        if len(map_emb) < 3:
            raise InputError(f"{map_csv}: an embedding map needs at least 3 files")
        plot_embedding_map(map_emb, [r[1] for r in rows], out_dir / "embedding_map.png")

    if problems:
        print(
            f"skipped {len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}:\n"
            f"{report(problems)}"
        )
    print(f"embeddings: {hits} from cache, {computed} computed ({cache.folder})")
    print(
        f"trials: {metrics['n_trials']} ({metrics['n_target']} target, "
        f"{metrics['n_nontarget']} non-target); score_mode={mode}, norm={norm}"
    )
    print(f"EER: {metrics['EER']:.4f}% (threshold {metrics['EER_threshold']:.6f})")
    print(f"minDCF(p=0.01): {metrics['minDCF_0.01']:.4f}")
    print(f"minDCF(p=0.05): {metrics['minDCF_0.05']:.4f}")
    if calibration:
        print(
            f"Cllr: {metrics['Cllr']:.4f} (min {metrics['minCllr']:.4f}), actDCF(p=0.01): "
            f"{metrics['actDCF_0.01']:.4f}, actDCF(p=0.05): {metrics['actDCF_0.05']:.4f} "
            f"(calibration: {calibration_file})"
        )
    print(f"outputs: {out_dir}")
    return metrics


def load_hparams(argv):
    """``sb.parse_arguments`` + ``load_hyperpyyaml``; problems become ``InputError``."""
    try:
        hparams_file, run_opts, overrides = sb.parse_arguments(argv)
        with open(hparams_file, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f, overrides)
    except OSError:
        raise
    except Exception as err:  # unreadable yaml, missing --pretrained_path, ...
        raise InputError(str(err).strip() or type(err).__name__) from None
    return hparams, run_opts


def main(argv=None):
    """Command-line entry point: bad input exits with code 2 and one ``error:`` line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def _main(args):
        hparams, run_opts = load_hparams(args)
        device = run_opts["device"] or ("cuda:0" if torch.cuda.is_available() else "cpu")
        if "precision" in run_opts.overridden_args:  # SpeechBrain's --precision wins
            hparams["precision"] = run_opts.precision
        return run(hparams, device)

    return run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()

"""``maskproxy embed | enrol | identify | verify``: a model directory applied to audio files.

::

    maskproxy embed MODEL_DIR --wav-list wavs.txt --output emb.npz
    maskproxy enrol MODEL_DIR --speakers enrol.txt --output speakers.npz
    maskproxy identify MODEL_DIR --speakers speakers.npz --dir test/ --top-k 3
    maskproxy verify MODEL_DIR a.wav b.wav --p-target 0.01

Embeddings are cached in a per-user folder (``~/.cache/maskproxy/embeddings``, see
:func:`~maskproxy_losses.inference.embedding.default_cache_dir`) that the verification
recipe uses too, so either reuses what the other computed. Every file is checked before
anything is embedded; a bad one is named as ``list:line``. Files at another sample rate
than 16 kHz are resampled and stereo files mixed down, with a note (``--no-resample``
refuses them). The work is done by :mod:`maskproxy_losses.inference.api`
and :mod:`maskproxy_losses.inference.speakers`.
"""

import io
import os
import sys
import time

from maskproxy_losses.cli.common import (
    add_model_options,
    check_output,
    number,
    positive_int,
    probability,
)
from maskproxy_losses.utils.errors import InputError

__all__ = ["build"]


def _resample_option(parser):
    parser.add_argument(
        "--no-resample",
        action="store_true",
        help="refuse audio that is not 16 kHz mono instead of resampling it to 16 kHz and "
        "averaging its channels (the default, as SpeechBrain's load_audio does)",
    )


def _audio_options(parser, inputs):
    add_model_options(parser)
    _resample_option(parser)
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
        default=None,
        metavar="D",
        help="embedding cache, shared with the verification recipe (default: the per-user "
        "$MASKPROXY_CACHE_DIR, $XDG_CACHE_HOME/maskproxy/embeddings or "
        "~/.cache/maskproxy/embeddings)",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop bad audio files (missing, unreadable, too short, NaN / Inf samples or "
        "embedding) with a warning instead of stopping",
    )
    parser.add_argument(
        "--batch-seconds",
        type=number,
        default=200.0,
        metavar="S",
        help="padded audio per batch, a memory bound (default 200; 0 = one file per batch, "
        "no padding)",
    )
    parser.add_argument(
        "--max-seconds",
        type=number,
        default=300.0,
        metavar="S",
        help="longer files are embedded as the mean of chunks of at most S seconds "
        "(bounded memory; default 300)",
    )


def build(name, parser):
    """Add ``name``'s options to ``parser``; return its ``run(args)``."""
    if name == "embed":
        parser.description = (
            "Embed audio files (any sample rate: resampled to 16 kHz, channels averaged) into "
            "OUT.npz holding 'paths' (as given), 'embeddings' [N, D] float32 (raw: not "
            "length-normalised) and the quality measures of quality-aware calibration "
            "(qmf.json): 'durations' (seconds) and 'norms' (of the raw embeddings). Every file "
            "is checked before anything is embedded."
        )
        _audio_options(parser, inputs=True)
        parser.add_argument("--output", required=True, metavar="OUT.npz", help="the .npz to write")
        return _run_embed
    if name == "enrol":
        parser.description = (
            "Read 'speaker_id wav_path' lines (several per speaker; paths relative to the "
            "file's folder) and store one model per speaker: the mean of its length-normalised "
            "utterance embeddings. SPEAKERS.npz holds speaker_ids, models [S, D], counts and the "
            "model's fingerprint (identify refuses a speakers file enrolled with another model)."
        )
        _audio_options(parser, inputs=False)
        parser.add_argument(
            "--speakers", required=True, metavar="FILE", help="lines 'speaker_id wav_path'"
        )
        parser.add_argument(
            "--output", required=True, metavar="SPEAKERS.npz", help="the .npz to write"
        )
        return _run_enrol
    if name == "identify":
        parser.description = (
            "Score each audio file against every enrolled speaker model (cosine) and report the "
            "top-k. When MODEL_DIR has calibration.json the calibrated LLR (scale * score + "
            "offset) and the accept / reject decision at the Bayes threshold of --p-target are "
            "reported too (fitted on single-utterance trials: read them as approximate for "
            "models averaged over several utterances)."
        )
        _audio_options(parser, inputs=True)
        parser.add_argument("wavs", nargs="*", metavar="WAV", help="audio files (or --wav-list)")
        parser.add_argument(
            "--speakers", required=True, metavar="SPEAKERS.npz", help="the output of 'enrol'"
        )
        parser.add_argument(
            "--top-k", type=positive_int, default=5, metavar="K", help="speakers per file (5)"
        )
        _p_target(parser)
        parser.add_argument(
            "--output", metavar="OUT.tsv", help="write the table here (default: stdout)"
        )
        return _run_identify
    parser.description = (
        "Score two audio files with MODEL_DIR: the cosine of their embeddings and, when "
        "MODEL_DIR has qmf.json (quality-aware: the score, both durations and embedding norms) "
        "or calibration.json, the calibrated LLR and the accept / reject decision at the Bayes "
        "threshold of --p-target."
    )
    add_model_options(parser)
    _resample_option(parser)
    parser.add_argument("wav1", metavar="WAV1")
    parser.add_argument("wav2", metavar="WAV2")
    _p_target(parser)
    return _run_verify


def _p_target(parser):
    parser.add_argument(
        "--p-target",
        type=probability,
        default=0.01,
        metavar="P",
        help="target prior of the accept decision (default 0.01)",
    )


def _inputs(args):
    """The ``(given, path, where)`` entries named by --wav-list, --dir or WAV arguments."""
    from maskproxy_losses.inference.inputs import read_wav_list, scan_dir

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
        + (" or WAV arguments" if hasattr(args, "wavs") else "")
    )


def _check_output(args, entries, *inputs):
    """``check_output`` of ``--output`` against the model, the lists and the audio files."""
    from maskproxy_losses.inference.model_dir import model_inputs

    named = [*model_inputs(args.model_dir), *inputs]
    named += [(getattr(args, "wav_list", None), "the wav list")]
    check_output(args.output, named, listed=(e[-2] for e in entries))


def _load(args):
    from maskproxy_losses.inference.api import load_model

    return load_model(args.model_dir, args.device, args.trust_model_dir)


def _note(stats):
    if stats.get("note"):
        print(f"note: {stats['note']}", file=sys.stderr)


def _embed_entries(args, model, entries):
    """``(embeddings, stats, kept entries)``; with ``--skip-bad`` the bad files are
    dropped, and named in one warning."""
    from maskproxy_losses.inference.api import embed_files
    from maskproxy_losses.inference.embedding import default_cache_dir
    from maskproxy_losses.utils.errors import report

    stats = {}
    emb = embed_files(
        model,
        [e[-2] for e in entries],
        cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        batch_seconds=args.batch_seconds,
        max_seconds=args.max_seconds,
        wheres=[e[-1] for e in entries],
        stats=stats,
        precision=args.precision,
        skip_bad=args.skip_bad,
        resample=not args.no_resample,
    )
    _note(stats)
    if stats["skipped"]:
        print(f"warning: skipping bad files; {report(stats['skipped'])}", file=sys.stderr)
    return emb, stats, [entries[i] for i in stats["kept"]]


def _summary(what, emb, stats, t0):
    where = f" ({stats['cache']})" if stats["cache"] else " (no cache)"
    return (
        f"{what}: {emb.shape[0]} files, {emb.shape[1]} dims; embeddings {stats['hits']} "
        f"from cache, {stats['computed']} computed{where}; {time.time() - t0:.1f} s"
    )


def _run_embed(args):
    import numpy as np

    from maskproxy_losses.utils.files import atomic_write_bytes

    t0 = time.time()
    entries = _inputs(args)
    _check_output(args, entries)
    model = _load(args)
    emb, stats, entries = _embed_entries(args, model, entries)
    buf = io.BytesIO()
    np.savez(
        buf,
        paths=np.array([e[0] for e in entries], dtype=str),
        embeddings=emb,
        durations=np.asarray(stats["seconds"], dtype=np.float32),
        norms=np.linalg.norm(emb, axis=1).astype(np.float32),
        model_fingerprint=np.array(model.fingerprint),
    )
    atomic_write_bytes(args.output, buf.getvalue())
    print(_summary("embedded", emb, stats, t0))
    print(f"written: {args.output}")
    return 0


def _run_enrol(args):
    from maskproxy_losses.inference.inputs import drop_repeated_enrolments, read_speaker_list
    from maskproxy_losses.inference.speakers import enrol_speakers, save_speakers

    t0 = time.time()
    rows, warnings = drop_repeated_enrolments(read_speaker_list(args.speakers))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    _check_output(args, rows, (args.speakers, "the speaker list"))
    model = _load(args)
    emb, stats, kept = _embed_entries(args, model, rows)
    lost = sorted({r[0] for r in rows} - {r[0] for r in kept})
    if lost:
        print(f"warning: not enrolled (no usable utterance): {', '.join(lost)}", file=sys.stderr)
    ids, models, counts = enrol_speakers(emb, [r[0] for r in kept])
    save_speakers(args.output, ids, models, counts, model.fingerprint)
    print(_summary("enrolment utterances", emb, stats, t0))
    print(
        f"enrolled {len(ids)} speakers ({int(counts.min())} to {int(counts.max())} "
        f"utterances each); written: {args.output}"
    )
    return 0


def _calibration(args):
    """The model directory's calibration (or None), with a warning when it was fitted on
    other scores than full-utterance cosine ones."""
    from maskproxy_losses.scoring.calibration import load_model_calibration

    calibration = load_model_calibration(args.model_dir)
    if calibration is not None:
        mode, norm = calibration.meta.get("score_mode"), calibration.meta.get("norm")
        if mode not in (None, "cosine") or norm not in (None, "none"):
            print(
                f"warning: {args.model_dir}/calibration.json was fitted on score_mode={mode}, "
                f"norm={norm}; these are full-utterance cosine scores",
                file=sys.stderr,
            )
    return calibration


def _run_identify(args):
    from maskproxy_losses.inference.speakers import load_speakers, top_speakers
    from maskproxy_losses.scoring.calibration import bayes_threshold
    from maskproxy_losses.utils.files import atomic_write_text

    t0 = time.time()
    entries = _inputs(args)
    if args.output:
        _check_output(args, entries, (args.speakers, "the speakers file"))
    model = _load(args)
    ids, models, _ = load_speakers(args.speakers, model.fingerprint)
    calibration = _calibration(args)
    emb, stats, entries = _embed_entries(args, model, entries)
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
    return 0


def _run_verify(args):
    from maskproxy_losses.data.audio import conversion_note
    from maskproxy_losses.inference.api import verify_pair

    note = None if args.no_resample else conversion_note([args.wav1, args.wav2])
    result = verify_pair(
        _load(args),
        args.wav1,
        args.wav2,
        p_target=args.p_target,
        precision=args.precision,
        calibration=_calibration(args),
        resample=not args.no_resample,
    )
    _note({"note": note})
    print(f"score: {result.score:.6f} (cosine)")
    if result.llr is None:
        print(
            f"no calibration: {args.model_dir} has no qmf.json or calibration.json, so no decision"
        )
    else:
        decision = "accept (same speaker)" if result.accept else "reject (different speakers)"
        how = "qmf.json" if result.calibrated_with == "qmf" else "calibration.json"
        print(
            f"llr: {result.llr:.4f} ({how}); {decision} at p_target {args.p_target:g} "
            f"(threshold {result.threshold:.4f})"
        )
    return 0

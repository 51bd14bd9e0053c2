"""``maskproxy prepare``: VoxCeleb-style lists or trees -> SpeechBrain CSV manifests.

::

    maskproxy prepare --train-root vox2/dev/wav --train-list train_list.txt \
        --trials veri_test2.txt --test-root vox1/test/wav --output-dir manifests

Writes train.csv, dev.csv, dev_trials.txt and, with --trials, test.csv and trials.txt
(:func:`data_prep.voxceleb.prepare_voxceleb`); a rerun with the same inputs reuses them.
"""

import logging

from maskproxy_losses.cli.common import non_negative_int, positive_int

__all__ = ["build"]


def _share(text):
    """``--dev-share``: an integer count or a float share."""
    return int(text) if text.isdigit() else float(text)


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Write SpeechBrain CSVs (ID,duration,wav,spk_id) and trial lists from VoxCeleb lists "
        "or a <spk>/<session>/<utt>.wav tree: train.csv, dev.csv, dev_trials.txt and, with "
        "--trials, test.csv and trials.txt. Convert VoxCeleb2 m4a first: maskproxy transcode."
    )
    parser.add_argument(
        "--train-root", required=True, help="folder the training paths are relative to"
    )
    parser.add_argument(
        "--train-list", help="'spk_id relpath' lines; without it --train-root is scanned"
    )
    parser.add_argument("--trials", help="'label relpath1 relpath2' lines (e.g. veri_test2.txt)")
    parser.add_argument(
        "--test-root", help="folder the trial paths are relative to (default: --train-root)"
    )
    parser.add_argument("--output-dir", required=True, help="where the CSVs and lists go")
    parser.add_argument(
        "--dev-share",
        type=_share,
        default=0.05,
        help="share (0.05) or per-speaker count (3) of utterances held out as dev",
    )
    parser.add_argument(
        "--n-dev-trials", type=positive_int, default=10000, help="balanced dev trials (10000)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=1234, help="dev split seed")
    parser.add_argument(
        "--skip-bad", action="store_true", help="drop bad entries instead of failing"
    )
    parser.add_argument(
        "--num-workers", type=positive_int, default=2, help="processes reading audio headers"
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="accept audio at other sample rates or with several channels and write 16 kHz "
        "mono copies of it to OUTPUT_DIR/resampled_16k for the manifests (default: refuse it)",
    )
    parser.add_argument("--force", action="store_true", help="redo even if up to date")
    return run


def run(args):
    """Prepare the manifests; print what was written."""
    from data_prep.voxceleb import prepare_voxceleb

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    out = prepare_voxceleb(
        args.output_dir,
        args.train_root,
        args.test_root,
        args.train_list,
        args.trials,
        args.dev_share,
        args.n_dev_trials,
        args.seed,
        args.skip_bad,
        args.num_workers,
        skip_if_done=not args.force,
        resample=args.resample,
    )
    print("\n".join(f"{key}: {path}" for key, path in out.items()))
    return 0

"""``maskproxy demo-corpus``: write the built-in synthetic corpus (VoxCeleb list formats).

::

    maskproxy demo-corpus --output-dir data/demo_corpus --baseline

The generator is :mod:`data_prep.demo_corpus`; the training recipe makes this corpus by
itself when it trains on the built-in data.
"""

from maskproxy_losses.cli.common import non_negative_int, number, positive_int

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Generate the built-in synthetic corpus (wav/, train_list.txt, veri_list.txt in "
        "VoxCeleb formats). Resumable; a finished corpus with the same options is reused."
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-speakers", type=positive_int, default=60)
    parser.add_argument("--test-speakers", type=positive_int, default=20)
    parser.add_argument("--utterances", type=positive_int, default=20, help="per speaker")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--num-workers", type=positive_int, default=2)
    parser.add_argument("--min-duration", type=number, default=2.0, help="seconds")
    parser.add_argument("--max-duration", type=number, default=6.0, help="seconds")
    parser.add_argument("--n-trials", type=positive_int, default=4000)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="print the EER of the mean-log-mel cosine baseline on veri_list.txt",
    )
    return run


def run(args):
    """Generate the corpus; print its paths (and the baseline EER)."""
    from data_prep.demo_corpus import baseline_eer, generate_corpus

    paths = generate_corpus(
        args.output_dir,
        args.train_speakers,
        args.test_speakers,
        args.utterances,
        args.seed,
        args.num_workers,
        args.min_duration,
        args.max_duration,
        args.n_trials,
    )
    print("\n".join(f"{key}: {path}" for key, path in paths.items()))
    if args.baseline:
        eer = baseline_eer(paths["trials"], paths["wav_root"])
        print(f"baseline EER (mean log-mel cosine): {100 * eer:.2f}%")
    return 0

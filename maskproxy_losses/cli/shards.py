"""``maskproxy shards``: a training manifest -> WebDataset tar shards + ``shards.json``.

::

    maskproxy shards manifests/train.csv manifests/shards --shard-size 1000

The recipe reads them with ``--train_shards manifests/shards/shards.json`` (or writes them
itself with ``--write_shards True``). The work is :func:`data_prep.shards.write_shards`.
"""

import logging

from maskproxy_losses.cli.common import non_negative_int, positive_int

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Write a training manifest (train.csv) as WebDataset tar shards with a shards.json "
        "index, for the training recipe's --train_shards. Resumable after a kill; a rerun "
        "with the same manifest and options reuses the shards."
    )
    parser.add_argument(
        "train_csv", metavar="TRAIN_CSV", help="the manifest (ID,duration,wav,spk_id)"
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder of the shards")
    parser.add_argument(
        "--shard-size", type=positive_int, default=1000, help="utterances per shard, about (1000)"
    )
    parser.add_argument(
        "--block", type=positive_int, default=12, help="utterances per speaker run (12)"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the order (0)")
    parser.add_argument(
        "--num-workers", type=positive_int, default=1, help="processes writing shards (1)"
    )
    return run


def run(args):
    """Write the shards; print the index path."""
    from data_prep.shards import write_shards

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    print(
        write_shards(
            args.train_csv,
            args.output_dir,
            args.shard_size,
            args.block,
            args.seed,
            args.num_workers,
        )
    )
    return 0

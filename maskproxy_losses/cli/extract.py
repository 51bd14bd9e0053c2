"""``maskproxy extract``: embed a list of millions of files, as N resumable processes.

::

    maskproxy extract MODEL_DIR --wav-scp wav.scp --output-dir emb/ --shard 0/4   # x 4
    torchrun --nproc_per_node 4 -m maskproxy_losses extract MODEL_DIR --wav-scp wav.scp \\
        --output-dir emb/ --device cuda --num-workers 4

A command of its own rather than options of ``embed``: ``embed`` checks every file, then
holds every embedding in memory and writes one ``.npz``; this job writes Kaldi ark/scp
parts as it goes, in several processes, and resumes. The job is
:mod:`maskproxy_losses.inference.extract`; the model is loaded by
:func:`maskproxy_losses.inference.api.load_model`.

Example
-------
>>> from maskproxy_losses.cli import build_parser
>>> parser, _ = build_parser("extract")
>>> args = parser.parse_args(["model", "--wav-scp", "w.scp", "--output-dir", "o", "--shard", "1/4"])
>>> args.shard, args.part_size, args.num_workers, args.batch_seconds
('1/4', 10000, 2, 200.0)
"""

import os
import sys
import time

from maskproxy_losses.cli.common import add_model_options, non_negative_int, number, positive_int
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import check_not_input

__all__ = ["build"]


def build(name, parser):
    """Add ``extract``'s options to ``parser``; return its ``run(args)``."""
    parser.description = (
        "Embed the files of a Kaldi wav.scp ('key path' lines) or a wav list (one path per "
        "line, the path as key) into OUTPUT_DIR as Kaldi ark/scp parts of --part-size entries. "
        "Run it as N processes (--shard i/N, or under torchrun: RANK/WORLD_SIZE); each embeds "
        "every N-th part and records each finished part, so a rerun after a kill embeds only "
        "the missing parts. The process that finds every part finished writes "
        "OUTPUT_DIR/embeddings.scp, one index over all parts (kaldiio.load_scp reads it)."
    )
    add_model_options(parser)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--wav-scp", metavar="FILE", help="'key path' lines; paths relative to the file's folder"
    )
    group.add_argument(
        "--wav-list", metavar="FILE", help="one path per line (relative to the list's folder)"
    )
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="the job's folder")
    parser.add_argument(
        "--shard",
        metavar="i/N",
        help="embed parts i, i+N, i+2N, ... (default: RANK/WORLD_SIZE under torchrun, else 0/1)",
    )
    parser.add_argument(
        "--part-size",
        type=positive_int,
        default=10000,
        metavar="N",
        help="entries per part, the unit of resumption (default 10000; fixed per job)",
    )
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=2,
        metavar="W",
        help="DataLoader workers reading headers and audio (default 2; 0: this process)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=number,
        default=200.0,
        metavar="S",
        help="padded audio per batch (default 200; 0 = one file per batch; fixed per job)",
    )
    parser.add_argument(
        "--max-seconds",
        type=number,
        default=300.0,
        metavar="S",
        help="longer files are embedded as the mean of chunks of at most S seconds "
        "(default 300; fixed per job)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip missing or unreadable files (listed in OUTPUT_DIR/skipped.txt) instead of "
        "stopping at the first part that names one",
    )
    parser.add_argument(
        "--no-resample",
        action="store_true",
        help="refuse audio that is not 16 kHz mono instead of resampling / mixing it down "
        "(fixed per job)",
    )
    return _run


def _entries(args):
    from maskproxy_losses.inference.inputs import read_wav_list, read_wav_scp

    if args.wav_scp:
        return read_wav_scp(args.wav_scp)
    return read_wav_list(args.wav_list)  # the path as given is the key


def _check_outputs(args):
    """Refuse an output folder whose job files would overwrite the list or the model."""
    from maskproxy_losses.inference.extract import INDEX_NAME, JOB_NAME, PARTS, SKIPPED_NAME
    from maskproxy_losses.inference.model_dir import model_inputs

    inputs = [
        (args.wav_scp or args.wav_list, "the wav scp" if args.wav_scp else "the wav list"),
        *model_inputs(args.model_dir),
    ]
    for name in (JOB_NAME, INDEX_NAME, SKIPPED_NAME, PARTS):
        path = os.path.join(args.output_dir, name)
        check_not_input(path, inputs, "--output-dir", folder=name == PARTS)


def _device(device, shard_env):
    """``cuda`` under a launcher means this process's GPU, ``cuda:<LOCAL_RANK>``."""
    if shard_env and device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _run(args):
    from maskproxy_losses.inference.api import load_model
    from maskproxy_losses.inference.extract import extract, parse_shard, shard_from_env

    t0 = time.time()
    env = shard_from_env()
    if args.shard and env and parse_shard(args.shard) != env:
        raise InputError(
            f"--shard {args.shard} differs from the launcher's RANK/WORLD_SIZE {env[0]}/{env[1]}"
        )
    shard = parse_shard(args.shard) if args.shard else env or (0, 1)
    entries = _entries(args)
    _check_outputs(args)
    model = load_model(args.model_dir, _device(args.device, env), args.trust_model_dir)
    result = extract(
        model,
        entries,
        args.output_dir,
        shard=shard,
        part_size=args.part_size,
        batch_seconds=args.batch_seconds,
        max_seconds=args.max_seconds,
        precision=args.precision,
        num_workers=args.num_workers,
        skip_bad=args.skip_bad,
        resample=not args.no_resample,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(
        f"shard {shard[0]}/{shard[1]}: {result['embedded_parts']} parts embedded now "
        f"({result['embedded_files']} files, {result['skipped_files']} skipped), "
        f"{result['done_before']} finished before, of {result['mine']} parts of this shard "
        f"and {result['parts']} in the job; {time.time() - t0:.1f} s"
    )
    if result["merged"]:
        print(f"all parts finished; index: {result['merged']}")
    else:
        print("other shards' parts are not finished yet; the last process to finish merges")
    return 0

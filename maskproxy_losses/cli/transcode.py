"""``maskproxy transcode``: any audio tree (VoxCeleb2 m4a) -> 16 kHz mono 16-bit wav.

::

    maskproxy transcode vox2/dev/aac vox2/dev/wav --num-workers 8

Resumable (finished outputs are skipped); needs ffmpeg. The work is
:func:`data_prep.transcode.convert_tree`.
"""

import sys

from maskproxy_losses.cli.common import positive_int
from maskproxy_losses.utils.errors import MAX_LISTED

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Convert an audio tree (e.g. VoxCeleb2 m4a) to 16 kHz mono 16-bit wav with ffmpeg, "
        "keeping relative paths. Resumable: finished outputs are skipped. Exit status 0 when "
        "every file converted, 1 when some failed (listed), 2 on bad input."
    )
    parser.add_argument("src_dir", metavar="SRC_DIR")
    parser.add_argument("dst_dir", metavar="DST_DIR")
    parser.add_argument(
        "--num-workers", type=positive_int, default=2, help="parallel ffmpeg processes"
    )
    parser.add_argument("--ffmpeg", help="ffmpeg executable (default: ffmpeg on PATH)")
    return run


def run(args):
    """Convert the tree; 1 when some files failed."""
    from data_prep.transcode import convert_tree

    result = convert_tree(args.src_dir, args.dst_dir, args.num_workers, args.ffmpeg)
    print(
        f"converted {result['converted']}, skipped {result['skipped']} already done, "
        f"failed {len(result['failed'])}"
    )
    for msg in result["failed"][:MAX_LISTED]:
        print(f"  {msg}", file=sys.stderr)
    return 1 if result["failed"] else 0

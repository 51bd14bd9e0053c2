"""Any audio tree (VoxCeleb2 m4a) -> 16 kHz mono 16-bit wav via ffmpeg, resumable.

Command line: ``maskproxy transcode SRC_DIR DST_DIR [--num-workers N] [--ffmpeg X]``.
Each output is written to a hidden temporary (``.tmp-<pid>-...``) and renamed into
place, so a killed run leaves no half-written wav; the next run removes such
temporaries and converts only the missing files.
"""

import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from data_prep.tree_walk import walk_audio
from maskproxy_losses.data.audio import SAMPLE_RATE
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import check_writable_dir, remove_stale_temps, temp_path

logger = logging.getLogger(__name__)

__all__ = ["FfmpegNotFoundError", "CONVERT_EXTS", "convert_tree"]

CONVERT_EXTS = (".m4a", ".aac", ".mp4", ".mp3", ".ogg", ".opus", ".flac", ".wav", ".webm")
FFMPEG_HINT = (
    "ffmpeg was not found on PATH; it is needed to convert m4a/aac audio. Install it, e.g. "
    "`sudo apt-get install ffmpeg` (Debian/Ubuntu), `conda install -c conda-forge ffmpeg` "
    "or `brew install ffmpeg` (macOS), or pass --ffmpeg /path/to/ffmpeg."
)


class FfmpegNotFoundError(InputError):
    """ffmpeg is needed by ``convert_tree`` and is not installed."""


def _convert_one(ffmpeg, src, dst):
    """Convert one file; return None or an error message."""
    part = temp_path(dst)
    cmd = [
        ffmpeg,
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        src,
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-acodec",
        "pcm_s16le",
        "-f",
        "wav",
        part,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.isfile(part):
        if os.path.exists(part):
            os.remove(part)
        return f"{src}: ffmpeg exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    os.replace(part, dst)
    return None


def convert_tree(src_dir, dst_dir, num_workers=2, ffmpeg=None):
    """Convert every audio file under ``src_dir`` to 16 kHz mono wav under ``dst_dir``.

    Same relative paths with a ``.wav`` suffix; finished outputs are skipped, so an
    interrupted run resumes. Returns ``{"converted", "skipped", "failed": [messages]}``.
    Raises ``FfmpegNotFoundError`` when ffmpeg is not installed and ``InputError`` when
    ``src_dir`` is not a folder or ``dst_dir`` cannot be written.
    """
    exe = shutil.which(ffmpeg or "ffmpeg")
    if exe is None:
        raise FfmpegNotFoundError(FFMPEG_HINT)
    if not os.path.isdir(src_dir):
        raise InputError(f"{src_dir}: source folder not found")
    check_writable_dir(dst_dir, "destination folder")
    jobs, skipped, folders, refused, notes = [], 0, set(), [], []
    for src, rel in walk_audio(src_dir, CONVERT_EXTS, refused, notes):  # links: see tree_walk
        dst = os.path.join(dst_dir, os.path.splitext(rel)[0] + ".wav")
        if os.path.dirname(dst) not in folders:
            folders.add(os.path.dirname(dst))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            remove_stale_temps(os.path.dirname(dst))
        if os.path.isfile(dst):
            skipped += 1
        else:
            jobs.append((src, dst))
    for note in notes:
        logger.warning(note)
    failed = []
    with (
        ThreadPoolExecutor(max(1, num_workers)) as pool,
        tqdm(total=len(jobs), desc="converting", unit="file", disable=None) as bar,
    ):
        for err in pool.map(lambda job: _convert_one(exe, *job), jobs):
            if err:
                failed.append(err)
            bar.update()
    converted = len(jobs) - len(failed)
    return {"converted": converted, "skipped": skipped, "failed": refused + failed}

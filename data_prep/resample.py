"""16 kHz mono copies of training audio recorded otherwise (``maskproxy prepare --resample``).

Training reads 16 kHz mono files as they are, so data preparation refuses other audio
unless asked to convert it at preparation time: :func:`write_16k_copies` writes a 16 kHz
mono 16-bit copy of each such file under ``<output_dir>/resampled_16k/`` (resampled and
mixed down with SpeechBrain's ``AudioNormalizer``, as inference does) and the manifests name
the copies. A copy newer than its source is reused by a rerun.

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> d = tempfile.mkdtemp()
>>> src = os.path.join(d, "a.wav")
>>> sf.write(src, np.zeros((4410, 2)), 44100)
>>> copies = write_16k_copies([src], os.path.join(d, "out"))
>>> info = sf.info(copies[src])
>>> info.samplerate, info.channels, info.frames
(16000, 1, 1600)
"""

import hashlib
import os

import soundfile as sf

from maskproxy_losses.data.audio import SAMPLE_RATE, read_wav
from maskproxy_losses.utils.files import temp_path

__all__ = ["COPIES_FOLDER", "needs_conversion", "write_16k_copies"]

COPIES_FOLDER = "resampled_16k"


def needs_conversion(path):
    """True when ``path`` is not 16 kHz mono (by its header)."""
    info = sf.info(path)
    return info.samplerate != SAMPLE_RATE or info.channels != 1


def _copy_path(path, folder):
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    return os.path.join(folder, f"{digest}-{stem}.wav")


def write_16k_copies(paths, output_dir):
    """``{path: 16 kHz mono copy}`` for each of ``paths`` that is not 16 kHz mono; the
    copies are written (atomically) under ``output_dir/resampled_16k``."""
    folder = os.path.join(output_dir, COPIES_FOLDER)
    copies = {}
    for path in dict.fromkeys(paths):
        if not needs_conversion(path):
            continue
        dest = _copy_path(path, folder)
        copies[path] = dest
        if os.path.isfile(dest) and os.path.getmtime(dest) >= os.path.getmtime(path):
            continue
        os.makedirs(folder, exist_ok=True)
        tmp = temp_path(dest)
        try:
            wav = read_wav(path, convert=True).numpy()
            sf.write(tmp, wav.clip(-1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return copies

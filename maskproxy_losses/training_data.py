"""The training recipe's data pipeline: random crops for training, full files for scoring.

Both are SpeechBrain dynamic items (``DynamicItemDataset.add_dynamic_item``) taking the
manifest's ``wav`` (and ``duration``) and providing ``sig``.
"""

import math

import speechbrain as sb
import torch

from maskproxy_losses.audio import SAMPLE_RATE, crop_samples, read_wav

__all__ = ["random_crop_pipeline", "full_file_pipeline"]


def random_crop_pipeline(crop_frames):
    """Dynamic item: a random crop of ``crop_frames`` frames (start drawn from torch's RNG);
    files shorter than a crop wrap around."""
    crop = crop_samples(crop_frames)

    @sb.utils.data_pipeline.takes("wav", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def random_crop(wav, duration):
        n = int(round(float(duration) * SAMPLE_RATE))
        if n > crop:
            start = int(torch.randint(0, n - crop + 1, ()).item())
            return read_wav(wav, start, start + crop)
        sig = read_wav(wav)
        return sig.repeat(math.ceil(crop / max(len(sig), 1)))[:crop]

    return random_crop


def full_file_pipeline():
    """Dynamic item: the whole file."""

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def full_file(wav):
        return read_wav(wav)

    return full_file

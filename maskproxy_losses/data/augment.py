"""Noise and reverberation augmentation of training batches, from SpeechBrain's pieces.

:func:`build_augmenter` turns SpeechBrain augmentation CSVs (``ID,duration,wav,
wav_format,wav_opts``, e.g. from ``speechbrain.augment.preparation.prepare_csv``) into an
``Augmenter`` of ``AddNoise`` / ``AddReverb`` that works in place: each utterance keeps
its place and label, so the speaker-grouped batches hold. :func:`check_augment_csv`
checks a CSV before training starts and names every bad row as ``file:line``.
"""

import csv
import os

from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import AddNoise, AddReverb

from maskproxy_losses.data.crops import auto_num_workers
from maskproxy_losses.utils.errors import InputError

__all__ = ["AUGMENT_CSV_COLUMNS", "check_augment_csv", "build_augmenter"]

AUGMENT_CSV_COLUMNS = ("ID", "duration", "wav", "wav_format", "wav_opts")


def check_augment_csv(path, key):
    """Raise ``InputError`` naming ``file:line`` unless ``path`` is a SpeechBrain
    augmentation CSV whose rows point at existing audio files."""
    if not os.path.isfile(path):
        raise InputError([f"{path}: {key} not found"])
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [c for c in AUGMENT_CSV_COLUMNS if c not in header]
        if missing:  # SpeechBrain's augmentation CSV reader needs all five
            raise InputError(
                [
                    f"{path}:1: {key} lacks the column(s) {', '.join(missing)} "
                    f"(expected {','.join(AUGMENT_CSV_COLUMNS)}, as written by "
                    "speechbrain.augment.preparation.prepare_csv)"
                ]
            )
        problems, n_rows, wav = [], 0, header.index("wav")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            n_rows += 1
            if len(row) != len(header):
                problems.append(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            elif not os.path.isfile(row[wav]):
                problems.append(f"{path}:{lineno}: audio file not found: {row[wav]}")
    if not n_rows:
        problems.append(f"{path}: {key} lists no audio files")
    if problems:
        raise InputError(problems)


def build_augmenter(hparams, device="cpu"):
    """SpeechBrain ``Augmenter`` adding noise (``noise_csv``) and / or reverberation
    (``rir_csv``) in place, or None when neither CSV is given. The noise and impulse
    responses are read by ``augment_workers`` loader workers each (``auto``: 1 on a CPU,
    half the training loader's on a GPU; SpeechBrain's default, 0, reads them in the
    training thread)."""
    rate, augmentations = hparams["sample_rate"], []
    workers = hparams.get("augment_workers", "auto")
    workers = max(1, auto_num_workers("auto", device) // 2) if workers == "auto" else int(workers)
    if hparams.get("noise_csv"):
        check_augment_csv(hparams["noise_csv"], "noise_csv")
        augmentations.append(
            AddNoise(
                csv_file=hparams["noise_csv"],
                snr_low=hparams["snr_low"],
                snr_high=hparams["snr_high"],
                noise_sample_rate=rate,
                clean_sample_rate=rate,
                num_workers=workers,
            )
        )
    if hparams.get("rir_csv"):
        check_augment_csv(hparams["rir_csv"], "rir_csv")
        augmentations.append(
            AddReverb(
                csv_file=hparams["rir_csv"],
                reverb_sample_rate=rate,
                clean_sample_rate=rate,
                num_workers=workers,
            )
        )
    if not augmentations:
        return None
    return Augmenter(
        augmentations=augmentations,
        min_augmentations=1,
        max_augmentations=len(augmentations),
        shuffle_augmentations=True,
        augment_prob=hparams["augment_prob"],
    )

"""Speed perturbation of training crops, one speed per speaker group of a batch.

WeSpeaker and 3D-Speaker change the speed of training utterances by 0.9 / 1.0 / 1.1
and treat each perturbed speed as a new speaker (the number of classes triples). Here
the choice is made by :class:`~maskproxy_losses.SpeakerBatchSampler` with
``n_speeds=3``: for every speaker group of a batch it draws one speed index ``j`` and
yields the indices ``j * N + i`` (``N`` dataset items), so all ``k`` utterances of a
group share the speed and the batch still holds ``B`` distinct speakers.
:class:`SpeedPerturbedCrops` turns such an index back into item ``i`` read at speed
``speeds[j]``, with the label ``label + j * n_speakers`` when ``as_new_speaker`` (else
the speaker's own label).

The perturbation is SpeechBrain's: speed ``s`` (a percentage, as in
``speechbrain.augment.time_domain.SpeedPerturb``; 90 = slower and longer, 110 = faster)
is ``Resample(orig_freq=s, new_freq=100)``, which stretches ``n`` samples to about
``n * 100 / s``. Crops keep their length: :class:`SpeedCrop` reads a random crop of
``ceil(L * s / 100) + 1`` source samples, resamples it and keeps the first ``L``.
"""

import math

import torch
from speechbrain.augment.time_domain import Resample

from maskproxy_losses.data.audio import crop_samples
from maskproxy_losses.data.crops import RandomCrop

__all__ = ["SPEEDS", "SpeedCrop", "SpeedPerturbedCrops"]

SPEEDS = (100, 90, 110)  # index 0 is the original speed (labels 0 .. n_speakers - 1)


class SpeedCrop:
    """Callable ``(path, speed) -> crop`` of ``num_frames`` frames at ``speed`` percent."""

    def __init__(self, num_frames, speeds=SPEEDS):
        self.num_samples = crop_samples(int(num_frames))
        self.crops, self.resamplers = {}, {}
        for speed in speeds:
            source = math.ceil(self.num_samples * speed / 100) + 1 if speed != 100 else None
            self.crops[speed] = RandomCrop(num_frames if source is None else None, source)
            if speed != 100:
                self.resamplers[speed] = Resample(orig_freq=speed, new_freq=100)

    def __call__(self, path, speed, seed):
        sig = self.crops[speed](path, seed)
        if speed == 100:
            return sig
        with torch.no_grad():
            out = self.resamplers[speed](sig.unsqueeze(0)).squeeze(0)
        if out.shape[0] < self.num_samples:  # cannot happen with the +1 above; be safe
            out = torch.nn.functional.pad(out, (0, self.num_samples - out.shape[0]))
        return out[: self.num_samples].contiguous()


class SpeedPerturbedCrops(torch.utils.data.Dataset):
    """Items ``j * N + i`` = item ``i`` of ``dataset`` at speed ``speeds[j]``.

    Arguments
    ---------
    dataset : DynamicItemDataset
        Training items with ``id``, ``wav`` and ``spk_id_encoded`` output keys.
    num_frames : int
        Crop length in frames (the same for every speed).
    n_speakers : int
        Number of speakers (labels ``0 .. n_speakers - 1``).
    speeds : sequence of numbers
        Percentages; index 0 should be 100 (the unperturbed speed).
    as_new_speaker : bool
        Label ``label + j * n_speakers`` (``len(speeds) * n_speakers`` classes), or keep
        the speaker's label.
    """

    def __init__(self, dataset, num_frames, n_speakers, speeds=SPEEDS, as_new_speaker=True):
        self.dataset, self.n_items = dataset, len(dataset)
        self.speeds = tuple(speeds)
        self.n_speakers, self.as_new_speaker = int(n_speakers), bool(as_new_speaker)
        self.crop = SpeedCrop(num_frames, self.speeds)

    @property
    def n_classes(self):
        """Number of labels the items use."""
        return self.n_speakers * (len(self.speeds) if self.as_new_speaker else 1)

    def __len__(self):
        return self.n_items * len(self.speeds)

    def __getitem__(self, key):
        """``key``: ``(index, crop seed)`` from ``SeededBatches``."""
        index, seed = key
        j, i = divmod(int(index), self.n_items)
        item = self.dataset[i]
        label = item["spk_id_encoded"]
        if self.as_new_speaker:
            label = label + j * self.n_speakers
        return {
            "id": item["id"],
            "sig": self.crop(item["wav"], self.speeds[j], seed),
            "spk_id_encoded": label,
        }

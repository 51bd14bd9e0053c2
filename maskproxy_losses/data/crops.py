"""The training data path: random crops read from wav files, and a fast batch collate.

:class:`RandomCrop` and :class:`FullFile` are picklable callables (so DataLoader workers
started with ``spawn`` can use them too); :func:`full_file_item` wraps the second as a
SpeechBrain dynamic item providing ``sig`` from ``wav``. A crop of ``F`` frames is ``F *
160 + 240`` samples starting uniformly in ``[0, n - crop]``; only the crop's samples are
read. A file of ``n <= crop`` samples is read whole and wrapped around:
``sig.repeat(ceil(crop / n))[:crop]``.

Where the start comes from: ``RandomCrop(F)(path, seed)`` computes it from an integer
seed (never from a global RNG): :class:`SeededBatches` turns each index ``i`` of a batch
sampler into
``(i, crop_seed(seed, epoch, i))`` and :class:`SeededCrops` crops item ``i`` with that
seed, so the crop of an utterance is a function of (run seed, epoch, utterance) alone:
the same with any number of loader workers, under DDP whatever the rank, and after a
resume from an intra-epoch checkpoint (no RNG state to save).

Speed (one loader worker must feed >= 1,000 crops/s): the file is opened once with
``soundfile.SoundFile`` (its header gives the exact length, no ``duration`` needed), 16-bit
PCM is read as int16 and scaled by 2^-15 in numpy (exactly libsndfile's float values, at a
fraction of its conversion cost), and :class:`CropCollate` builds SpeechBrain's
``PaddedBatch`` with a padding function that stacks equal-length crops straight into
shared memory (no padding copy, no second copy when the batch leaves the worker).

What the GPU step must not wait for is decided here, on the host, in the loader worker:
with ``label_key`` the collate returns a :class:`GroupedBatch` that also carries the
speaker grouping of its labels (a
:class:`~maskproxy_losses.losses.grouping.SpeakerLayout` for the loss) and whether any
utterance is padded (``full_length``); with ``pin_memory`` (CUDA) the loader's pinning
thread puts both in page-locked memory ahead of use, so the step copies them with
``non_blocking=True``. :func:`auto_num_workers` sizes the loader for the machine.

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
>>> sf.write(path, np.arange(1000, dtype=np.int16), 16000, subtype="PCM_16")
>>> crop = RandomCrop(num_frames=2)(path, seed=7)  # 2 * 160 + 240 = 560 samples
>>> crop.shape, crop.dtype
(torch.Size([560]), torch.float32)
>>> start = int(crop[0] * 32768)
>>> bool((crop * 32768 == torch.arange(start, start + 560)).all())
True
>>> batch = CropCollate()([{"id": "a", "sig": crop}, {"id": "b", "sig": crop}])
>>> batch.sig.data.shape, batch.sig.lengths.tolist(), batch.id
(torch.Size([2, 560]), [1.0, 1.0], ['a', 'b'])
>>> items = [{"id": i, "sig": crop, "spk": torch.tensor([s])} for i, s in enumerate([4, 4, 2, 2])]
>>> batch = CropCollate(label_key="spk")(items)
>>> batch.layout.first.tolist(), batch.full_length
([0, 2], True)
"""

import math
import os

import numpy as np
import soundfile as sf
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.utils.data_pipeline import DynamicItem
from speechbrain.utils.data_utils import batch_pad_right

from maskproxy_losses.data.audio import SAMPLE_RATE, crop_samples
from maskproxy_losses.losses.grouping import speaker_layout

__all__ = [
    "RandomCrop",
    "FullFile",
    "full_file_item",
    "wrap_around",
    "stack_or_pad",
    "CropCollate",
    "GroupedBatch",
    "crop_seed",
    "SeededCrops",
    "SeededBatches",
    "train_loader_options",
    "auto_num_workers",
]

_PCM16_SCALE = np.float32(1.0 / 32768.0)  # libsndfile's int16 -> float normalisation
_MASK64 = (1 << 64) - 1


def _mix64(x):
    """SplitMix64's finaliser: a well-spread 64-bit integer from any integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def crop_seed(seed, epoch, index):
    """The crop seed of dataset item ``index`` in ``epoch`` of a run seeded ``seed``.

    >>> crop_seed(1986, 1, 5) == crop_seed(1986, 1, 5) != crop_seed(1986, 2, 5)
    True
    """
    return _mix64(_mix64(_mix64(int(seed) & _MASK64) ^ int(epoch)) ^ int(index))


def wrap_around(sig, num_samples):
    """``sig`` repeated until it holds ``num_samples`` samples, then cut there.

    >>> wrap_around(torch.tensor([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    """
    if sig.shape[0] == 0:
        raise ValueError("cannot wrap an empty signal around")
    return sig.repeat(math.ceil(num_samples / sig.shape[0]))[:num_samples]


def _open(path):
    f = sf.SoundFile(path)
    if f.samplerate != SAMPLE_RATE:
        f.close()
        raise ValueError(f"sample rate {f.samplerate} Hz, expected {SAMPLE_RATE}: {path}")
    return f


def _read(f, count):
    """``count`` samples from the current position of ``f``, mono float32 in [-1, 1]."""
    if f.channels == 1 and f.subtype == "PCM_16":
        raw = f.read(count, dtype="int16")
        return torch.from_numpy(np.multiply(raw, _PCM16_SCALE, dtype=np.float32))
    wav = f.read(count, dtype="float32", always_2d=True)
    return torch.from_numpy(wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0].copy())


class RandomCrop:
    """Callable ``(path, seed) -> crop``: the crop of ``num_frames`` frames (``num_frames *
    160 + 240`` samples; or ``num_samples`` samples) that ``seed`` picks (see the module).
    """

    def __init__(self, num_frames=None, num_samples=None):
        if (num_frames is None) == (num_samples is None):
            raise ValueError("give num_frames or num_samples")
        self.num_samples = int(num_samples) if num_frames is None else crop_samples(num_frames)

    def __call__(self, path, seed):
        """The crop of ``path`` whose start the integer ``seed`` gives (uniform over the
        starts to within 2^-40)."""
        crop = self.num_samples
        with _open(path) as f:
            n = f.frames
            if n > crop:
                f.seek(_mix64(int(seed)) % (n - crop + 1))
                return _read(f, crop)
            sig = _read(f, n)
        return wrap_around(sig, crop)  # short file: wrap around

    def __repr__(self):
        return f"RandomCrop(num_samples={self.num_samples})"


class FullFile:
    """Callable ``path -> waveform``: the whole file, mono float32."""

    def __call__(self, path):
        with _open(path) as f:
            return _read(f, f.frames)

    def __repr__(self):
        return "FullFile()"


def full_file_item(takes="wav", provides="sig"):
    """SpeechBrain dynamic item: ``provides`` = the whole file ``takes`` (:class:`FullFile`)."""
    return DynamicItem(takes=[takes], func=FullFile(), provides=[provides])


def stack_or_pad(tensors, mode="constant", value=0):
    """``(batch, relative lengths)`` like SpeechBrain's ``batch_pad_right``, fast for
    equal shapes: those are stacked with ``default_collate`` (inside a DataLoader worker
    straight into shared memory, so the batch is not copied again to leave the worker).

    >>> batch, lens = stack_or_pad([torch.ones(3), torch.zeros(3)])
    >>> batch.tolist(), lens.tolist()
    ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [1.0, 1.0])
    >>> stack_or_pad([torch.ones(2), torch.ones(1)])[1].tolist()
    [1.0, 0.5]
    """
    first = tensors[0].shape
    if all(t.shape == first for t in tensors):
        return torch.utils.data.default_collate(list(tensors)), torch.ones(len(tensors))
    return batch_pad_right(tensors, mode=mode, value=value)


class GroupedBatch(PaddedBatch):
    """SpeechBrain's ``PaddedBatch`` with two facts worked out on the host: ``layout``, the
    :class:`~maskproxy_losses.losses.grouping.SpeakerLayout` of the ``label_key`` values
    (None without one), and ``full_length``, True when no utterance is padded. ``to`` and
    ``pin_memory`` move the layout with the batch."""

    def __init__(self, examples, label_key=None, **kwargs):
        super().__init__(examples, **kwargs)
        self.layout = None
        if label_key is not None:
            self.layout = speaker_layout([int(example[label_key]) for example in examples])
        self.full_length = all(
            bool((value.lengths == 1).all())
            for value in self
            if hasattr(value, "lengths") and torch.is_tensor(value.lengths)
        )

    def pin_memory(self):
        super().pin_memory()
        if self.layout is not None:
            self.layout = self.layout.pin_memory()
        return self

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        if self.layout is not None:
            self.layout = self.layout.to(*args, **kwargs)
        return self


class CropCollate:
    """DataLoader ``collate_fn``: SpeechBrain's ``PaddedBatch`` built with
    :func:`stack_or_pad` (same batch object, same values as the default collate); with
    ``label_key`` a :class:`GroupedBatch` carrying the speaker grouping of those labels.

    Pass it as ``collate_fn`` in the training loader options.
    """

    def __init__(self, label_key=None):
        self.label_key = label_key

    def __call__(self, examples):
        if self.label_key is None:
            return PaddedBatch(examples, padding_func=stack_or_pad)
        return GroupedBatch(examples, self.label_key, padding_func=stack_or_pad)

    def __repr__(self):
        return f"CropCollate(label_key={self.label_key!r})"


class SeededCrops(torch.utils.data.Dataset):
    """Map-style dataset over ``(index, seed)`` keys: item ``index`` of ``dataset`` (a dict,
    e.g. from a ``DynamicItemDataset``) with its ``takes`` path replaced by ``provides``,
    the :class:`RandomCrop` of ``num_frames`` frames drawn with ``seed``.

    Keys come from :class:`SeededBatches`; ``dataset`` outputs ``takes`` (default ``wav``).
    """

    def __init__(self, dataset, num_frames, takes="wav", provides="sig"):
        self.dataset, self.takes, self.provides = dataset, takes, provides
        self.crop = RandomCrop(num_frames)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        item = dict(self.dataset[index])
        item[self.provides] = self.crop(item.pop(self.takes), seed)
        return item


class SeededBatches(torch.utils.data.Sampler):
    """Batch sampler yielding ``[(i, crop_seed(seed, epoch, i)), ...]`` for each batch of
    ``sampler`` (a batch sampler with ``set_epoch``, e.g. ``SpeakerBatchSampler``), for a
    :class:`SeededCrops` dataset. An item seen twice in an epoch gets the same crop.
    """

    def __init__(self, sampler, seed):
        self.sampler, self.seed, self.epoch = sampler, int(seed), 0

    def set_epoch(self, epoch):
        """Select the epoch, here and in the wrapped sampler."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for batch in self.sampler:
            yield [(i, crop_seed(self.seed, self.epoch, i)) for i in batch]

    def __len__(self):
        return len(self.sampler)


def train_loader_options(sampler, num_workers, seed, pin_memory=False, label_key=None):
    """Training DataLoader options for a :class:`SeededCrops` dataset: the batches of
    ``sampler`` with their crop seeds, the fast collate (with the speaker grouping of
    ``label_key`` when given), loader workers kept alive across epochs (new ones every
    epoch cost seconds on a small CPU), batches pinned when ``pin_memory`` (CUDA). A
    sharded training set (``maskproxy_losses.data.shards``) batches itself and gives its
    own options (and always gives the speaker grouping)."""
    if hasattr(sampler, "loader_options"):
        return sampler.loader_options(pin_memory=pin_memory)
    return {
        "batch_sampler": SeededBatches(sampler, seed),
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "collate_fn": CropCollate(label_key),
        "pin_memory": bool(pin_memory),
    }


def auto_num_workers(value, device="cpu", cpus=None, processes=None):
    """Loader workers for ``value``: an integer as given, or ``"auto"``: on a CPU device
    1 (one worker reads over 1,000 crops/s, far more than a CPU trains), on a GPU half of
    this process's share of the CPU cores, 2 to 8 (one worker reads about 1,500 crops/s
    of 350 frames: ``docs/results.md``, data path; the rest is headroom for
    augmentation and shared cores). ``cpus`` defaults to the cores this process may run
    on, ``processes`` to ``LOCAL_WORLD_SIZE`` (1).

    >>> auto_num_workers("auto", "cuda:0", cpus=16), auto_num_workers("auto", "cpu")
    (8, 1)
    >>> auto_num_workers("auto", "cuda:0", cpus=96, processes=8), auto_num_workers(3)
    (6, 3)
    """
    if value != "auto":
        return int(value)
    if not str(device).startswith("cuda"):
        return 1
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(2, min(8, (cpus or 1) // max(processes, 1) // 2))

"""Speaker-grouped batch sampler for the MP / MMP / AP losses.

Every batch holds ``speakers_per_batch`` distinct speakers, each with a group of
consecutive utterances (the first is the loss's query, the rest its anchor):
exactly ``k`` utterances when ``utts_per_speaker`` is an int (the ``_balance``
trainfuncs), or a count drawn per speaker per epoch from a tuple such as ``(2, 3)``.

Use it as a PyTorch / SpeechBrain ``batch_sampler``. Under DDP every rank gets
disjoint batches and the same number of them.

Example
-------
>>> spk = ["a"] * 4 + ["b"] * 4 + ["c"] * 5
>>> sampler = SpeakerBatchSampler(spk, speakers_per_batch=2, utts_per_speaker=2, seed=1)
>>> len(sampler)
3
>>> batch = next(iter(sampler))
>>> len(batch), len({spk[i] for i in batch})
(4, 2)
"""

import bisect
import logging

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["SpeakerBatchSampler"]

logger = logging.getLogger(__name__)


class SpeakerBatchSampler(Sampler):
    """Batches of distinct speakers with a group of utterances each.

    Arguments
    ---------
    speakers : sequence
        The speaker of every dataset item (any hashable ids), in dataset order.
    speakers_per_batch : int
        ``B``, the number of distinct speakers in a batch.
    utts_per_speaker : int or sequence of int
        Group size ``k`` (balanced), or the sizes drawn from per speaker per epoch.
        Every size must be >= 2.
    max_per_speaker : int or None
        At most this many utterances of a speaker are used per epoch.
    seed : int
        Base seed; the order depends only on ``seed`` and the epoch.
    num_replicas, rank : int or None
        DDP world size and rank; taken from ``torch.distributed`` when None.
    n_speeds : int
        With ``n_speeds > 1`` (speed perturbation), each speaker group gets a speed index
        ``j`` drawn uniformly from ``0 .. n_speeds - 1`` and its items are yielded as
        ``j * len(speakers) + i`` (read by
        :class:`~maskproxy_losses.data.speed_perturb.SpeedPerturbedCrops`): all utterances of
        a group share the speed. 1 (default): plain indices, and the batches are those of
        a sampler without the option.
    """

    def __init__(
        self,
        speakers,
        speakers_per_batch,
        utts_per_speaker=2,
        max_per_speaker=100,
        seed=0,
        num_replicas=None,
        rank=None,
        n_speeds=1,
    ):
        sizes = (
            (utts_per_speaker,) if isinstance(utts_per_speaker, int) else tuple(utts_per_speaker)
        )
        if not sizes or min(sizes) < 2:
            raise ValueError(
                f"utts_per_speaker must be >= 2 (a query and an anchor), got {utts_per_speaker}"
            )
        if speakers_per_batch < 1:
            raise ValueError(f"speakers_per_batch must be >= 1, got {speakers_per_batch}")
        if max_per_speaker is not None and max_per_speaker < min(sizes):
            raise ValueError(
                f"max_per_speaker={max_per_speaker} is below the group size {min(sizes)}"
            )
        self.sizes = np.asarray(sorted(set(int(s) for s in sizes)))
        self.speakers_per_batch = int(speakers_per_batch)
        self.max_per_speaker = max_per_speaker
        self.seed = int(seed)
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._cache = None
        if int(n_speeds) < 1:
            raise ValueError(f"n_speeds must be >= 1, got {n_speeds}")
        self.n_speeds = int(n_speeds)

        speakers = list(speakers)
        self.n_items = len(speakers)
        _, inverse = np.unique(
            np.asarray(list(speakers), dtype=object).astype(str), return_inverse=True
        )
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        groups = np.split(order, bounds) if len(order) else []
        self.utts = [g for g in groups if len(g) >= self.sizes.min()]
        skipped = len(groups) - len(self.utts)
        if skipped:
            logger.warning(
                "SpeakerBatchSampler: skipping %d speaker(s) with fewer than %d utterances",
                skipped,
                self.sizes.min(),
            )
        if len(self.utts) < self.speakers_per_batch:
            raise ValueError(
                f"only {len(self.utts)} usable speakers, fewer than speakers_per_batch="
                f"{self.speakers_per_batch}"
            )

    def set_epoch(self, epoch):
        """Select the epoch (the batches are a function of ``seed`` and ``epoch``)."""
        self.epoch = int(epoch)

    def _world(self):
        if self.num_replicas is not None:
            return self.num_replicas, self.rank or 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _epoch_batches(self):
        """All batches of the current epoch (before the DDP split), cached."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        # 1. Each speaker's utterances shuffled, capped, cut into groups.
        groups = []  # (round, random key, speaker, indices)
        for spk, utts in enumerate(self.utts):
            utts = rng.permutation(utts)[: self.max_per_speaker]
            size = int(rng.choice(self.sizes))
            for j in range(len(utts) // size):
                group = utts[j * size : (j + 1) * size]
                if self.n_speeds > 1:  # one speed per group (drawn only when asked)
                    group = group + int(rng.integers(self.n_speeds)) * self.n_items
                groups.append((j, rng.random(), spk, group))
        # 2. Round by round (every speaker's j-th group), random order within a round;
        #    a group whose speaker is already in the open batch waits for the next one.
        rounds, keys = (np.fromiter((g[i] for g in groups), float, len(groups)) for i in (0, 1))
        groups = [groups[i] for i in np.lexsort((keys, rounds))]  # = sorted by (round, key)
        batches = _fill_batches(groups, self.speakers_per_batch)
        # 3. Batch order shuffled so that rounds do not line up with time.
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self):
        world, rank = self._world()
        batches = self._epoch_batches()
        usable = len(batches) - len(batches) % world
        return iter(batches[rank:usable:world])

    def __len__(self):
        world, _ = self._world()
        return len(self._epoch_batches()) // world


def _fill_batches(groups, size):
    """Batches of ``size`` groups of distinct speakers from ``groups`` (``(round, key,
    speaker, indices)``, in order): before each group, the waiting groups, oldest first,
    join the open batch when their speaker is not in it (a full batch is closed and a new
    one opened); then the group joins it, or waits when its speaker is in it.

    The waiting groups are kept per speaker, so a step costs the number of waiting
    speakers, not groups: a speaker with thousands of groups left in the last rounds (no
    ``max_per_speaker``) waits as one, and an epoch stays linear in the groups.

    >>> groups = [(0, 0.1, "a", [0]), (0, 0.2, "b", [1]), (1, 0.3, "a", [2]), (1, 0.4, "a", [3])]
    >>> _fill_batches(groups, 2)
    [[0, 1]]
    """
    batches, current, seen = [], [], set()
    waiting, order = {}, 0  # speaker -> ([order], [indices]), oldest first

    def join(spk, indices):
        current.append(indices)
        seen.add(spk)
        if len(current) == size:
            batches.append(np.concatenate(current).tolist())
            current.clear()
            seen.clear()

    for _, _, spk, indices in groups:
        done = -1  # the waiting groups are visited once, in order, as they would be in a list
        while True:
            best = None
            for s, (orders, _) in waiting.items():
                if s not in seen:
                    i = bisect.bisect_right(orders, done)
                    if i < len(orders) and (best is None or orders[i] < best[0]):
                        best = (orders[i], s, i)
            if best is None:
                break
            done, s, i = best
            orders, queue = waiting[s]
            del orders[i]
            join(s, queue.pop(i))
            if not orders:
                del waiting[s]
        if spk in seen:
            orders, queue = waiting.setdefault(spk, ([], []))
            orders.append(order)
            queue.append(indices)
            order += 1
        else:
            join(spk, indices)
    return batches

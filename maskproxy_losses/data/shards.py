"""Speaker-grouped training batches streamed from WebDataset shards (``data_prep.shards``).

:class:`ShardedSpeakerBatches` is an ``IterableDataset`` that yields finished batches
with the structure of the file path (:class:`~maskproxy_losses.data.sampler.SpeakerBatchSampler`
+ :class:`~maskproxy_losses.data.crops.SeededCrops`): ``B`` distinct speakers, each with
a group of ``k`` consecutive utterances (query first; ``k`` drawn per speaker per epoch
from ``utts_per_speaker``), as SpeechBrain ``PaddedBatch`` objects with ``id``, ``sig``
and ``spk_id_encoded``. The crop of an utterance is the file path's, ``RandomCrop`` with
``crop_seed(seed, epoch, row)`` (``row``: its row in ``train.csv``, the file path's index).

Planning. An epoch is planned from the shard index alone (no audio read), identically in
every process, from ``seed``, the epoch, the world size and ``W = max(1, num_workers)``:

1. per speaker a group size ``k``; the speaker's runs (its contiguous utterances in a
   shard, see ``data_prep.shards``) in random order fill its ``max_per_speaker`` (the last
   run used in part); per run a random order of its utterances, cut into groups of ``k``
   (the rest of the run is unused this epoch);
2. the shards, in random order, each go to whichever of the ``world_size x W`` *readers*
   has the fewest groups so far; a reader reads its shards one after another, each from
   start to end;
3. as a reader reads, each run's groups join a pool; whenever the pool holds
   ``pool_speakers`` (default ``2 B``) speakers, a batch takes one group from each of
   ``B`` speakers drawn at random; after the reader's last shard, batches take the ``B``
   speakers with the most groups left, while ``B`` have some;
4. every reader keeps its first ``M`` batches, ``M`` the fewest any reader formed: each
   rank yields exactly ``W x M`` batches (``len``), known before the epoch, so no rank
   waits for another at the end and no collective is needed per step.

Reading. Rank ``r``'s reader ``l`` serves the rank's batches ``l, l + W, l + 2W, ...``:
the order in which PyTorch's DataLoader takes batches from its ``W`` workers (round robin
from worker 0). Readers hold disjoint shards, so ranks and workers get disjoint
utterances. Only the utterances of kept batches are decoded, one crop each (kept as 16-bit
PCM where exact); a crop is held until its batch is yielded, so a reader buffers at most
about ``pool_speakers x`` (run length) crops (logged per epoch); a reader stops reading
after the last utterance it needs. Resume: ``set_epoch(epoch, skip=s)`` (the step of an
intra-epoch checkpoint, passed by :class:`EpochStart`) makes worker ``p`` serve reader
``(s + p) mod W`` from its batch ``(s + p) // W``: the rest of the epoch is the
uninterrupted run's; the audio of the skipped batches is not decoded, and shards holding
none of the remaining batches' utterances are not opened.

Randomness, against the file path (``SpeakerBatchSampler``). Drawn per epoch on both
paths: ``k`` per speaker, which utterances exceed ``max_per_speaker`` (here whole runs,
there single utterances), the utterances of each group, the crops. Fixed when the shards
are written, here only: which utterances share a run, so a group only holds utterances of
one run (with runs of 12, an utterance's group mates come from the same 11 in every epoch;
the file path draws them from all of the speaker's utterances), and which runs share a
shard. Drawn per epoch but differently: the shards' order and readers, and a batch's
speakers, which come from the about ``pool_speakers`` speakers whose runs were read last
(nearby batches share speakers), where the file path deals every speaker's groups into
rounds over all speakers and shuffles the batch order. Unused per epoch, here only: the
rest of each run beyond a multiple of ``k`` (the file path: of each speaker), the groups
left in a pool at its reader's end and the batches of readers beyond ``M``: on a
VoxCeleb2-sized index (5,994 speakers, 1.1 M utterances, ``B = 200``, ``k`` 2 or 3), 1 %
of the utterances ``max_per_speaker: 100`` selects with one reader, 8 % with 8 ranks x 8
workers (each reader forms 17 or 18 batches and keeps 17); the share is logged per epoch.
With ``max_per_speaker``, whole shards are still read (the unselected utterances are
skipped, not decoded).

Example
-------
>>> import os, tempfile, numpy as np, soundfile as sf
>>> from data_prep.shards import write_shards
>>> d = tempfile.mkdtemp()
>>> rows = ["ID,duration,wav,spk_id"]
>>> for i in range(12):
...     sf.write(f"{d}/{i}.wav", np.zeros(8000, dtype=np.int16), 16000)
...     rows.append(f"utt{i},0.5,{d}/{i}.wav,spk{i % 3}")
>>> _ = open(f"{d}/train.csv", "w").write("\\n".join(rows) + "\\n")
>>> index = write_shards(f"{d}/train.csv", f"{d}/shards", shard_size=4)
>>> data = ShardedSpeakerBatches(index, speakers_per_batch=3, utts_per_speaker=2, crop_frames=20)
>>> len(data)                          # batches per epoch: 3 speakers x 4 utterances / (3 x 2)
2
>>> batch = next(iter(data))
>>> batch.sig.data.shape, batch.spk_id_encoded.data.shape
(torch.Size([6, 3440]), torch.Size([6, 1]))
>>> labels = batch.spk_id_encoded.data[:, 0].tolist()
>>> labels[0::2] == labels[1::2] and len(set(labels)) == 3   # 3 speakers x 2, consecutive
True
"""

import heapq
import io
import json
import logging
import os
from collections import deque

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from data_prep.shards import read_index
from maskproxy_losses.data.audio import crop_samples
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.data.crops import CropCollate, RandomCrop, crop_seed

__all__ = ["ShardedSpeakerBatches", "EpochStart"]

logger = logging.getLogger(__name__)


_SCALE = 1.0 / 32768.0


def _compact(sig):
    """``sig`` as int16 when it holds 16-bit PCM values exactly (half the memory), else
    as is; :func:`_expand` restores the float32 values bit for bit."""
    pcm = (sig * 32768.0).to(torch.int16)  # exact for such values; the check catches others
    return pcm if torch.equal(pcm.to(torch.float32) * _SCALE, sig) else sig


def _expand(sig):
    return sig.to(torch.float32) * _SCALE if sig.dtype == torch.int16 else sig


def _pass_through(batch):
    """DataLoader ``collate_fn`` for items that already are batches."""
    return batch


class _Plan:
    """One epoch's plan for one rank: ``M`` batches per reader, the batches every reader
    formed, this rank's readers' shards and batches (lists of ``(run, group)``), the group
    size per speaker, the share of the epoch's selected utterances (``max_per_speaker``,
    speakers with a group) in batches and the most crops a reader buffers."""

    def __init__(self, m, formed, shards, batches, k, share, peak):
        self.m, self.formed, self.shards, self.batches, self.k = m, formed, shards, batches, k
        self.share, self.peak = share, peak


class ShardedSpeakerBatches(torch.utils.data.IterableDataset):
    """Speaker-grouped training batches read from shards (see the module docstring).

    Arguments
    ---------
    index_path : str
        ``shards.json`` written by ``data_prep.shards.write_shards``.
    speakers_per_batch : int
        ``B``, distinct speakers per batch.
    utts_per_speaker : int or sequence of int
        Group size ``k`` (>= 2), or the sizes drawn per speaker per epoch.
    max_per_speaker : int or None
        At most this many utterances of a speaker per epoch.
    crop_frames : int
        Crop length in frames (``F * 160 + 240`` samples).
    seed : int
        Run seed: the plan and the crops depend on it and on the epoch.
    num_workers : int
        DataLoader workers that will read this dataset (0: in the main process).
    labels : dict or None
        Speaker -> integer label; default: the index's speaker order.
    pool_speakers : int or None
        Speakers pooled before a batch is drawn (default ``2 B``).
    num_replicas, rank : int or None
        DDP world size and rank; from ``torch.distributed`` when None.
    """

    def __init__(
        self,
        index_path,
        speakers_per_batch,
        utts_per_speaker=2,
        max_per_speaker=100,
        crop_frames=200,
        seed=0,
        num_workers=0,
        labels=None,
        pool_speakers=None,
        num_replicas=None,
        rank=None,
    ):
        sizes = (utts_per_speaker,) if isinstance(utts_per_speaker, int) else utts_per_speaker
        self.sizes = np.asarray(sorted({int(s) for s in sizes}))
        if not len(self.sizes) or self.sizes.min() < 2:
            raise ValueError(f"utts_per_speaker must be >= 2, got {utts_per_speaker}")
        if max_per_speaker is not None and max_per_speaker < self.sizes.min():
            raise ValueError(f"max_per_speaker={max_per_speaker} is below the group size")
        self.index_path = os.path.abspath(index_path)
        self.batch = int(speakers_per_batch)
        self.pool = max(self.batch, int(pool_speakers or 2 * self.batch))
        self.cap = max_per_speaker
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.readers_per_rank = max(1, self.num_workers)
        if num_replicas is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            num_replicas, rank = (dist.get_world_size(), dist.get_rank()) if ready else (1, 0)
        self.world, self.rank = int(num_replicas), int(rank or 0)
        self.frames, self.crop = int(crop_frames), RandomCrop(crop_frames)
        self._load(read_index(self.index_path), labels)
        # epoch and batches to skip, shared with (persistent) DataLoader workers
        self._state = torch.tensor([1, 0], dtype=torch.int64).share_memory_()
        self._cache = None
        self._plan(1)  # fail now, not in a worker, when the readers cannot fill a batch

    def _load(self, index, labels):
        folder = os.path.dirname(self.index_path)
        self.speakers = list(index["speakers"])
        labels = labels or {s: i for i, s in enumerate(self.speakers)}
        self.labels = [int(labels[s]) for s in self.speakers]
        self.paths = [os.path.join(folder, s["path"]) for s in index["shards"]]
        runs = [(i, spk, n) for i, s in enumerate(index["shards"]) for spk, n in s["speakers"]]
        if not runs:
            raise InputError(f"{self.index_path}: no utterances")
        shard, spk, count = (np.asarray(c, dtype=np.int64) for c in zip(*runs))
        self.run_shard, self.run_spk, self.run_count = shard, spk, count
        self.n_utterances = int(count.sum())
        ends = np.cumsum(count)
        self.run_first_utt = ends - count  # over all shards
        shard_start = np.r_[0, np.cumsum([s["utterances"] for s in index["shards"]])][shard]
        self.run_pos = self.run_first_utt - shard_start  # position in its shard
        self.shard_runs = np.searchsorted(shard, np.arange(len(self.paths) + 1))
        total = np.bincount(spk, count, minlength=len(self.speakers))
        self.usable = total >= self.sizes.min()
        skipped = int((~self.usable & (total > 0)).sum())
        if skipped:
            logger.warning(
                "%s: skipping %d speaker(s) with fewer than %d utterances",
                self.index_path,
                skipped,
                self.sizes.min(),
            )
        if self.usable.sum() < self.batch:
            raise InputError(
                f"{self.index_path}: only {int(self.usable.sum())} usable speakers, fewer "
                f"than speakers_per_batch={self.batch}"
            )

    # ------------------------------------------------------------------ planning

    def _groups(self, epoch):
        """``(k per speaker, used utterances per run)`` of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        k = self.sizes[rng.integers(len(self.sizes), size=len(self.speakers))]
        used = self.run_count.copy()
        if self.cap is not None:  # whole runs in random order fill each speaker's cap
            order = np.lexsort((rng.random(len(used)), self.run_spk))
            counts, spk = used[order], self.run_spk[order]
            ends = np.cumsum(counts)
            first = np.r_[True, spk[1:] != spk[:-1]]
            before = ends - counts - np.maximum.accumulate(np.where(first, ends - counts, 0))
            used[order] = np.clip(self.cap - before, 0, counts)
        used[~self.usable[self.run_spk]] = 0
        return k, used

    def _simulate(self, epoch, reader, shards, groups):
        """The batches (lists of ``(run, group)``) reader ``reader`` forms from ``shards``,
        and the most groups its pool held."""
        rng = np.random.default_rng([self.seed, epoch, 2, reader])
        pool, members, batches, held, peak = {}, [], [], 0, 0

        def take(chosen):
            nonlocal members, held
            speakers = [members[i] for i in chosen]
            batches.append([pool[s].popleft() for s in speakers])
            held -= len(speakers)
            members = [s for s in members if pool[s]]
            for s in speakers:
                if not pool[s]:
                    del pool[s]

        for shard in shards:
            for run in range(self.shard_runs[shard], self.shard_runs[shard + 1]):
                n = int(groups[run])
                if not n:
                    continue
                spk = int(self.run_spk[run])
                if spk not in pool:
                    pool[spk] = deque()
                    members.append(spk)
                pool[spk].extend((run, j) for j in range(n))
                held += n
                peak = max(peak, held)
                while len(members) >= self.pool:
                    take(rng.choice(len(members), self.batch, replace=False))
        while len(members) >= self.batch:  # the end: the speakers with most groups first
            left = np.array([len(pool[s]) for s in members])
            take(np.lexsort((rng.random(len(members)), -left))[: self.batch])
        return batches, peak

    def _deal(self, rng, groups, n_readers):
        """The shards in random order, each to the reader with the fewest groups so far."""
        load = np.bincount(self.run_shard, groups, minlength=len(self.paths))
        heap, shards = [(0, r) for r in range(n_readers)], [[] for _ in range(n_readers)]
        for shard in rng.permutation(len(self.paths)).tolist():
            total, reader = heapq.heappop(heap)
            shards[reader].append(shard)
            heapq.heappush(heap, (total + int(load[shard]), reader))
        return shards

    def _plan(self, epoch):
        """The rank's :class:`_Plan` of ``epoch`` (cached)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        k, used = self._groups(epoch)
        groups = used // k[self.run_spk]
        n_readers = self.world * self.readers_per_rank
        shards = self._deal(np.random.default_rng([self.seed, epoch, 1]), groups, n_readers)
        formed = [self._simulate(epoch, r, shards[r], groups) for r in range(n_readers)]
        m = min(len(b) for b, _ in formed)
        if m == 0:
            raise InputError(
                f"{self.index_path}: {len(self.paths)} shard(s) for {self.world} rank(s) x "
                f"{self.readers_per_rank} reader(s) (loader workers): a reader forms no batch "
                f"of {self.batch} speakers in epoch {epoch}; write smaller shards "
                "(--shard_size) or use fewer workers"
            )
        mine = range(self.rank * self.readers_per_rank, (self.rank + 1) * self.readers_per_rank)
        sizes = k[self.run_spk]
        kept = sum(int(sizes[run]) for b, _ in formed for batch in b[:m] for run, _ in batch)
        share = kept / max(1, int(used.sum()))  # of the utterances max_per_speaker selected
        plan = _Plan(
            m,
            [len(b) for b, _ in formed],
            {r: shards[r] for r in mine},
            {r: formed[r][0][:m] for r in mine},
            k,
            share,
            max(p for _, p in formed) * int(self.sizes.max()),
        )
        self._cache = (epoch, plan)
        return plan

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch, skip=0):
        """Select the epoch and the number of its batches already done on this rank (from
        an intra-epoch checkpoint); effective at the next ``iter`` of the loader."""
        plan = self._plan(int(epoch))
        total = plan.m * self.readers_per_rank
        if not 0 <= skip <= total:
            raise ValueError(f"cannot skip {skip} of the epoch's {total} batches")
        self._state[0], self._state[1] = int(epoch), int(skip)
        logger.info(
            "shards, epoch %d: %d batches per rank (%d reader(s) x %d; readers formed %d-%d), "
            "%.1f %% of the utterances selected; at most %d crops (%.0f MB as 16-bit PCM) "
            "buffered per reader%s",
            epoch, total, self.readers_per_rank, plan.m, min(plan.formed), max(plan.formed),
            100 * plan.share, plan.peak,
            plan.peak * crop_samples(self.frames) * 2 / 1e6,
            f"; resuming after batch {skip}" if skip else "",
        )  # fmt: skip

    def __len__(self):
        return self._plan(int(self._state[0])).m * self.readers_per_rank

    def loader_options(self, pin_memory=False):
        """DataLoader options for this dataset (it yields finished batches, with the
        speaker grouping of their ``spk_id_encoded``, as the file-based collate gives)."""
        return {
            "batch_size": None,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": _pass_through,
            "pin_memory": bool(pin_memory),
        }

    def __iter__(self):
        epoch, skip = (int(x) for x in self._state.tolist())
        plan, w = self._plan(epoch), self.readers_per_rank
        first = self.rank * w
        info = torch.utils.data.get_worker_info()
        if info is None:  # the main process interleaves the readers as the workers would
            streams = {
                r: self._read(plan, epoch, first + r, (skip + (r - skip) % w) // w)
                for r in range(w)
            }
            for j in range(skip, plan.m * w):
                yield next(streams[j % w])
            return
        if info.num_workers != w:
            raise ValueError(
                f"the dataset was built for {self.num_workers} loader workers, the loader "
                f"has {info.num_workers}"
            )
        yield from self._read(plan, epoch, first + (skip + info.id) % w, (skip + info.id) // w)

    # ------------------------------------------------------------------ reading

    def _by_shard(self, plan, batches):
        """``({shard: [(batch, place, run, group), ...]}, batch sizes)``: the shard of every
        group of ``batches`` and the place of its first utterance in its batch."""
        groups, sizes = {}, []
        for b, batch in enumerate(batches):
            place = 0
            for run, j in batch:
                groups.setdefault(int(self.run_shard[run]), []).append((b, place, run, j))
                place += int(plan.k[self.run_spk[run]])
            sizes.append(place)
        return groups, sizes

    def _positions(self, plan, keys, groups):
        """``{position in the shard: (batch, place, speaker)}`` of a shard's ``groups``: each
        run's utterances in the epoch's order (sorted ``keys``), cut into groups of ``k``."""
        where = {}
        for b, place, run, j in groups:
            spk = int(self.run_spk[run])
            k, first, n = int(plan.k[spk]), int(self.run_first_utt[run]), int(self.run_count[run])
            order = np.argsort(keys[first : first + n], kind="stable")[j * k : (j + 1) * k]
            for i, pos in enumerate((self.run_pos[run] + order).tolist()):
                where[pos] = (b, place + i, spk)
        return where

    def _samples(self, shard):
        """The samples of a shard, in order (webdataset's tar reader)."""
        stream = wds.gopen(self.paths[shard], "rb")
        try:
            files = tar_file_expander([{"url": self.paths[shard], "stream": stream}])
            yield from group_by_keys(files)
        finally:
            stream.close()

    def _example(self, sample, spk, epoch, shard):
        meta = json.loads(sample["json"])
        if meta["spk_id"] != self.speakers[spk]:
            raise InputError(
                f"{self.paths[shard]}: {sample['__key__']} is speaker {meta['spk_id']}, "
                f"{self.index_path} says {self.speakers[spk]}; rewrite the shards"
            )
        audio = next(v for key, v in sample.items() if key != "json" and key[0] != "_")
        seed = crop_seed(self.seed, epoch, meta["row"])
        return {
            "id": meta["id"],
            "sig": _compact(self.crop(io.BytesIO(audio), seed)),
            "spk_id_encoded": torch.LongTensor([self.labels[spk]]),
        }

    def _read(self, plan, epoch, reader, start):
        """Reader ``reader``'s batches ``start ..< M`` of ``epoch``, as ``PaddedBatch``."""
        batches = plan.batches[reader][start : plan.m]
        if not batches:
            return
        groups, sizes = self._by_shard(plan, batches)
        keys = np.random.default_rng([self.seed, epoch, 3]).random(self.n_utterances)
        examples = [[None] * n for n in sizes]
        filled, nxt, collate = [0] * len(batches), 0, CropCollate("spk_id_encoded")
        for shard in plan.shards[reader]:
            if shard not in groups:  # none of its utterances in the remaining batches
                continue
            where = self._positions(plan, keys, groups.pop(shard))
            last, found = max(where), 0
            for pos, sample in enumerate(self._samples(shard)):
                hit = where.get(pos)
                if hit is not None:
                    b, place, spk = hit
                    examples[b][place] = self._example(sample, spk, epoch, shard)
                    filled[b] += 1
                    found += 1
                    while nxt < len(batches) and filled[nxt] == sizes[nxt]:
                        yield collate([{**e, "sig": _expand(e["sig"])} for e in examples[nxt]])
                        examples[nxt], nxt = None, nxt + 1
                if pos == last:
                    break
            if found < len(where):
                raise InputError(
                    f"{self.paths[shard]}: the shard ends before position {last}; it does "
                    f"not match {self.index_path}: rewrite the shards"
                )
        if nxt < len(batches):  # cannot happen: every planned utterance was read
            raise RuntimeError(f"reader {reader} formed {nxt} of {len(batches)} batches")


class EpochStart:
    """What SpeechBrain's ``Brain`` calls ``set_epoch`` on (its ``train_sampler``): passes
    the epoch and the steps already done, ``steps_done()`` (``lambda: brain.step``, the
    step restored from an intra-epoch checkpoint, else 0), to the dataset."""

    def __init__(self, dataset, steps_done):
        self.dataset, self.steps_done = dataset, steps_done

    def set_epoch(self, epoch):
        """Start ``epoch`` after the batches already done."""
        self.dataset.set_epoch(epoch, skip=int(self.steps_done()))

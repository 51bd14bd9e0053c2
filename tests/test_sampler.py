"""SpeakerBatchSampler over whole epochs."""

import logging
from collections import Counter

import pytest

from maskproxy_losses import SpeakerBatchSampler


def _speakers(counts):
    """Dataset of speakers s0..sN with the given utterance counts, interleaved."""
    items = [f"s{i}" for i, n in enumerate(counts) for _ in range(n)]
    # A fixed shuffle so a speaker's utterances are not contiguous in the dataset.
    return [items[(7 * j) % len(items)] for j in range(len(items))] if len(items) % 7 else items


COUNTS = [12, 9, 7, 30, 5, 4, 11, 8, 6, 10, 13, 3]


def _groups(batch, spk):
    """Split a batch into its speaker groups, checking that each group is contiguous."""
    groups = []
    for i in batch:
        if groups and spk[groups[-1][0]] == spk[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@pytest.mark.parametrize("sizes", [2, 3, (2, 3)])
def test_batches_have_distinct_speakers_and_right_group_sizes(sizes):
    spk = _speakers(COUNTS)
    sampler = SpeakerBatchSampler(spk, speakers_per_batch=4, utts_per_speaker=sizes, seed=3)
    allowed = {sizes} if isinstance(sizes, int) else set(sizes)
    used = []
    per_speaker_size = {}
    for batch in sampler:
        groups = _groups(batch, spk)
        assert len(groups) == 4
        assert len({spk[g[0]] for g in groups}) == 4  # distinct speakers
        for g in groups:
            assert len(g) in allowed
            # unbalanced: one size per speaker per epoch
            assert per_speaker_size.setdefault(spk[g[0]], len(g)) == len(g)
        used += batch
    assert len(used) == len(set(used))  # no utterance twice in an epoch
    assert len(list(sampler)) == len(sampler)


def test_unbalanced_draws_both_sizes_and_varies_by_epoch():
    spk = _speakers([12] * 40)
    sampler = SpeakerBatchSampler(spk, 8, (2, 3), seed=0)
    sizes = Counter(len(g) for b in sampler for g in _groups(b, spk))
    assert set(sizes) == {2, 3}
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_coverage_cap_and_skip_warning(caplog):
    spk = _speakers(COUNTS)
    with caplog.at_level(logging.WARNING):
        sampler = SpeakerBatchSampler(spk, 3, 2, max_per_speaker=8, seed=1)
    assert "skipping 0" not in caplog.text
    sampler = SpeakerBatchSampler(spk, 3, 4, max_per_speaker=8, seed=1)
    assert "skipping 1 speaker(s) with fewer than 4" in caplog.text  # the speaker with 3
    used = Counter(spk[i] for b in sampler for i in b)
    assert max(used.values()) <= 8
    assert "s11" not in used
    # Speakers with many groups are all used except leftovers that cannot fill a batch.
    assert set(used) >= {"s0", "s3", "s6", "s9", "s10"}


def test_balanced_uses_almost_everything():
    spk = _speakers([10] * 20)
    sampler = SpeakerBatchSampler(spk, 5, 2, seed=4)
    assert len(sampler) == 20  # 20 speakers x 5 groups = 100 groups = 20 batches of 5


def test_deterministic_for_seed_and_epoch():
    spk = _speakers(COUNTS)
    a = SpeakerBatchSampler(spk, 4, (2, 3), seed=7)
    b = SpeakerBatchSampler(spk, 4, (2, 3), seed=7)
    c = SpeakerBatchSampler(spk, 4, (2, 3), seed=8)
    assert list(a) == list(b)
    assert list(a) != list(c)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_get_disjoint_equal_shares(world):
    spk = _speakers([9] * 30)
    ranks = [
        SpeakerBatchSampler(spk, 4, (2, 3), seed=2, num_replicas=world, rank=r)
        for r in range(world)
    ]
    for r in ranks:
        r.set_epoch(3)
    shares = [list(r) for r in ranks]
    assert len({len(s) for s in shares}) == 1
    assert all(len(s) == len(r) for s, r in zip(shares, ranks))
    flat = [i for s in shares for b in s for i in b]
    assert len(flat) == len(set(flat))
    single = SpeakerBatchSampler(spk, 4, (2, 3), seed=2)
    single.set_epoch(3)
    assert len(shares[0]) == len(single) // world


def test_bad_arguments():
    spk = _speakers(COUNTS)
    with pytest.raises(ValueError, match=">= 2"):
        SpeakerBatchSampler(spk, 4, 1)
    with pytest.raises(ValueError, match="fewer than speakers_per_batch"):
        SpeakerBatchSampler(spk, 50, 2)
    with pytest.raises(ValueError, match="max_per_speaker"):
        SpeakerBatchSampler(spk, 4, 3, max_per_speaker=2)


def _reference_fill(groups, size):
    """The batching loop as first written (a list of waiting groups scanned for every new
    group): the reference ``_fill_batches`` must reproduce batch for batch."""
    import numpy as np

    batches, current, seen, waiting = [], [], set(), []
    for group in groups:
        for cand in waiting + [group]:
            if cand[2] in seen:
                continue
            if cand is not group:
                waiting.remove(cand)
            current.append(cand[3])
            seen.add(cand[2])
            if len(current) == size:
                batches.append(np.concatenate(current).tolist())
                current, seen = [], set()
            if cand is group:
                break
        else:
            waiting.append(group)
    return batches


@pytest.mark.parametrize("seed", range(40))
def test_fill_batches_equals_the_first_written_loop(seed):
    """Random speaker counts (some heavy-tailed: one speaker with hundreds of groups),
    group sizes and batch sizes: the per-speaker waiting queues give the same batches."""
    import numpy as np

    from maskproxy_losses.data.sampler import _fill_batches

    rng = np.random.default_rng(seed)
    n_speakers = int(rng.integers(2, 40))
    counts = rng.integers(1, 30, n_speakers)
    if seed % 3 == 0:
        counts[0] = 400  # a heavy tail: rounds with one speaker left
    groups, item = [], 0
    for spk, n in enumerate(counts):
        for j in range(int(n)):
            groups.append((j, rng.random(), f"s{spk}", np.arange(item, item + 2)))
            item += 2
    groups.sort(key=lambda g: (g[0], g[1]))
    size = int(rng.integers(1, min(n_speakers, 12) + 1))
    want = _reference_fill(groups, size)
    assert _fill_batches(groups, size) == want and len(want) > 0


def _reference_epoch(sampler, epoch):
    """An epoch as the sampler first drew it (groups sorted by ``(round, key)`` with
    ``list.sort``, then ``_reference_fill``, then the shuffle)."""
    import numpy as np

    rng = np.random.default_rng([sampler.seed, epoch])
    groups = []
    for spk, utts in enumerate(sampler.utts):
        utts = rng.permutation(utts)[: sampler.max_per_speaker]
        size = int(rng.choice(sampler.sizes))
        for j in range(len(utts) // size):
            group = utts[j * size : (j + 1) * size]
            if sampler.n_speeds > 1:
                group = group + int(rng.integers(sampler.n_speeds)) * sampler.n_items
            groups.append((j, rng.random(), spk, group))
    groups.sort(key=lambda g: (g[0], g[1]))
    batches = _reference_fill(groups, sampler.speakers_per_batch)
    return [batches[i] for i in rng.permutation(len(batches))]


@pytest.mark.parametrize(
    "sizes, cap, speeds", [(2, 100, 1), ((2, 3), 8, 1), (2, None, 3), ((2, 3), None, 1)]
)
def test_epochs_are_the_first_written_samplers(sizes, cap, speeds):
    """Batch for batch, epoch by epoch: what the faster sort and fill give is what the first
    sampler gave (so seeds keep their batches)."""
    spk = _speakers(COUNTS * 3 + [60, 45])
    sampler = SpeakerBatchSampler(spk, 5, sizes, max_per_speaker=cap, seed=7, n_speeds=speeds)
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        assert sampler._epoch_batches() == _reference_epoch(sampler, epoch)

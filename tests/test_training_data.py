"""Random crops, full files and the batch collate of the training data path."""

import csv
import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from maskproxy_losses.data.audio import crop_samples
from maskproxy_losses.data.crops import (
    CropCollate,
    FullFile,
    GroupedBatch,
    RandomCrop,
    SeededCrops,
    crop_seed,
    full_file_item,
    stack_or_pad,
    train_loader_options,
    wrap_around,
)
from maskproxy_losses.data.sampler import SpeakerBatchSampler

RATE = 16000


def _write(path, samples, subtype="PCM_16", rate=RATE):
    sf.write(str(path), samples, rate, subtype=subtype)
    return str(path)


def _reference(path, start=0, stop=None):
    """The file's samples as libsndfile's float32 (independent of the code under test)."""
    wav, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return torch.from_numpy(wav.mean(axis=1) if wav.shape[1] > 1 else wav[:, 0].copy())


M64 = 2**64 - 1


def _splitmix64(state):
    """First output of SplitMix64 (Steele et al. 2014) seeded with ``state``."""
    z = (state + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


@pytest.fixture
def long_wav(tmp_path):
    rng = np.random.default_rng(0)
    return _write(tmp_path / "long.wav", rng.integers(-32768, 32767, 5 * RATE, dtype=np.int16))


@pytest.mark.parametrize("frames", [200, 350])
def test_crop_is_the_file_at_the_drawn_start(long_wav, frames):
    crop = crop_samples(frames)
    n = sf.info(long_wav).frames
    for seed in range(5):
        got = RandomCrop(frames)(long_wav, seed)
        start = _splitmix64(seed) % (n - crop + 1)
        assert got.dtype == torch.float32 and got.shape == (crop,)
        assert torch.equal(got, _reference(long_wav, start, start + crop))


@pytest.mark.parametrize("n", [1, 401, 20000, crop_samples(200)])
def test_short_files_wrap_around(tmp_path, n):
    crop = crop_samples(200)
    samples = np.random.default_rng(n).integers(-30000, 30000, n, dtype=np.int16)
    path = _write(tmp_path / "short.wav", samples)
    state = torch.get_rng_state()
    got = RandomCrop(200)(path, 11)
    sig = _reference(path)
    assert torch.equal(got, sig.repeat(math.ceil(crop / len(sig)))[:crop])
    assert torch.equal(torch.get_rng_state(), state)  # torch's RNG plays no part


@pytest.mark.parametrize("subtype, channels", [("PCM_24", 1), ("FLOAT", 1), ("PCM_16", 2)])
def test_other_formats_match_libsndfile(tmp_path, subtype, channels):
    rng = np.random.default_rng(1)
    samples = rng.uniform(-0.9, 0.9, (RATE, channels)).astype(np.float32)
    path = _write(tmp_path / "x.wav", samples if channels > 1 else samples[:, 0], subtype)
    got = RandomCrop(10)(path, 3)
    start = _splitmix64(3) % (RATE - crop_samples(10) + 1)
    assert torch.equal(got, _reference(path, start, start + crop_samples(10)))
    assert torch.equal(FullFile()(path), _reference(path))


def test_full_file_and_wrong_rate(tmp_path, long_wav):
    assert torch.equal(FullFile()(long_wav), _reference(long_wav))
    bad = _write(tmp_path / "8k.wav", np.zeros(8000, np.int16), rate=8000)
    with pytest.raises(ValueError, match="8000 Hz"):
        RandomCrop(10)(bad, 0)


def test_wrap_around_and_stack_or_pad_match_speechbrain():
    sig = torch.arange(5.0)
    assert torch.equal(wrap_around(sig, 12), torch.tensor([0, 1, 2, 3, 4] * 3)[:12].float())
    equal = [torch.randn(7) for _ in range(3)]
    ragged = [torch.randn(7), torch.randn(3), torch.randn(5)]
    for tensors in (equal, ragged):
        ours = stack_or_pad(tensors)
        theirs = sb.utils.data_utils.batch_pad_right(tensors)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


def test_items_and_collate_pickle():
    assert pickle.loads(pickle.dumps(RandomCrop(350))).num_samples == crop_samples(350)
    assert pickle.loads(pickle.dumps(full_file_item())).provides == ["sig"]
    assert isinstance(pickle.loads(pickle.dumps(CropCollate())), CropCollate)


def test_grouped_batch_moves_its_layout_and_knows_padding():
    items = [{"id": str(i), "sig": torch.ones(n), "spk": torch.tensor([s])}
             for i, (n, s) in enumerate([(5, 3), (5, 3), (4, 1), (5, 1)])]  # fmt: skip
    batch = CropCollate(label_key="spk")(items)
    assert not batch.full_length and batch.sig.lengths.tolist() == pytest.approx([1, 1, 0.8, 1])
    assert CropCollate(label_key="spk")(items[:2]).full_length
    moved = batch.to("meta")  # every tensor moves, the layout's too
    assert moved.sig.data.is_meta and moved.layout.first.is_meta and moved.layout.rest.is_meta
    assert moved.layout.max_label == 3
    with pytest.raises(ValueError, match="at least 2 utterances"):
        CropCollate(label_key="spk")(items[1:])
    restored = pickle.loads(pickle.dumps(CropCollate(label_key="spk")(items)))
    assert restored.layout.slot.tolist() == [0, 0, 1, 1] and not restored.full_length
    if torch.cuda.is_available():
        pinned = CropCollate(label_key="spk")(items).pin_memory()
        assert pinned.sig.data.is_pinned() and pinned.layout.slot.is_pinned()


def _position_corpus(tmp_path, speakers=4, utts=4):
    """Files whose samples name their file and position: file j holds j * 2000 - 32000 + i."""
    rows, lengths = [], np.random.default_rng(5).integers(300, 2000, speakers * utts)
    for j in range(speakers * utts):
        values = np.arange(lengths[j], dtype=np.int64) + j * 2000 - 32000
        path = _write(tmp_path / f"u{j:02d}.wav", values.astype(np.int16))
        rows.append((f"u{j:02d}", f"{lengths[j] / RATE:.5f}", path, f"s{j % speakers}"))
    table = tmp_path / "train.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("ID", "duration", "wav", "spk_id")] + rows)
    return str(table), rows


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_hold_the_samplers_utterances_in_order(tmp_path, workers):
    table, rows = _position_corpus(tmp_path)
    frames = 2  # 560 samples: some files are shorter (wrap around), most longer
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(table)
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_didataset(data, "spk_id")
    encoder.ignore_len()
    data.add_dynamic_item(encoder.encode_label_torch, takes="spk_id", provides="spk_id_encoded")
    data.set_output_keys(["id", "wav", "spk_id_encoded"])
    speakers = [data.data[i]["spk_id"] for i in data.data_ids]
    sampler = SpeakerBatchSampler(speakers, speakers_per_batch=2, utts_per_speaker=2, seed=4)
    options = train_loader_options(sampler, workers, seed=0, label_key="spk_id_encoded")
    assert options["pin_memory"] is False  # pinned on CUDA only
    loader = sb.dataio.dataloader.make_dataloader(SeededCrops(data, frames), **options)
    by_id = {r[0]: (j, r) for j, r in enumerate(rows)}
    batches = list(loader)
    assert len(batches) == len(sampler) > 0
    for batch, indices in zip(batches, sampler):
        assert isinstance(batch, PaddedBatch)
        assert batch.id == [data.data_ids[i] for i in indices]
        wavs, lens = batch.sig
        assert wavs.shape == (len(indices), crop_samples(frames))
        assert torch.equal(lens, torch.ones(4))
        labels, _ = batch.spk_id_encoded
        expected = [encoder.encode_label(by_id[u][1][3]) for u in batch.id]
        assert labels[:, 0].tolist() == expected
        # the speaker grouping, worked out in the loader (worker) for the loss
        assert isinstance(batch, GroupedBatch) and batch.full_length
        first = {}
        for i, y in enumerate(expected):
            first.setdefault(y, i)
        assert batch.layout.labels.tolist() == list(first)
        assert batch.layout.first.tolist() == list(first.values())
        assert batch.layout.slot.tolist() == [list(first).index(y) for y in expected]
        for uid, row in zip(batch.id, wavs):
            j, (_, _, path, _) = by_id[uid]
            sig = _reference(path)
            start = int(round(row[0].item() * 32768)) - (j * 2000 - 32000)
            if len(sig) > len(row):
                assert torch.equal(row, sig[start : start + len(row)])
            else:
                assert start == 0 and torch.equal(row, wrap_around(sig, len(row)))


def test_seeded_start_is_splitmix64_and_uniform(long_wav):
    assert _splitmix64(0) == 0xE220A8397B1DCDAF  # the published first output for seed 0
    assert crop_seed(5, 2, 9) == _splitmix64(_splitmix64(_splitmix64(5) ^ 2) ^ 9)
    n, crop = sf.info(long_wav).frames, crop_samples(200)
    for seed in (0, 1, 2**63 + 5):
        start = _splitmix64(seed) % (n - crop + 1)
        assert torch.equal(
            RandomCrop(200)(long_wav, seed), _reference(long_wav, start, start + crop)
        )
    # Starts over 8,000 item seeds: each of 8 possible starts ~1,000 times (binomial sd 30).
    path = long_wav.replace("long.wav", "short.wav")
    _write(path, np.arange(crop_samples(2) + 7, dtype=np.int16))
    starts = [
        int(round(RandomCrop(2)(path, crop_seed(1, 1, i))[0].item() * 32768)) for i in range(8000)
    ]
    counts = np.bincount(starts)
    assert len(counts) == 8 and counts.min() > 880 and counts.max() < 1120, counts


def _seeded_crops(table, workers, epochs=(1, 2), seed=3):
    """``{(epoch, utt_id): crop}`` of the recipe's training loader over ``table``."""
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(table)
    data.set_output_keys(["id", "wav"])
    sampler = SpeakerBatchSampler([data.data[i]["spk_id"] for i in data.data_ids], 2, 2, seed=0)
    options = train_loader_options(sampler, workers, seed)
    loader = sb.dataio.dataloader.make_dataloader(SeededCrops(data, 2), **options)
    crops = {}
    for epoch in epochs:
        options["batch_sampler"].set_epoch(epoch)
        for batch in loader:
            crops.update({(epoch, u): w for u, w in zip(batch.id, batch.sig.data)})
    return crops, data


def test_seeded_loader_crops_depend_on_seed_epoch_and_utterance_only(tmp_path):
    table, rows = _position_corpus(tmp_path)
    torch.manual_seed(0)
    first, data = _seeded_crops(table, workers=0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert first.keys() == _seeded_crops(table, workers=0)[0].keys()
    for other in (_seeded_crops(table, workers=0)[0], _seeded_crops(table, workers=2)[0]):
        assert all(torch.equal(first[k], other[k]) for k in first)
    # Each crop is the file at the start its (seed, epoch, utterance) gives.
    index = {uid: i for i, uid in enumerate(data.data_ids)}
    paths = {r[0]: r[2] for r in rows}
    for (epoch, uid), row in first.items():
        sig, crop = _reference(paths[uid]), crop_samples(2)
        if len(sig) <= crop:
            assert torch.equal(row, wrap_around(sig, crop))
            continue
        start = _splitmix64(crop_seed(3, epoch, index[uid])) % (len(sig) - crop + 1)
        assert torch.equal(row, sig[start : start + crop])
    # Another epoch or run seed gives other crops of the long files (>= 640 possible starts).
    long = [k for k in first if k[0] == 1 and len(_reference(paths[k[1]])) > 1200]
    again = _seeded_crops(table, workers=0, epochs=(1,), seed=4)[0]
    assert long and all(not torch.equal(first[k], again[k]) for k in long)
    shared = [k for k in long if (2, k[1]) in first]
    assert shared and all(not torch.equal(first[k], first[2, k[1]]) for k in shared)

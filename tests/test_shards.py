"""Sharded training data: the shard writer (data_prep.shards), the sharded reader
(maskproxy_losses.data.shards) against the file path, and the recipe on shards."""

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)
from conftest import RECIPE, ROOT, assert_same_state, popen_recipe, read_trace

from data_prep.shards import read_index, write_shards
from maskproxy_losses.data.crops import crop_seed, train_loader_options
from maskproxy_losses.data.shards import EpochStart, ShardedSpeakerBatches
from maskproxy_losses.training.recipe_setup import dataio_prep
from maskproxy_losses.utils.errors import InputError

RATE = 16000
FRAMES = 20  # crops of 20 * 160 + 240 = 3440 samples; the files hold 1600-8000
# Utterances per speaker: spk00 (1) is too small for a group and is skipped.
COUNTS = [1, 3, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17, 7]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """``(train.csv, rows)``: 131 utterances of 13 speakers in a shuffled order: 16-bit wav
    files, some 32-bit float wav and 16-bit flac; some shorter than a crop."""
    root = tmp_path_factory.mktemp("shard_corpus")
    rng = np.random.default_rng(7)
    rows = []
    for s, n in enumerate(COUNTS):
        for i in range(n):
            length = int(rng.integers(1600, 8000))
            pcm = rng.integers(-20000, 20000, length, dtype=np.int16)
            kind = ("wav", "PCM_16")
            if (s + i) % 5 == 0:
                kind = ("wav", "FLOAT") if i % 2 else ("flac", "PCM_16")
            path = root / f"spk{s:02d}_{i:02d}.{kind[0]}"
            sf.write(path, pcm if kind[1] == "PCM_16" else pcm / 40000.0, RATE, subtype=kind[1])
            rows.append([f"spk{s:02d}-{i:02d}", f"{length / RATE:.6f}", str(path), f"spk{s:02d}"])
    rows = [rows[i] for i in rng.permutation(len(rows))]
    table = root / "train.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["ID", "duration", "wav", "spk_id"], *rows])
    return table, rows


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory):
    """The manifest as 14 shards (131 / 10 utterances, rounded up) of speaker runs of 4."""
    return write_shards(manifest[0], tmp_path_factory.mktemp("shards"), shard_size=10, block=4)


def _members(path):
    """``[(key, {extension: bytes})]`` of a tar file, in order (Python's tarfile alone)."""
    out = []
    with tarfile.open(path) as tar:
        for info in tar:
            key, ext = info.name.split(".", 1)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = tar.extractfile(info).read()
    return out


def _shard_of(index_path):
    """Utterance ID -> shard number, from the tar files."""
    index, folder = read_index(index_path), os.path.dirname(index_path)
    return {
        json.loads(files["json"])["id"]: n
        for n, entry in enumerate(index["shards"])
        for _, files in _members(os.path.join(folder, entry["path"]))
    }


# ---------------------------------------------------------------------------- the writer


def test_shards_hold_every_utterance_once_with_its_label_and_duration(manifest, shards):
    table, rows = manifest
    index, folder = read_index(shards), os.path.dirname(shards)
    first_seen = list(dict.fromkeys(r[3] for r in rows))
    assert index["speakers"] == first_seen  # the file path's label order
    assert index["manifest"]["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert index["manifest"]["rows"] == index["utterances"] == len(rows) == 131
    assert index["duration"] == pytest.approx(sum(float(r[1]) for r in rows), abs=1e-5)
    assert len(index["shards"]) == 14
    seen, mixed = [], 0
    for entry in index["shards"]:
        members = _members(os.path.join(folder, entry["path"]))
        assert entry["utterances"] == len(members)
        assert entry["bytes"] == os.path.getsize(os.path.join(folder, entry["path"]))
        assert 131 / 14 - 5 < len(members) < 131 / 14 + 5  # about equal, whole runs of <= 5
        # The runs, expanded, name the speaker of every member in order.
        expected = [index["speakers"][spk] for spk, n in entry["speakers"] for _ in range(n)]
        duration = 0.0
        for (key, files), spk in zip(members, expected, strict=True):
            meta = json.loads(files["json"])
            uid, dur, wav, speaker = rows[meta["row"]]
            assert key == f"{meta['row']:09d}" and meta["id"] == uid
            assert meta["spk_id"] == speaker == spk and meta["duration"] == float(dur)
            assert files[wav.rsplit(".", 1)[1]] == Path(wav).read_bytes()  # the file, unchanged
            duration += float(dur)
            seen.append(meta["row"])
        assert entry["duration"] == pytest.approx(duration, abs=1e-5)
        # runs of 4, or of 5 where a rest of 1 joined; 1 only for the speaker of 1 utterance
        for spk, n in entry["speakers"]:
            assert 2 <= n <= 5 or (n == 1 and index["speakers"][spk] == "spk00")
        mixed += len({spk for spk, _ in entry["speakers"]}) >= 2
    assert sorted(seen) == list(range(len(rows)))  # every utterance exactly once
    assert mixed >= 12  # shards mix speakers (runs of <= 5 in shards of about 9)


def test_killed_write_resumes_to_the_same_shards(manifest, shards, tmp_path):
    """kill -9 in the middle of a shard: no index, a progress record of the finished shards;
    the rerun writes only the others, and the result equals an uninterrupted write."""
    out = tmp_path / "s"
    script = (
        "import os, signal, sys, webdataset as wds\n"
        "from data_prep.shards import write_shards\n"
        "real, n = wds.TarWriter.write, [0]\n"
        "def write(self, obj):\n"
        "    n[0] += 1\n"
        "    if n[0] == 37:\n"  # the 7th utterance of the 4th shard
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, obj)\n"
        "wds.TarWriter.write = write\n"
        f"write_shards({str(manifest[0])!r}, {str(out)!r}, shard_size=10, block=4)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    names = sorted(os.listdir(out))
    assert "shards.json" not in names and len([n for n in names if n.startswith(".tmp-")]) == 1
    plan, *finished = map(json.loads, (out / "shards.progress.jsonl").read_text().splitlines())
    assert list(plan) == ["plan"] and [f["path"] for f in finished] == [
        f"shard-{i:06d}.tar" for i in range(3)
    ]

    written = []
    real = write_shards.__globals__["_write_shard"]
    write_shards.__globals__["_write_shard"] = lambda path, runs: (
        written.append(os.path.basename(path)) or real(path, runs)
    )
    try:
        again = write_shards(manifest[0], out, shard_size=10, block=4)
        assert written == [f"shard-{i:06d}.tar" for i in range(3, 14)]
        assert write_shards(manifest[0], out, shard_size=10, block=4) == again
        assert len(written) == 11  # up to date: nothing rewritten
    finally:
        write_shards.__globals__["_write_shard"] = real
    fresh = Path(shards).parent
    assert sorted(os.listdir(out)) == sorted(os.listdir(fresh))  # no temporaries left
    for name in os.listdir(fresh):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


def test_a_changed_plan_removes_the_old_index_first(manifest, tmp_path, monkeypatch):
    write_shards(manifest[0], tmp_path, shard_size=10, block=4)
    import data_prep.shards as module

    def killed(path, runs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        write_shards(manifest[0], tmp_path, shard_size=20, block=4)
    # The old index named shards that the new plan rewrites: it is gone.
    assert not (tmp_path / "shards.json").exists()


def test_before_rewrite_is_called_only_when_shards_would_change(manifest, tmp_path):
    calls = []

    def refuse():
        calls.append(1)
        raise InputError("a run reads these shards")

    write_shards(manifest[0], tmp_path, shard_size=10, block=4, before_rewrite=refuse)
    assert calls == []  # an empty folder: nothing to protect
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_shards(manifest[0], tmp_path, shard_size=10, block=4, before_rewrite=refuse)
    assert calls == []  # the same plan: reused
    with pytest.raises(InputError, match="a run reads these shards"):
        write_shards(manifest[0], tmp_path, shard_size=20, block=4, before_rewrite=refuse)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_parallel_write_and_the_command_line_give_the_same_shards(
    manifest, shards, tmp_path, capsys
):
    from maskproxy_losses.cli import main

    write_shards(manifest[0], tmp_path / "parallel", shard_size=10, block=4, num_workers=2)
    argv = [str(manifest[0]), str(tmp_path / "cli"), "--shard-size", "10", "--block", "4"]
    assert main(["shards", *argv]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "shards.json")
    fresh = Path(shards).parent
    for out in (tmp_path / "parallel", tmp_path / "cli"):
        assert sorted(os.listdir(out)) == sorted(os.listdir(fresh))
        for name in os.listdir(fresh):
            assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    assert main(["shards", str(tmp_path / "missing.csv"), str(tmp_path / "out")]) == 2
    assert (
        capsys.readouterr().err == f"error: {tmp_path / 'missing.csv'}: No such file or directory\n"
    )


def test_bad_manifest_rows_are_named_by_line(tmp_path, manifest):
    good = manifest[1][0]
    table = tmp_path / "train.csv"
    table.write_text(
        "ID,duration,wav,spk_id\n"
        f"a,1.0,{good[2]},s\n"
        f"b,x,{good[2]},s\n"
        f"c,1.0,{tmp_path}/missing.wav,s\n"
        f"a,1.0,{good[2]},s\n"
        "d,1.0\n"
    )
    with pytest.raises(InputError) as err:
        write_shards(table, tmp_path / "out")
    assert err.value.problems == [
        f"{table}:3: duration 'x' is not a positive number",
        f"{table}:4: audio file not found: {tmp_path}/missing.wav",
        f"{table}:5: ID a appears twice",
        f"{table}:6: expected 4 fields, got 2",
    ]
    (tmp_path / "bad.csv").write_text("ID,wav\n")
    with pytest.raises(InputError, match=r"bad.csv:1: expected the header ID,duration,wav"):
        write_shards(tmp_path / "bad.csv", tmp_path / "out")


# ---------------------------------------------------------------------------- the reader


def _dataset(shards, **kw):
    options = dict(speakers_per_batch=3, utts_per_speaker=2, crop_frames=FRAMES, seed=11)
    return ShardedSpeakerBatches(shards, **{**options, **kw})


def _epoch(data, epoch, skip=0, loader=True):
    data.set_epoch(epoch, skip)
    if loader:
        return list(torch.utils.data.DataLoader(data, **data.loader_options()))
    return list(data)


@pytest.mark.parametrize("sizes", [2, (2, 3)])
def test_batches_hold_b_speakers_with_consecutive_groups(manifest, shards, sizes):
    rows = manifest[1]
    speaker = {r[0]: r[3] for r in rows}
    data = _dataset(shards, utts_per_speaker=sizes, max_per_speaker=9)
    label = {s: i for i, s in enumerate(read_index(shards)["speakers"])}
    orders = []
    for epoch in (1, 2):
        batches = _epoch(data, epoch, loader=False)
        assert len(batches) == len(data) >= 8
        k_of, used = {}, []
        for batch in batches:
            spk = [speaker[u] for u in batch.id]
            labels = batch.spk_id_encoded.data[:, 0].tolist()
            assert labels == [label[s] for s in spk]
            assert batch.sig.data.shape == (len(spk), FRAMES * 160 + 240)
            groups = [spk[0]]  # speakers in order of their consecutive groups
            for prev, cur in zip(spk, spk[1:]):
                if cur != prev:
                    groups.append(cur)
            assert len(groups) == len(set(groups)) == 3  # B distinct speakers, consecutive
            for s in groups:
                k_of.setdefault(s, spk.count(s))
                assert spk.count(s) == k_of[s]  # one k per speaker per epoch
            used += batch.id
        assert set(k_of.values()) <= ({2} if sizes == 2 else {2, 3})
        assert len(used) == len(set(used))  # no utterance twice in an epoch
        assert "spk00" not in k_of  # 1 utterance: skipped, as by the sampler
        assert max(sum(speaker[u] == s for u in used) for s in k_of) <= 9  # max_per_speaker
        orders.append(used)
    assert orders[0] != orders[1]


def test_two_ranks_two_workers_read_disjoint_shards_and_equal_counts(shards):
    """14 shards over 2 ranks x 2 loader workers (not a multiple): every rank yields the
    announced number of batches, the same on both; each reader reads its own shards."""
    shard_of = _shard_of(shards)
    for epoch in (1, 2, 3):
        counts, readers = [], {}
        for rank in (0, 1):
            data = _dataset(shards, num_workers=2, num_replicas=2, rank=rank)
            batches = _epoch(data, epoch)
            counts.append((len(data), len(batches)))
            for j, batch in enumerate(batches):  # the loader takes workers 0, 1, 0, 1, ...
                readers.setdefault((rank, j % 2), []).extend(batch.id)
            # the same batches as the main process interleaving the readers itself
            assert [b.id for b in _epoch(data, epoch, loader=False)] == [b.id for b in batches]
        assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0
        ids = [u for utts in readers.values() for u in utts]
        assert len(ids) == len(set(ids))  # disjoint utterances across ranks and workers
        read = [{shard_of[u] for u in utts} for utts in readers.values()]
        assert sum(map(len, read)) == len(set().union(*read))  # disjoint shards


def test_too_many_readers_for_the_shards_is_refused(shards):
    with pytest.raises(InputError, match=r"14 shard\(s\) for 8 rank\(s\) x 2 reader"):
        _dataset(shards, num_workers=2, num_replicas=8, rank=0)


def test_crops_and_labels_are_the_file_paths(manifest, shards, tmp_path):
    """The recipe's wiring (dataio_prep) on both paths: every sharded example equals the
    file path's item for the same (seed, epoch, utterance)."""
    table, rows = manifest
    hparams = {
        "save_folder": str(tmp_path),
        "speakers_per_batch": 3,
        "utts_per_speaker": [2, 3],
        "max_per_speaker": 100,
        "crop_frames": FRAMES,
        "seed": 11,
        "num_workers": 0,
    }
    manifests = {"train_csv": str(table), "dev_csv": str(table), "test_csv": str(table)}
    files, _, _, sampler, n_files = dataio_prep(hparams, manifests)
    sharded, _, _, same, n_shards = dataio_prep({**hparams, "train_shards": shards}, manifests)
    assert same is sharded and n_files == n_shards == len(COUNTS)
    options = train_loader_options(sharded, 0, 11, label_key="spk_id_encoded")
    assert options["batch_size"] is None
    for batch in torch.utils.data.DataLoader(sharded, **options):  # as the recipe's step needs
        labels = batch.spk_id_encoded.data[:, 0].tolist()
        seen = list(dict.fromkeys(labels))  # speakers in order of first appearance
        assert batch.layout.labels.tolist() == seen
        assert batch.layout.slot.tolist() == [seen.index(x) for x in labels]
        assert batch.layout.first.tolist() == [labels.index(x) for x in seen]
        assert batch.full_length is True  # equal crops: nothing padded
    sharded.label_key = None  # the plain batches below
    row = {r[0]: i for i, r in enumerate(rows)}
    checked = set()
    for epoch in (1, 2):
        for batch in _epoch(sharded, epoch):
            for i, uid in enumerate(batch.id):
                item = files[(row[uid], crop_seed(11, epoch, row[uid]))]
                assert torch.equal(batch.sig.data[i], item["sig"]), uid
                assert batch.spk_id_encoded.data[i].tolist() == item["spk_id_encoded"].tolist()
                wav = rows[row[uid]][2]
                checked.add(Path(wav).suffix + sf.info(wav).subtype)
    assert checked == {".wavPCM_16", ".wavFLOAT", ".flacPCM_16"}  # every kind of file compared
    with pytest.raises(InputError, match="speed_perturb is not supported with train_shards"):
        dataio_prep({**hparams, "train_shards": shards, "speed_perturb": True}, manifests)
    other = tmp_path / "other.csv"
    other.write_text(table.read_text() + "extra,1.0,x.wav,s\n")
    with pytest.raises(InputError, match="whose content differs"):
        dataio_prep({**hparams, "train_shards": shards}, {**manifests, "train_csv": str(other)})


class _Counting:
    """A crop function that counts its calls."""

    def __init__(self, crop):
        self.crop, self.calls = crop, 0

    def __call__(self, audio, seed):
        self.calls += 1
        return self.crop(audio, seed)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_skips_to_the_tail_without_decoding_the_skipped(shards, workers):
    data = _dataset(shards, num_workers=workers, utts_per_speaker=(2, 3))
    full = _epoch(data, 2)
    assert len(full) == len(data) >= 8
    crop = data.crop
    for skip in (1, 3, len(full) - 1, len(full)):
        EpochStart(data, lambda done=skip: done).set_epoch(2)  # as the Brain does on resume
        rest = list(torch.utils.data.DataLoader(data, **data.loader_options()))
        assert [b.id for b in rest] == [b.id for b in full[skip:]]
        assert all(torch.equal(a.sig.data, b.sig.data) for a, b in zip(rest, full[skip:]))
        # in the main process: only the remaining batches' utterances are decoded
        data.crop = _Counting(crop)
        try:
            assert [b.id for b in _epoch(data, 2, skip, loader=False)] == [b.id for b in rest]
        finally:
            counted, data.crop = data.crop, crop
        assert counted.calls == sum(len(b.id) for b in full[skip:])


def test_a_shard_that_does_not_match_the_index_is_named(shards, tmp_path):
    index = read_index(shards)
    first = index["shards"][0]["speakers"]
    first[0][0], first[-1][0] = first[-1][0], first[0][0]  # two runs' speakers swapped
    for entry in index["shards"]:
        entry["path"] = os.path.join(os.path.dirname(shards), entry["path"])
    (tmp_path / "shards.json").write_text(json.dumps(index))
    data = _dataset(str(tmp_path / "shards.json"), max_per_speaker=None)
    with pytest.raises(InputError, match=r"shard-000000.tar: \d+ is speaker spk\d+, .* says"):
        for epoch in range(1, 4):  # the swapped runs are read in some epoch
            _epoch(data, epoch, loader=False)


# ---------------------------------------------------------------------------- the recipe


def _speakers(corpus):
    """Utterance ID -> speaker of the prepared training manifest."""
    with open(corpus / "manifests" / "train.csv", newline="") as f:
        return {row["ID"]: row["spk_id"] for row in csv.DictReader(f)}


def _check_groups(ids, speaker, b, k):
    """``ids`` are ``b`` distinct speakers x ``k`` consecutive utterances."""
    spk = [speaker[u] for u in ids]
    assert len(ids) == b * k and len(set(spk)) == b
    assert all(len(set(spk[i : i + k])) == 1 for i in range(0, b * k, k))


@pytest.mark.slow
def test_recipe_trains_on_shards(corpus, tmp_path, capsys, recipe_args, final_line):
    """--write_shards True: data prep writes the shards, training reads exactly the
    batches the sharded dataset plans (speakers_per_batch 3, k = 2, seed 1986)."""
    log = tmp_path / "batches"
    options = dict(write_shards=True, shard_size=4, batch_trace=log, number_of_epochs=2)
    brain = recipe.train(recipe_args(corpus, tmp_path / "run", **options))
    final_line(capsys.readouterr().out)
    assert (tmp_path / "run" / "model" / "embedding_model.ckpt").is_file()
    index = corpus / "manifests" / "shards" / "shards.json"
    assert read_index(index)["manifest"]["path"] == str(corpus / "manifests" / "train.csv")
    speaker = _speakers(corpus)
    batches, _ = read_trace(f"{log}.rank0")
    data = ShardedSpeakerBatches(index, speakers_per_batch=3, utts_per_speaker=2, seed=1986)
    for epoch in (1, 2):
        logged = [ids for e, _, ids in batches if e == epoch]
        assert logged == [b.id for b in _epoch(data, epoch, loader=False)]
        for ids in logged:
            _check_groups(ids, speaker, 3, 2)
        used = [u for ids in logged for u in ids]
        assert len(used) == len(set(used)) and len(logged) >= 3
    assert brain.modules.loss_fn.proxies.shape[0] == len(set(speaker.values()))


@pytest.mark.slow
def test_sharded_resume_after_kill_mid_epoch_is_exact(corpus, tmp_path, recipe_args, final_line):
    """kill -9 in epoch 2 of 2 with one persistent loader worker on shards, resume: the same
    batches and bit-identical parameters as an uninterrupted run."""

    def cmd(name):
        args = recipe_args(
            corpus,
            tmp_path / name,
            number_of_epochs=2,
            ckpt_interval_steps=1,
            num_workers=1,
            speakers_per_batch=2,
            write_shards=True,
            shard_size=4,
            batch_trace=tmp_path / f"{name}.log",
        )
        return [sys.executable, str(RECIPE / "train_speaker_embeddings.py"), *args]

    full = popen_recipe(cmd("full"))
    full_text, _ = full.communicate(timeout=600)
    assert full.returncode == 0, full_text[-3000:]
    want, want_valid = read_trace(tmp_path / "full.log.rank0")
    per_epoch = len(want) // 2
    assert per_epoch >= 4 and [w[:2] for w in want][per_epoch] == (2, 1)
    proc, log = popen_recipe(cmd("run")), tmp_path / "run.log.rank0"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill -9 once epoch 2 step 2 ran
        if log.is_file() and "batch 2 2 " in log.read_text():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it was killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed, _ = read_trace(log)
    (intra,) = [
        p
        for p in (tmp_path / "run" / "save").glob("CKPT*")
        if "intra_epoch" in (p / "CKPT.yaml").read_text()
    ]
    done = int(re.search(r"^step: (\d+)", (intra / "brain.ckpt").read_text(), re.M)[1])
    resumed = popen_recipe(cmd("run"))
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    assert "Loading a checkpoint from" in text and f"resuming after batch {done}" in text
    got, got_valid = read_trace(log)
    at = want.index(next(w for w in want if w[:2] == (2, done + 1)))
    assert 2 <= done + 1 <= per_epoch and got[: len(killed)] == killed == want[: len(killed)]
    assert got[len(killed) :] == want[at:] and len(killed) >= at
    assert got_valid == want_valid
    final = [torch.load(tmp_path / f"{n}.log.rank0.pt") for n in ("full", "run")]
    assert_same_state(*final)
    assert final_line(text) == final_line(full_text)


@pytest.mark.slow
def test_ddp_two_processes_on_uneven_shards(corpus, tmp_path, recipe_args, final_line):
    """torchrun, 2 CPU processes, 5 shards (not a multiple of 2 readers): both ranks run the
    same steps on disjoint utterances and the run ends (a rank with fewer batches would
    leave the other waiting in a collective)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out, log = tmp_path / "ddp", tmp_path / "ddp.log"
    args = recipe_args(
        corpus,
        out,
        name="mp",
        number_of_epochs=3,
        speakers_per_batch=2,
        batch_trace=log,
        write_shards=True,
        shard_size=5,
    )
    script = str(RECIPE / "train_speaker_embeddings.py")
    proc = popen_recipe([str(torchrun), "--standalone", "--nproc_per_node=2", script, *args])
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text[-3000:]
    assert len(read_index(corpus / "manifests" / "shards" / "shards.json")["shards"]) == 5
    speaker = _speakers(corpus)
    (b0, _), (b1, _) = (read_trace(f"{log}.rank{r}") for r in (0, 1))
    assert [b[:2] for b in b0] == [b[:2] for b in b1] and len(b0) >= 3  # the same steps
    # The two readers formed different numbers of batches in some epoch; both kept M.
    data = ShardedSpeakerBatches(
        corpus / "manifests" / "shards" / "shards.json",
        2,
        [2, 3],
        num_replicas=2,
        rank=0,
        seed=1986,
    )
    plans = {epoch: data._plan(epoch) for epoch in (1, 2, 3)}
    assert any(len(set(plan.formed)) > 1 for plan in plans.values())
    for epoch, plan in plans.items():
        assert sum(b[0] == epoch for b in b0) == plan.m == min(plan.formed)
    for epoch in (1, 2, 3):
        seen = [u for b in b0 + b1 if b[0] == epoch for u in b[2]]
        assert len(seen) == len(set(seen))  # disjoint across ranks, once per epoch
    for ids in [b[2] for b in b0 + b1]:
        assert len({speaker[u] for u in ids}) == 2
    final_line(text)


def _last_dev_eers(log, n=3):
    """The mean dev EER of the last ``n`` epochs of a train_log.txt."""
    eers = [float(x) for x in re.findall(r"valid EER: ([\d.]+)", Path(log).read_text())]
    return float(np.mean(eers[-n:]))


@pytest.mark.slow
def test_sharded_dev_eer_lies_within_the_file_paths_seed_spread(default_corpus, tmp_path):
    """mp_balance on the built-in corpus (60 speakers), reduced ResNetSE34L, 8 epochs, seeds
    1-3 on each path; each run's dev EER is the mean of its last 3 epochs (which smooths
    the 180-utterance dev set's epoch-to-epoch noise). The two paths' means differ by less
    than 2.5 standard errors of a difference of two 3-seed means (the seed spread; a real
    gap of that size would show up about 99 % of the time). The 6 runs, two at a time,
    took 8 min 13 s of CPU time (about 4.5 minutes of wall time on 2 idle cores)."""
    from data_prep.demo_corpus import prepare_builtin

    root, _ = default_corpus
    manifests = prepare_builtin(str(root))  # once, before the runs reuse it concurrently
    write_shards(manifests["train_csv"], root / "manifests" / "shards", shard_size=100, seed=1986)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    model = "!new:maskproxy_losses.ResNetSE34L {channels: [8, 16, 32, 64], emb_dim: 128}"
    runs = {}
    for seed in (1, 2, 3):
        for sharded in (False, True):
            out = tmp_path / f"{'shards' if sharded else 'files'}{seed}"
            options = {
                "data_folder": root,
                "output_folder": out,
                "seed": seed,
                "num_workers": 0,
                "number_of_epochs": 8,
                "crop_frames": 100,
                "emb_dim": 128,
                "embedding_model": model,
                "write_shards": sharded,
                "shard_size": 100,
            }
            argv = [sys.executable, str(RECIPE / "train_speaker_embeddings.py")]
            argv += [str(RECIPE / "hparams" / "mp_balance.yaml")]
            argv += [str(x) for key, value in options.items() for x in (f"--{key}", value)]
            runs[(sharded, seed)] = (argv, out)
    pending, running = list(runs.values()), []
    while pending or running:
        while pending and len(running) < 2:  # two at a time
            argv, out = pending.pop(0)
            log = open(tmp_path / f"{out.name}.log", "w")
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, log))
        proc, log = running.pop(0)
        proc.wait(timeout=1200)
        log.close()
        assert proc.returncode == 0, Path(log.name).read_text()[-3000:]
    files = [_last_dev_eers(runs[(False, s)][1] / "train_log.txt") for s in (1, 2, 3)]
    shards = [_last_dev_eers(runs[(True, s)][1] / "train_log.txt") for s in (1, 2, 3)]
    se = np.sqrt(np.var(files, ddof=1) / 3 + np.var(shards, ddof=1) / 3)
    assert abs(np.mean(shards) - np.mean(files)) < 2.5 * se, (files, shards)
    assert 0 < np.mean(files) < 45  # both trained: chance is 50 %, the untrained scorer ~29 %


def test_a_manifest_that_is_not_utf8_is_named(tmp_path, manifest, cli):
    table = tmp_path / "train.csv"
    table.write_bytes(b"ID,duration,wav,spk_id\na,1.0,\xff.wav,s\n")
    code, _, err = cli("shards", table, tmp_path / "out")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {table}:2: not UTF-8 text (byte 0xff at column 7)")
    wav = manifest[1][0][2]
    code, _, err = cli("shards", wav, tmp_path / "out2")
    assert code == 2 and err.startswith(f"error: {wav}:1: not UTF-8 text"), err


def test_a_manifest_in_the_place_of_the_index_is_refused(tmp_path, manifest):
    index = tmp_path / "shards.json"
    index.write_bytes(manifest[0].read_bytes())
    with pytest.raises(InputError, match="is an input of this run .the manifest."):
        write_shards(index, tmp_path)
    assert index.read_bytes() == manifest[0].read_bytes()

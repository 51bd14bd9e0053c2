"""Throughput of the training data path alone (no model): can the loader workers feed a GPU?

Speaker-grouped batches (``SpeakerBatchSampler``) of random crops read from wav files by
DataLoader workers (SpeechBrain ``DynamicItemDataset`` + ``SeededCrops`` / ``SeededBatches``
+ ``CropCollate``, as the recipe uses them), the main process only receiving the batches.
The corpus (random 16-bit wav files of ``--min-seconds`` to ``--max-seconds``) is written
under ``--folder`` (a temporary folder by default; reused when it holds the same corpus)
and read once to warm the page cache. For each crop length and each worker count 1..N,
utterances/s are measured over ``--batches`` batches after ``--warmup`` batches;
``--baseline`` also times SpeechBrain's own pieces (``read_audio`` + default ``PaddedBatch``,
the recipe's former path) in the same run. Prints utt/s per worker and how many workers a
GPU training at X utt/s needs.

    python benchmarks/bench_data_path.py --workers 2 --baseline
"""

import argparse
import csv
import json
import math
import os
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch
from speechbrain.dataio.dataio import read_audio

from maskproxy_losses.data.audio import SAMPLE_RATE, crop_samples
from maskproxy_losses.data.crops import CropCollate, SeededBatches, SeededCrops
from maskproxy_losses.data.sampler import SpeakerBatchSampler


def make_corpus(folder, speakers, utts, min_s, max_s, seed=0):
    """Random 16-bit mono wav files and ``train.csv`` (ID,duration,wav,spk_id); reused
    when ``folder`` already holds the same corpus."""
    os.makedirs(folder, exist_ok=True)
    spec = {"speakers": speakers, "utts": utts, "min_s": min_s, "max_s": max_s, "seed": seed}
    marker, table = os.path.join(folder, "corpus.json"), os.path.join(folder, "train.csv")
    if os.path.isfile(marker) and os.path.isfile(table):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == spec:
                return table
    rng, rows = np.random.default_rng(seed), []
    for s in range(speakers):
        for u in range(utts):
            n = int(rng.uniform(min_s, max_s) * SAMPLE_RATE)
            path = os.path.join(folder, f"spk{s:04d}_{u:03d}.wav")
            audio = np.clip(rng.standard_normal(n) * 3000, -32768, 32767).astype(np.int16)
            sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
            rows.append((f"spk{s:04d}_{u:03d}", f"{n / SAMPLE_RATE:.4f}", path, f"spk{s:04d}"))
    with open(table, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "duration", "wav", "spk_id"])
        writer.writerows(rows)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    return table


def warm_page_cache(table):
    """Read every file once; return (files, bytes)."""
    n_files = n_bytes = 0
    with open(table, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            with open(row["wav"], "rb") as w:
                n_bytes += len(w.read())
            n_files += 1
    return n_files, n_bytes


class SpeechBrainCrop:
    """The recipe's former crop: length from ``duration``, ``read_audio`` (picklable)."""

    def __init__(self, num_frames):
        self.crop = crop_samples(num_frames)

    def __call__(self, wav, duration):
        n = int(round(float(duration) * SAMPLE_RATE))
        if n > self.crop:
            start = int(torch.randint(0, n - self.crop + 1, ()).item())
            return read_audio({"file": wav, "start": start, "stop": start + self.crop})
        sig = read_audio(wav)
        return sig.repeat(math.ceil(self.crop / max(len(sig), 1)))[: self.crop]


def training_loader(table, frames, workers, args, path="fast"):
    """The recipe's training DataLoader over ``table`` and its sampler."""
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(table)
    if path == "fast":
        collate = CropCollate()
    else:
        data.add_dynamic_item(SpeechBrainCrop(frames), takes=["wav", "duration"], provides="sig")
        collate = sb.dataio.batch.PaddedBatch
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.update_from_didataset(data, "spk_id")
    encoder.ignore_len()
    data.add_dynamic_item(encoder.encode_label_torch, takes="spk_id", provides="spk_id_encoded")
    data.set_output_keys(["id", "wav" if path == "fast" else "sig", "spk_id_encoded"])
    speakers = [data.data[i]["spk_id"] for i in data.data_ids]
    sampler = SpeakerBatchSampler(
        speakers,
        speakers_per_batch=args.speakers_per_batch,
        utts_per_speaker=args.utts_per_speaker,
        seed=0,
    )
    if path == "fast":  # crops seeded per (seed, epoch, utterance), as in the recipe
        data, sampler = SeededCrops(data, frames), SeededBatches(sampler, seed=0)
    loader = sb.dataio.dataloader.make_dataloader(
        data,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=args.prefetch if workers else None,
    )
    return loader, sampler


def _cpu_seconds(pids):
    """User + system CPU seconds of the processes ``pids`` (Linux /proc), or None."""
    try:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def measure(table, frames, workers, args, path="fast"):
    """``(utt/s, utt per worker CPU second)`` over ``args.batches`` batches (after
    ``args.warmup``), epoch after epoch. The second figure is what one worker delivers on
    a core of its own (None where /proc is unavailable)."""
    loader, sampler = training_loader(table, frames, workers, args, path)
    iterators = []

    def batches():
        epoch = 0
        while True:
            epoch += 1
            sampler.set_epoch(epoch)
            iterators.append(iter(loader))  # persistent workers: the same processes
            yield from iterators[-1]

    stream = batches()
    expected = crop_samples(frames)
    for _ in range(args.warmup):
        next(stream)
    pids = [w.pid for w in getattr(iterators[-1], "_workers", [])]  # torch internals
    cpu0, n_utts, start = _cpu_seconds(pids), 0, time.perf_counter()
    for _ in range(args.batches):
        batch = next(stream)
        wavs, _ = batch.sig
        assert wavs.shape[1] == expected
        n_utts += wavs.shape[0]
    rate, cpu1 = n_utts / (time.perf_counter() - start), _cpu_seconds(pids)
    per_cpu = n_utts / (cpu1 - cpu0) if pids and cpu0 is not None and cpu1 > cpu0 else None
    stream.close()  # stop the persistent workers
    iterators.clear()
    return rate, per_cpu


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", default=None, help="corpus folder (default: a temp folder)")
    parser.add_argument("--speakers", type=int, default=100)
    parser.add_argument("--utts", type=int, default=10, help="utterances per speaker")
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--frames", type=int, nargs="+", default=[200, 350])
    parser.add_argument("--workers", type=int, default=2, help="measure 1..N loader workers")
    parser.add_argument("--speakers-per-batch", type=int, default=20)
    parser.add_argument("--utts-per-speaker", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4, help="batches prefetched per worker")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches per setting")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time SpeechBrain's read_audio + default PaddedBatch",
    )
    parser.add_argument("--gpu-rates", type=float, nargs="+", default=[1000, 3000, 10000])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_data_path_") as tmp:
        folder = args.folder or tmp
        table = make_corpus(folder, args.speakers, args.utts, args.min_seconds, args.max_seconds)
        n_files, n_bytes = warm_page_cache(table)
        print(
            f"CPU: {cpu_model()}, {os.cpu_count()} cores; corpus: {n_files} files, "
            f"{n_bytes / 2**20:.0f} MiB (page cache warmed), {args.min_seconds:g}-"
            f"{args.max_seconds:g} s; batches of {args.speakers_per_batch} speakers x "
            f"{args.utts_per_speaker}; {args.warmup} + {args.batches} batches per setting"
        )
        paths = ["fast", "speechbrain"] if args.baseline else ["fast"]
        per_worker = {}
        print(
            "utt/cpu-s: utterances per CPU second of the workers (what a worker delivers "
            "on a core of its own)"
        )
        print(
            f"{'path':12s} {'frames':>6s} {'workers':>7s} {'utt/s':>8s} {'utt/s/worker':>12s} "
            f"{'utt/cpu-s':>9s}"
        )
        for frames in args.frames:
            for workers in range(1, args.workers + 1):
                for path in paths:  # the two paths alternate within each setting
                    rate, per_cpu = measure(table, frames, workers, args, path)
                    if path == "fast":
                        per_worker.setdefault(frames, []).append((rate / workers, per_cpu))
                    cpu_text = f"{per_cpu:9.0f}" if per_cpu else f"{'n/a':>9s}"
                    print(
                        f"{path:12s} {frames:6d} {workers:7d} {rate:8.0f} "
                        f"{rate / workers:12.0f} {cpu_text}",
                        flush=True,
                    )
        for frames, rates in per_worker.items():
            one, one_cpu = rates[0]
            scaling = " ".join(
                f"{w + 1}:{r * (w + 1) / one:.2f}x" for w, (r, _) in enumerate(rates)
            )
            print(
                f"{frames}-frame crops: one worker {one:.0f} utt/s measured"
                + (f", {one_cpu:.0f} utt/s on a core of its own" if one_cpu else "")
                + f"; total vs one worker {scaling}"
            )
            for x in args.gpu_rates:
                line = (
                    f"  a GPU training at {x:.0f} utt/s needs ceil({x:.0f} / {one:.0f}) = "
                    f"{math.ceil(x / one)} workers"
                )
                if one_cpu:
                    line += (
                        f" (ceil({x:.0f} / {one_cpu:.0f}) = {math.ceil(x / one_cpu)} on idle cores)"
                    )
                print(line)


if __name__ == "__main__":
    main()

"""VoxCeleb2-shaped scale: data preparation, an epoch of speaker batches, manifest and shard
index loading, and shard vs file read rates, at 0.1 M, 0.3 M and 1.09 M list entries.

The list has VoxCeleb2's shape: 5,994 speakers and 1,092,009 utterances (182 per speaker
on average, log-normal, 18 to about 1,000), about 24 sessions per speaker. Its files are
hard links (``wav/idNNNNN/<session>/NNNNN.wav``) to a pool of ``--pool`` real 16 kHz wav
files, so every entry is a distinct path that data preparation probes as it would probe
VoxCeleb2 (its headers come from the page cache: network storage adds its latency per
file on top). The smaller lists take whole speakers, in a fixed random order, until
they reach their size: every list has the same per-speaker shape. Tree and lists are
made once under ``--work-dir`` and reused.

Each measurement runs in a fresh child process, which times its stage (wall and CPU
seconds, with the header-reading processes it waited for; the least of ``--repeat`` runs
for the short stages: CPU time is what shared cores disturb least) and measures its peak resident
memory above what the process held before the stage (Linux's high-water mark, reset
before the stage; the header-reading processes not included). The parent also reads the
child's whole peak (``wait4``'s ``ru_maxrss``; the imports of torch and SpeechBrain alone
take about 0.7 GB).

- ``prep``: ``prepare_voxceleb`` on the list (``--workers`` processes read the headers),
  the header reading (``check_audio``) timed apart;
- ``manifest``: ``train.csv`` loaded as the recipe loads it (SpeechBrain
  ``DynamicItemDataset.from_csv``, label encoder, the speaker column);
- ``epoch``: ``SpeakerBatchSampler`` built on the speaker column and one epoch of
  batches (``B = 200``; ``k = 2``, ``max_per_speaker = 100`` as ``mp_balance.yaml``; ``k``
  2 or 3 as ``mp.yaml``; ``k = 2`` uncapped), with ``tracemalloc``'s peak;
- ``index``: a shard index of ``train.csv`` (``data_prep.shards.layout``, 1,000 per
  shard; the index alone, no tar is written: at this size the tars would hold every
  file's bytes), read and planned by ``ShardedSpeakerBatches`` for 1 rank x 1 reader,
  2 ranks x 4 readers and (1 M entries and more) 8 ranks x 8 readers.

Then one uncapped epoch with a heavy-tailed speaker (300 speakers x 50 utterances and one
with 10,000 to 40,000), timed with the sampler's batching and, as the baseline in the same
run, with its first loop (quadratic in the groups that wait); and (unless ``--no-read``)
what loader workers deliver from tar shards and from files, on a corpus of real files
(``bench_data_path.make_corpus``: 150 speakers x 40 files of 3 to 8 s, written under
``--work-dir``) and its shards (100 files each): utterances per second of 200-frame crops
in batches of 20 speakers x 2 within an epoch, and per CPU second of the workers, for
1..``--workers`` workers, page cache warm.

    python benchmarks/bench_scale.py [--work-dir DIR] [--sizes 100000 300000 1092009]
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

VOX2_SPEAKERS, VOX2_UTTERANCES = 5994, 1_092_009
SR = 16000


# ------------------------------------------------------------------ the list and tree
def speaker_counts(speakers=VOX2_SPEAKERS, total=VOX2_UTTERANCES, seed=0):
    """Utterances per speaker: log-normal (sigma 0.55), at least 8, summing to ``total``."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(0.0, 0.55, speakers)
    counts = np.maximum(8, np.round(x / x.sum() * total)).astype(np.int64)
    counts[np.argmax(counts)] += total - counts.sum()
    return counts


def make_tree(work, pool, seed=0):
    """``work/wav/...`` (hard links to ``pool`` real files) and ``work/full_list.txt``
    (``spk relpath`` lines, speaker by speaker in a fixed random order); reused when
    ``work/tree.json`` says so."""
    counts = speaker_counts(seed=seed)
    spec = {"speakers": len(counts), "utterances": int(counts.sum()), "pool": pool, "seed": seed}
    marker, full = os.path.join(work, "tree.json"), os.path.join(work, "full_list.txt")
    if os.path.isfile(marker) and json.load(open(marker)) == spec:
        return full
    shutil.rmtree(os.path.join(work, "wav"), ignore_errors=True)
    os.makedirs(os.path.join(work, "pool"), exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = []
    for i in range(pool):  # 4 to 8 s of noise and a tone, 16-bit
        n = int(rng.uniform(4.0, 8.0) * SR)
        x = 0.2 * np.sin(2 * np.pi * (100 + 7 * i) * np.arange(n) / SR)
        x = x + 0.05 * rng.standard_normal(n)
        path = os.path.join(work, "pool", f"p{i:03d}.wav")
        sf.write(path, x, SR, subtype="PCM_16")
        sources.append(path)
    lines, k = [], 0
    for s in rng.permutation(len(counts)):
        spk = f"id{s:05d}"
        n_sessions = max(1, int(round(counts[s] / 7.5)))
        for u in range(int(counts[s])):
            rel = f"{spk}/s{u % n_sessions:03d}/{u:05d}.wav"
            path = os.path.join(work, "wav", rel)
            if u < n_sessions:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            os.link(sources[k % pool], path)
            k += 1
            lines.append(f"{spk} {rel}\n")
    with open(full, "w", encoding="utf-8") as f:
        f.writelines(lines)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    return full


def sub_list(work, full, size):
    """The first whole speakers of ``full`` reaching ``size`` lines, as a list file."""
    path = os.path.join(work, f"list_{size}.txt")
    if os.path.isfile(path):
        return path
    out, last = [], None
    with open(full, encoding="utf-8") as f:
        for line in f:
            spk = line.split(None, 1)[0]
            if len(out) >= size and spk != last:
                break
            out.append(line)
            last = spk
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(out)
    return path


# ------------------------------------------------------------------ child measurements
def _cpu_now():
    """CPU seconds (user + system) of this process and the children it waited for."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _memory_kb(field):
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _timed(work):
    """``(result of work(), {"seconds": wall, "cpu_s": CPU, "peak_mb": the most resident
    memory above that before the call})``; Linux's high-water mark is reset first
    (``/proc/self/clear_refs``), so the imports' own peak does not hide the stage's."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    rss, start, cpu = _memory_kb("VmRSS"), time.perf_counter(), _cpu_now()
    result = work()
    seconds, cpu = time.perf_counter() - start, _cpu_now() - cpu
    return result, {"seconds": seconds, "cpu_s": cpu, "peak_mb": (_memory_kb("VmHWM") - rss) / 1024}


def _best(work, repeat):
    """:func:`_timed` ``repeat`` times: the last result, the least seconds and CPU seconds
    (the least disturbed by other processes) and the largest peak."""
    costs = []
    for _ in range(max(1, repeat)):
        result, cost = _timed(work)
        costs.append(cost)
    best = {key: min(c[key] for c in costs) for key in ("seconds", "cpu_s")}
    return result, {**best, "peak_mb": max(c["peak_mb"] for c in costs)}


def _child_prep(a):
    import data_prep.voxceleb as vox

    inner, spent = vox.check_audio, []

    def check_audio(*args, **kw):  # the header reading, timed apart
        start = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            spent.append(time.perf_counter() - start)

    vox.check_audio = check_audio
    root = os.path.join(a.work_dir, "wav")
    _, cost = _timed(
        lambda: vox.prepare_voxceleb(
            a.out, train_root=root, train_list=a.list, num_workers=a.workers, skip_if_done=False
        )
    )
    return {**cost, "headers_s": sum(spent)}


def _speaker_column(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [row["spk_id"] for row in csv.DictReader(f)]


def _child_manifest(a):
    import speechbrain as sb

    def load():
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(a.csv)
        encoder = sb.dataio.encoder.CategoricalEncoder()
        encoder.update_from_didataset(data, "spk_id")
        return [data.data[i]["spk_id"] for i in data.data_ids]

    speakers, cost = _best(load, a.repeat)
    return {**cost, "rows": len(speakers)}


def _child_epoch(a):
    import tracemalloc

    from maskproxy_losses.data.sampler import SpeakerBatchSampler

    speakers = _speaker_column(a.csv)
    sizes = tuple(int(s) for s in a.sizes.split(","))
    cap = None if a.cap == 0 else a.cap

    def one_epoch(epoch):
        sampler = SpeakerBatchSampler(speakers, 200, sizes if len(sizes) > 1 else sizes[0], cap)
        sampler.set_epoch(epoch)
        return sampler, sampler._epoch_batches()

    (sampler, batches), cost = _best(lambda: one_epoch(1), a.repeat)
    del sampler, batches
    tracemalloc.start()  # a second epoch, for the memory it allocates (slower when traced)
    sampler, batches = one_epoch(2)
    peak = tracemalloc.get_traced_memory()[1]
    return {**cost, "batches": len(batches), "traced_mb": peak / 2**20}


def _write_index(csv_path, index_path, shard_size=1000):
    """``shards.json`` of ``csv_path`` as ``data_prep.shards.write_shards`` lays it out,
    without the tar files (sizes left at 0)."""
    from data_prep.shards import INDEX_FORMAT, INDEX_VERSION, layout, read_train_manifest

    rows, speakers = read_train_manifest(csv_path)
    shards = layout([r[3] for r in rows], shard_size, 12, 0)
    entries = [
        {
            "path": f"shard-{i:06d}.tar",
            "utterances": sum(len(m) for _, m in runs),
            "duration": round(sum(rows[r][1] for _, m in runs for r in m), 6),
            "bytes": 0,
            "speakers": [[spk, len(m)] for spk, m in runs],
        }
        for i, runs in enumerate(shards)
    ]
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "speakers": speakers,
        "utterances": len(rows),
        "shards": entries,
    }
    with open(index_path, "w", encoding="utf-8") as f:
        json.dump(index, f, separators=(",", ":"))


def _child_index(a):
    from maskproxy_losses.data.shards import ShardedSpeakerBatches

    data, cost = _best(
        lambda: ShardedSpeakerBatches(
            a.index,
            speakers_per_batch=200,
            utts_per_speaker=2,
            max_per_speaker=100,
            num_workers=a.readers,
            num_replicas=a.ranks,
            rank=0,
        ),
        a.repeat,
    )
    return {**cost, "batches_per_rank": len(data)}


CHILDREN = {
    "import": lambda a: {},
    "prep": _child_prep,
    "manifest": _child_manifest,
    "epoch": _child_epoch,
    "index": _child_index,
}


def _imports():
    """What every child imports first, so that the import baseline is comparable."""
    import speechbrain  # noqa: F401
    import torch  # noqa: F401

    import data_prep.voxceleb  # noqa: F401
    import maskproxy_losses.data.sampler  # noqa: F401
    import maskproxy_losses.data.shards  # noqa: F401


def run_child(stage, **options):
    """Run ``stage`` in a fresh interpreter: its result (``seconds`` and ``cpu_s`` of the
    stage itself, measured inside) plus the child's ``peak_rss_mb``."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", stage]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{stage} failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


# ------------------------------------------------------------------ a heavy tail
def _first_fill(groups, size):
    """The sampler's first batching loop (one list of waiting groups, scanned for every
    new group): the baseline of :func:`heavy_tail`."""
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


def heavy_tail(tails=(10_000, 20_000, 40_000)):
    """CPU seconds of one uncapped epoch (B = 200, k = 2) of 300 speakers x 50 utterances
    plus one speaker with ``tail`` utterances, with the sampler's batching and with its
    first loop (same groups, same batches)."""
    from maskproxy_losses.data import sampler as module

    rows = []
    for tail in tails:
        speakers = [f"s{i}" for i in range(300) for _ in range(50)] + ["big"] * tail
        times = []
        for fill in (module._fill_batches, _first_fill):
            original, module._fill_batches = module._fill_batches, fill
            try:
                sampler = module.SpeakerBatchSampler(speakers, 200, 2, max_per_speaker=None)
                start = time.process_time()
                batches = sampler._epoch_batches()
                times.append(time.process_time() - start)
            finally:
                module._fill_batches = original
            if fill is _first_fill:
                assert (
                    batches == module.SpeakerBatchSampler(speakers, 200, 2, None)._epoch_batches()
                )
        rows.append((tail, *times))
        print(f"  tail {tail:6d}: {times[0]:6.2f} s, first loop {times[1]:6.2f} s", flush=True)
    return rows


# ------------------------------------------------------------------ read rates
def _shard_rate(index, workers, batches, warmup):
    """``(utt/s, utt per worker CPU second, seconds to the first batch)`` of the sharded
    loader within its first epoch (after ``warmup`` batches)."""
    import torch
    from bench_data_path import _cpu_seconds

    from maskproxy_losses.data.shards import ShardedSpeakerBatches

    data = ShardedSpeakerBatches(index, 20, 2, 100, crop_frames=200, num_workers=workers)
    loader = torch.utils.data.DataLoader(data, **data.loader_options())

    def stream():
        epoch = 0
        while True:
            epoch += 1
            data.set_epoch(epoch)  # before iter(): persistent workers read it then
            yield from loader

    batches_in, start = stream(), time.perf_counter()
    next(batches_in)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(batches_in)
    pids = [w.pid for w in loader._iterator._workers]  # torch internals
    cpu0, utts, start = _cpu_seconds(pids), 0, time.perf_counter()
    for _ in range(batches):
        utts += next(batches_in).sig.data.shape[0]
    rate, cpu1 = utts / (time.perf_counter() - start), _cpu_seconds(pids)
    batches_in.close()
    return rate, (utts / (cpu1 - cpu0) if cpu0 is not None and cpu1 > cpu0 else None), first


def read_rates(work, workers, batches=60, warmup=10):
    """``[(workers, files utt/s, files utt/cpu-s, shards utt/s, shards utt/cpu-s, seconds
    to the shards' first batch)]``: the recipe's file loader and the sharded loader, 1..
    ``workers`` loader workers, within an epoch (150 batches)."""
    import torch
    from bench_data_path import make_corpus, measure, warm_page_cache

    from data_prep.shards import write_shards

    torch.set_num_threads(1)
    folder = os.path.join(work, "read_corpus")
    table = make_corpus(folder, 150, 40, 3.0, 8.0)
    index = write_shards(table, os.path.join(folder, "shards"), shard_size=100)
    warm_page_cache(table)
    for name in sorted(os.listdir(os.path.dirname(index))):
        with open(os.path.join(os.path.dirname(index), name), "rb") as f:
            while f.read(1 << 24):
                pass
    args = argparse.Namespace(
        speakers_per_batch=20, utts_per_speaker=2, prefetch=4, batches=batches, warmup=warmup
    )
    rows = []
    print("  utt/cpu-s: utterances per CPU second of the workers (a worker on a core of its own)")
    for n in range(1, workers + 1):
        files, files_cpu = measure(table, 200, n, args)
        shards, shards_cpu, first = _shard_rate(index, n, batches, warmup)
        rows.append((n, files, files_cpu, shards, shards_cpu, first))
        print(
            f"  {n} worker(s): files {files:6.0f} utt/s, {files_cpu or 0:6.0f} utt/cpu-s; "
            f"shards {shards:6.0f} utt/s, {shards_cpu or 0:6.0f} utt/cpu-s, first batch "
            f"after {first:.1f} s",
            flush=True,
        )
    return rows


# ------------------------------------------------------------------ main
def _cpu():
    from bench_data_path import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores"


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "maskproxy_scale"))
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, VOX2_UTTERANCES])
    p.add_argument("--pool", type=int, default=64, help="real wav files the tree links to")
    p.add_argument("--workers", type=int, default=2, help="header readers / loader workers")
    p.add_argument("--no-read", action="store_true", help="skip the shard / file read rates")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each short stage (the least time is kept)"
    )
    # child options
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    for name in ("list", "out", "csv", "index", "sizes-text"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--readers", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _imports()
        if a.child == "epoch":
            a.sizes = a.sizes_text
        print(json.dumps(CHILDREN[a.child](a)))
        return

    print(f"CPU: {_cpu()}; load average {os.getloadavg()[0]:.1f} at the start")
    full = make_tree(a.work_dir, a.pool)
    base = run_child("import")
    print(f"import baseline: {base['peak_rss_mb']:.0f} MB resident")
    figures = {"cpu": _cpu(), "import_rss_mb": base["peak_rss_mb"], "sizes": {}}
    for size in a.sizes:
        lst = sub_list(a.work_dir, full, size)
        out = os.path.join(a.work_dir, f"prep_{size}")
        shutil.rmtree(out, ignore_errors=True)
        res = {"prep": run_child("prep", list=lst, out=out, work_dir=a.work_dir, workers=a.workers)}
        train_csv = os.path.join(out, "train.csv")
        res["manifest"] = run_child("manifest", csv=train_csv, repeat=a.repeat)
        for label, sizes, cap in (("k2_cap100", "2", 100), ("k23_cap100", "2,3", 100)):
            res[f"epoch_{label}"] = run_child(
                "epoch", csv=train_csv, sizes_text=sizes, cap=cap, repeat=a.repeat
            )
        res["epoch_k2_uncapped"] = run_child(
            "epoch", csv=train_csv, sizes_text="2", cap=0, repeat=a.repeat
        )
        index = os.path.join(a.work_dir, f"index_{size}.json")
        _write_index(train_csv, index)
        for ranks, readers in ((1, 1), (2, 4)) + (((8, 8),) if size >= 1_000_000 else ()):
            res[f"index_{ranks}x{readers}"] = run_child(
                "index", index=index, ranks=ranks, readers=readers, repeat=a.repeat
            )
        with open(train_csv, encoding="utf-8") as f:
            rows = sum(1 for _ in f) - 1
        figures["sizes"][size] = {"train_rows": rows, **res}
        print(f"{size} list entries ({rows} training rows):")
        for name, r in res.items():
            extra = {k: v for k, v in r.items() if k not in ("seconds", "cpu_s", "peak_rss_mb")}
            extra = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items()
            )
            print(
                f"  {name:18s} {r['seconds']:7.2f} s  cpu {r['cpu_s']:7.2f} s  ({extra})",
                flush=True,
            )
    if len(a.sizes) > 1:
        lo, hi = a.sizes[0], a.sizes[-1]
        print(f"growth {lo} -> {hi} entries (x{hi / lo:.1f}), CPU seconds:")
        for name in figures["sizes"][lo]:
            if isinstance(figures["sizes"][lo][name], dict) and name in figures["sizes"][hi]:
                r0, r1 = figures["sizes"][lo][name], figures["sizes"][hi][name]
                print(
                    f"  {name:18s} x{r1['cpu_s'] / r0['cpu_s']:5.1f} CPU time, "
                    f"x{r1['peak_mb'] / max(r0['peak_mb'], 0.1):4.1f} peak memory"
                )
    print("an uncapped epoch with one heavy-tailed speaker (300 x 50 utterances + the tail):")
    figures["heavy_tail"] = heavy_tail()
    if not a.no_read:
        print("read rates (page cache warm), 200-frame crops, batches of 20 speakers x 2:")
        figures["read"] = read_rates(a.work_dir, a.workers)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()

"""Throughput of ``prepare_voxceleb`` (files/s) on 20,000 tiny wav files.

The files (0.1 s each, 200 speakers x 2 sessions x 50) are generated once and cached
under ``--work-dir``. Each mode is timed with the serial run (``--num-workers 1``)
as the baseline of the same run; the page cache is warm after the first pass.

    python benchmarks/bench_data_prep.py [--work-dir DIR] [--files 20000] [--num-workers 2]
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import soundfile as sf

from data_prep.voxceleb import prepare_voxceleb

TARGET = 1800.0  # files/s on 2 cores


def make_tree(root, n_files, per_session=50):
    """``root/wav/idXXXXX/sY/NNNNN.wav`` + ``root/train_list.txt``; reused when complete."""
    done = os.path.join(root, f"done-{n_files}")
    list_path = os.path.join(root, "train_list.txt")
    if os.path.exists(done):
        return list_path
    shutil.rmtree(root, ignore_errors=True)
    audio = (np.random.default_rng(0).normal(0, 0.1, 1600) * 32767).astype(np.int16)
    lines = []
    for k in range(n_files):
        spk, sess, utt = k // (2 * per_session), (k // per_session) % 2, k % per_session
        rel = f"id{spk + 1:05d}/s{sess}/{utt + 1:05d}.wav"
        path = os.path.join(root, "wav", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, audio, 16000, subtype="PCM_16")
        lines.append(f"id{spk + 1:05d} {rel}\n")
    with open(list_path, "w") as f:
        f.writelines(lines)
    open(done, "w").close()
    return list_path


def timed(n_files, **kw):
    out = tempfile.mkdtemp(prefix="bench-out-")
    try:
        start = time.perf_counter()
        prepare_voxceleb(out, skip_if_done=False, **kw)
        return n_files / (time.perf_counter() - start)
    finally:
        shutil.rmtree(out)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--work-dir", default=os.path.join(tempfile.gettempdir(), "maskproxy_bench_data_prep")
    )
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--num-workers", type=int, default=2)
    a = p.parse_args()
    start = time.perf_counter()
    list_path = make_tree(a.work_dir, a.files)
    print(f"{a.files} files ready under {a.work_dir} ({time.perf_counter() - start:.1f} s)")
    wav_root = os.path.join(a.work_dir, "wav")
    timed(a.files, train_root=wav_root, train_list=list_path, num_workers=1)  # warm the cache
    for mode, extra in (("train list", {"train_list": list_path}), ("directory scan", {})):
        serial = timed(a.files, train_root=wav_root, num_workers=1, **extra)
        parallel = timed(a.files, train_root=wav_root, num_workers=a.num_workers, **extra)
        verdict = "ok" if parallel >= TARGET else f"below the {TARGET:.0f} files/s target"
        print(
            f"{mode:>14}: {parallel:8.0f} files/s with {a.num_workers} workers, "
            f"{serial:8.0f} files/s serial (x{parallel / serial:.2f}) - {verdict}"
        )


if __name__ == "__main__":
    main()

"""What does a dev pass cost? Seconds per 1,000 files, batched against one file at a time.

Embeds ``--files`` generated wav files with VoxCeleb-like durations (log-normal around
``--mean_seconds``, 4-20 s) through the training recipe's dev pass (``SpeakerBrain``'s
evaluation stage: front end, normalisation, masked encoder), twice:

* batched: the recipe's loader, length-bucketed padded batches of ``--batch_seconds`` of
  audio (a comma list: one setting each) read by ``--num_workers`` loader workers
  (``verification_loader``);
* one at a time: one file per batch read in the main process (the recipe before: batch
  size 1, no worker).

Each loader is made once (its workers kept); the settings' passes alternate for
``--rounds`` rounds after a warm-up pass each (the median round counts: a shared
machine has outliers). Prints seconds per 1,000 files for each,
and, given the training speed at the run's
batch (``--train_utt_per_s``, e.g. from ``bench_recipe.py``), the dev pass's share of an
epoch at VoxCeleb2 proportions: an epoch of ``--epoch_utts`` (600,000) training
utterances, a dev pass over the ``--dev_files`` (20,000) files that 10,000 dev trials
use (batched), or over all ``--dev_files_all`` (55,000) dev files of ``dev_share 0.05``
one at a time (before). Target: <= 10 % of an epoch.

    python benchmarks/bench_dev_pass.py --files 200 --threads 2
    python benchmarks/bench_dev_pass.py --device cuda:0 --files 2000 --num_workers 8 \
        --train_utt_per_s 2200
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch

from maskproxy_losses.data.crops import full_file_item
from maskproxy_losses.data.length_batches import verification_loader_options
from maskproxy_losses.training.hparams import load_recipe_hparams

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
sys.path.insert(0, str(RECIPE))
import train_speaker_embeddings as recipe  # noqa: E402


def dev_set(folder, n, mean_seconds, seed=0):
    """A dev manifest of ``n`` generated files (log-normal durations in [4, 20] s) as the
    recipe's dev dataset (whole files, sorted by duration)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.lognormal(np.log(mean_seconds), 0.4, n), 4.0, 20.0)
    rows = []
    for i, s in enumerate(seconds):
        path = folder / f"d{i:05d}.wav"
        samples = int(s * 16000)
        if not path.exists() or sf.info(str(path)).frames != samples:
            noise = rng.normal(0, 3000, samples).clip(-32768, 32767).astype(np.int16)
            sf.write(str(path), noise, 16000, subtype="PCM_16")
        rows.append(f"d{i:05d},{samples / 16000},{path},s{i % 50}")
    csv = folder / "dev.csv"
    csv.write_text("ID,duration,wav,spk_id\n" + "\n".join(rows) + "\n")
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(str(csv))
    data = data.filtered_sorted(sort_key="duration")
    data.add_dynamic_item(full_file_item())
    data.set_output_keys(["id", "sig", "wav"])
    return data, float(seconds.sum())


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hparams", default=str(RECIPE / "hparams" / "mp_balance.yaml"))
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mean_seconds", type=float, default=8.0)
    parser.add_argument("--batch_seconds", default="30,100,400", help="comma list")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_workers", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train_utt_per_s", type=float, default=None)
    parser.add_argument("--epoch_utts", type=int, default=600_000)
    parser.add_argument("--dev_files", type=int, default=20_000)
    parser.add_argument("--dev_files_all", type=int, default=55_000)
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bench_dev_pass"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data, audio_s = dev_set(args.data, args.files, args.mean_seconds)
    out = tempfile.mkdtemp(prefix="bench_dev_pass_")
    hparams, _ = load_recipe_hparams(args.hparams, f"builtin_corpus: False\noutput_folder: {out}")
    modules = {k: hparams[k] for k in ("compute_features", "mean_var_norm", "embedding_model")}
    brain = recipe.SpeakerBrain(
        modules=modules,
        hparams=hparams,
        run_opts={"device": args.device, "precision": "fp32", "noprogressbar": True},
        dev_trials=[],
    )
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"dev pass on {args.device} ({name}), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}: {args.files} files, {audio_s / args.files:.1f} s mean"
    )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    settings = {f"batched {b:g} s": b for b in map(float, args.batch_seconds.split(","))}
    settings["one at a time"] = None
    loaders, seconds = {}, {k: [] for k in settings}
    for label, budget in settings.items():  # each loader made once, its workers kept
        options = {"batch_seconds": 1e-3, "num_workers": 0}
        if budget is not None:
            options = {"batch_seconds": budget, "num_workers": args.num_workers}
        kwargs = verification_loader_options(data, options, args.device)
        loaders[label] = brain.make_dataloader(data, sb.Stage.TEST, ckpt_prefix=None, **kwargs)
        brain.evaluate(loaders[label])  # warm-up: workers started, cuDNN / oneDNN primed
    for _ in range(args.rounds):  # alternating passes keep the machine's drifts out
        for label, loader in loaders.items():
            sync()
            start = time.perf_counter()
            brain.evaluate(loader)
            sync()
            seconds[label].append(time.perf_counter() - start)
            assert len(brain.embeddings) == args.files
    per_1000 = {k: 1000 * statistics.median(v) / args.files for k, v in seconds.items()}
    single = per_1000["one at a time"]
    for label, value in per_1000.items():
        batches = len(loaders[label].batch_sampler)
        print(f"{label:>18}: {value:8.2f} s per 1,000 files ({batches} batches), "
              f"{value / single:.2f} x one at a time")  # fmt: skip
    best = min((k for k in per_1000 if k != "one at a time"), key=per_1000.get)
    if args.train_utt_per_s:
        train_s = args.epoch_utts / args.train_utt_per_s
        for label, files, key in (
            (f"now (trial files, {best})", args.dev_files, best),
            ("before (all dev files, one at a time)", args.dev_files_all, "one at a time"),
        ):
            dev_s = files * per_1000[key] / 1000
            print(
                f"dev pass share of an epoch, {label}: {dev_s:.0f} s of "
                f"{train_s + dev_s:.0f} s = {100 * dev_s / (train_s + dev_s):.1f} %"
            )


if __name__ == "__main__":
    main()

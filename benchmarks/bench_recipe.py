"""Does the training step keep the device busy? Recipe utterances/s against the bare encoder.

For each batch size (``--utts``, utterances per batch = 2 per speaker), precision and
mode (eager, compiled) it times, in alternating blocks of ``--steps`` steps (``--rounds``
of each, after ``--warmup`` steps of each):

* recipe: the recipe's training loop body on real batches: the next batch from the
  recipe's DataLoader (speaker-grouped sampler, seeded crops read from wav files by
  ``--num_workers`` loader workers, the collate's speaker grouping, pinned on CUDA),
  ``SpeakerBrain.fit_batch`` (front end, encoder, loss, backward, clipping, SGD) and
  ``update_average`` (the step log read every ``log_every`` steps);
* bare: the encoder alone on random features of the same shape: forward, backward,
  gradient clipping (SpeechBrain's ``max_grad_norm`` 5) and the recipe's optimiser (at
  lr 0: the same arithmetic, while the weights stay as initialised instead of drifting
  under a loss on random features).

The training set is synthetic and large (``--speakers_total`` speakers x
``--utts_per_speaker`` utterances, read from a pool of ``--pool`` generated 4 s wav files):
one epoch holds every timed step, so no loader starts or restarts inside a timed block.
The device is synchronised at block ends only. Compiled: ``--compile True`` in the recipe
(the whole forward as one graph) against ``torch.compile`` of the bare encoder. Prints a
row per setting: the median rates over the rounds and the median of the rounds' ratios
recipe / bare (a shared machine has outliers; targets: >= 0.95 on a CPU, >= 0.90 on a
GPU at 120 and 400 utterances per batch).

    python benchmarks/bench_recipe.py                               # 200 x 2 x 350, CPU
    python benchmarks/bench_recipe.py --utts 40 --crop_frames 200 --threads 2
    python benchmarks/bench_recipe.py --device cuda:0 --utts 40,120,400 --precision fp32,bf16 \
        --compile both --num_workers 8

``--precision``: a comma list of fp32 / bf16, or ``auto`` (the recipe's choice here).
"""

import argparse
import copy
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

from maskproxy_losses.training.hparams import load_recipe_hparams
from maskproxy_losses.training.recipe_setup import dataio_prep, loader_options
from maskproxy_losses.utils.precision import autocast_for, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
sys.path.insert(0, str(RECIPE))
import train_speaker_embeddings as recipe  # noqa: E402


def synthetic_manifests(folder, speakers, utts, pool, seconds=4.0, seed=0):
    """A train.csv of ``speakers`` x ``utts`` utterances over ``pool`` generated wav files
    (and a 2-file dev / test csv, unused): the manifests ``dataio_prep`` reads."""
    folder = Path(folder)
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(pool):
        path = folder / "wav" / f"p{i:04d}.wav"
        if not path.exists():
            noise = rng.normal(0, 3000, int(seconds * 16000)).clip(-32768, 32767)
            sf.write(str(path), noise.astype(np.int16), 16000, subtype="PCM_16")
        paths.append(str(path))
    rows = [
        f"s{s:05d}_{u:03d},{seconds},{paths[(s * utts + u) % pool]},s{s:05d}"
        for s in range(speakers)
        for u in range(utts)
    ]
    header = "ID,duration,wav,spk_id\n"
    (folder / "train.csv").write_text(header + "\n".join(rows) + "\n")
    small = f"{header}d0,{seconds},{paths[0]},s0\nd1,{seconds},{paths[1]},s1\n"
    for name in ("dev.csv", "test.csv"):
        (folder / name).write_text(small)
    return {k: str(folder / f"{k[:-4]}.csv") for k in ("train_csv", "dev_csv", "test_csv")}


def measure(args, manifests, utts, precision, compiled):
    """``[(recipe utt/s, bare utt/s)]`` of each round of alternating blocks at one setting."""
    device, cuda = args.device, args.device.startswith("cuda")
    overrides = {
        "builtin_corpus": False, "speakers_per_batch": utts // 2, "utts_per_speaker": 2,
        "crop_frames": args.crop_frames, "num_workers": args.num_workers,
        "output_folder": tempfile.mkdtemp(prefix="bench_recipe_"), "log_every": args.log_every,
    }  # fmt: skip
    text = "\n".join(f"{k}: {v}" for k, v in overrides.items())
    hparams, _ = load_recipe_hparams(args.hparams, text)
    train, dev, _, sampler, n_speakers = dataio_prep(hparams, manifests)
    hparams["modules"]["loss_fn"] = hparams["loss_fn"](n_classes=n_speakers)
    model = hparams["embedding_model"]
    if cuda and precision == "bf16":
        model.to(memory_format=torch.channels_last)
    bare = copy.deepcopy(model).to(device).train()
    brain = recipe.SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": device, "precision": precision, "compile": compiled},
        dev_trials=[],
    )
    brain.on_fit_start()  # optimiser; with compile, the whole training forward compiled
    brain.modules.train()
    train_kwargs, _ = loader_options(hparams, device, sampler, dev)
    loader = brain.make_dataloader(train, sb.Stage.TRAIN, **train_kwargs)
    train_kwargs["batch_sampler"].set_epoch(1)
    brain.on_stage_start(sb.Stage.TRAIN, 1)
    batches = iter(loader)
    bare_opt = hparams["opt_class"](bare.parameters())  # the recipe's SGD, all its arithmetic,
    bare_opt.param_groups[0]["lr"] = 0.0  # at lr 0: the weights stay as initialised
    bare_fwd = torch.compile(bare) if compiled else bare
    feats = torch.randn(utts, args.crop_frames + 2, hparams["n_mels"], device=device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def recipe_step():
        brain.step += 1
        loss = brain.fit_batch(next(batches))
        brain.avg_train_loss = brain.update_average(loss, brain.avg_train_loss)

    def bare_step():
        with autocast_for(precision, device):
            out = bare_fwd(feats)
        out.float().square().mean().backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), brain.max_grad_norm)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        recipe_step()
        bare_step()
    rounds = []  # (recipe utt/s, bare utt/s) of each round
    for _ in range(args.rounds):
        rates = []
        for step in (recipe_step, bare_step):
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            rates.append(utts * args.steps / (time.perf_counter() - start))
        rounds.append(rates)
    return rounds


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hparams", default=str(RECIPE / "hparams" / "mp_balance.yaml"))
    parser.add_argument("--utts", default="400", help="utterances per batch, comma list")
    parser.add_argument("--crop_frames", type=int, default=350)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="recipe / bare block pairs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num_workers", default="auto")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", help="fp32,bf16 or auto")
    parser.add_argument("--compile", default="eager", choices=["eager", "compiled", "both"])
    parser.add_argument("--speakers_total", type=int, default=1000)
    parser.add_argument(
        "--utts_per_speaker", type=int, default=0, help="0: every step in one epoch"
    )
    parser.add_argument("--pool", type=int, default=256, help="distinct wav files")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "bench_recipe"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):  # as the recipe runs on a GPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    sizes = [int(u) for u in args.utts.split(",")]
    steps = args.warmup + args.steps * args.rounds
    utts = args.utts_per_speaker or 2 * (steps * max(sizes) // 2 // args.speakers_total + 2)
    manifests = synthetic_manifests(args.data, args.speakers_total, utts, args.pool)
    precisions = [p for p in args.precision.split(",")]
    precisions = [
        resolve_precision("auto", args.device)[0] if p == "auto" else p for p in precisions
    ]
    modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(
        f"{Path(args.hparams).stem} on {args.device} ({name}), torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {args.crop_frames}-frame crops, loader workers "
        f"{args.num_workers}, synthetic set {args.speakers_total} speakers x {utts} utterances"
    )
    print("| utt / batch | precision | mode | recipe utt/s | bare utt/s | recipe / bare |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        for precision in precisions:
            for compiled in modes:
                rounds = measure(args, manifests, n, precision, compiled)
                r, b = (statistics.median(x) for x in zip(*rounds))
                ratio = statistics.median(x / y for x, y in rounds)
                mode = "compiled" if compiled else "eager"
                print(
                    f"| {n} | {precision} | {mode} | {r:.1f} | {b:.1f} | {ratio:.2f} |", flush=True
                )


if __name__ == "__main__":
    main()

"""Is training compute-bound? Recipe utterances/s against the bare encoder, same batches.

Times, in alternating blocks of ``--steps`` steps (``--rounds`` of each):
  * recipe: ``SpeakerBrain.fit_batch`` on real batches from the recipe's DataLoader
    (speaker-grouped sampler, random crops read from disk by ``--num_workers`` loader
    workers, Fbank, normalisation, loss, backward, SGD step);
  * bare: ResNetSE34L forward + backward on random features of exactly the shapes of
    the recipe batches of the block before (same batch sizes, same crop).
Prints both rates per round and the ratio of the totals (target: recipe >= 90 % of bare).
Alternating blocks keep slow drifts of the machine out of the ratio.

    python benchmarks/bench_recipe.py --hparams recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml \
        --speakers 20 --steps 10 --rounds 3 --threads 2
    python benchmarks/bench_recipe.py --device cuda:0 --num_workers 4 --precision auto

Both sides run at the same precision: ``--precision fp32|bf16|auto`` (``auto``: what the
recipe picks on this device, see ``maskproxy_losses.utils.precision``); ``--precision both``
measures fp32 and the auto choice one after the other in the same run.
"""

import argparse
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch

from maskproxy_losses.data.augment import build_augmenter
from maskproxy_losses.data.crops import train_loader_options
from maskproxy_losses.training.batch_trace import BatchTrace
from maskproxy_losses.training.hparams import load_recipe_hparams
from maskproxy_losses.training.recipe_setup import dataio_prep, prepare_manifests
from maskproxy_losses.utils.precision import autocast_for, resolve_precision

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
sys.path.insert(0, str(RECIPE))
import train_speaker_embeddings as recipe  # noqa: E402


def measure(args, precision):
    """Alternating recipe / bare blocks at ``precision``; returns the recipe / bare ratio."""
    device = args.device
    overrides = (
        f"speakers_per_batch: {args.speakers}\noutput_folder: {args.output_folder}\n"
        f"num_workers: {args.num_workers}"
    )
    hparams, _ = load_recipe_hparams(args.hparams, overrides)
    manifests = prepare_manifests(hparams)
    train, _, _, sampler, n_speakers = dataio_prep(hparams, manifests)
    hparams["modules"]["loss_fn"] = hparams["loss_fn"](n_classes=n_speakers)
    brain = recipe.SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": device, "precision": precision},
        dev_trials=[],
        augment=build_augmenter(hparams),  # as the recipe (None by default)
        trace=BatchTrace(hparams["batch_trace"]),  # off unless the yaml sets it
    )
    brain.on_fit_start()
    brain.modules.train()
    model = brain.modules.embedding_model
    frames = hparams["crop_frames"] + 2  # Fbank frames of a crop
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def recipe_batches():  # epoch after epoch, one DataLoader as in the recipe
        kwargs = train_loader_options(sampler, args.num_workers, hparams["seed"])
        loader = brain.make_dataloader(train, sb.Stage.TRAIN, **kwargs)
        epoch = 0
        while True:
            epoch += 1
            kwargs["batch_sampler"].set_epoch(epoch)  # the seeded batches and the sampler
            brain.on_stage_start(sb.Stage.TRAIN, epoch)
            yield from loader

    def bare_step(n):
        model.zero_grad(set_to_none=True)
        with autocast_for(precision, device):
            out = model(torch.randn(n, frames, hparams["n_mels"], device=device))
        out.float().sum().backward()

    batches = recipe_batches()
    for _ in range(args.warmup):
        batch = next(batches)
        brain.fit_batch(batch)
        bare_step(len(batch.id))
    n_total = t_recipe_total = t_bare_total = 0
    print(
        f"{hparams['loss_name']}: {args.speakers} speakers x {hparams['utts_per_speaker']} "
        f"utterances, {hparams['crop_frames']}-frame crops, device={device}, precision={precision},"
        f" threads={args.threads}, loader workers={args.num_workers}"
    )
    for r in range(1, args.rounds + 1):
        sizes = []
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            batch = next(batches)
            sizes.append(len(batch.id))
            brain.fit_batch(batch)
        sync()
        t_recipe, t0 = time.perf_counter() - t0, time.perf_counter()
        for n in sizes:
            bare_step(n)
        sync()
        t_bare = time.perf_counter() - t0
        n_total += sum(sizes)
        t_recipe_total, t_bare_total = t_recipe_total + t_recipe, t_bare_total + t_bare
        print(
            f"round {r}: batches of {min(sizes)}-{max(sizes)} utterances, "
            f"recipe {sum(sizes) / t_recipe:7.1f} utt/s, bare {sum(sizes) / t_bare:7.1f} utt/s"
        )
    recipe_rate, bare_rate = n_total / t_recipe_total, n_total / t_bare_total
    print(f"bare encoder forward+backward : {bare_rate:7.1f} utt/s")
    print(f"recipe fit_batch (everything) : {recipe_rate:7.1f} utt/s")
    print(f"ratio recipe / bare           : {recipe_rate / bare_rate:7.2f}  (target >= 0.90)")
    return recipe_rate / bare_rate


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hparams", default=str(RECIPE / "hparams" / "mp_balance.yaml"))
    parser.add_argument("--speakers", type=int, default=20, help="speakers per batch")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="recipe / bare block pairs")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="both", choices=["fp32", "bf16", "auto", "both"])
    parser.add_argument("--output_folder", default="results/bench_recipe")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    auto, why = resolve_precision("auto", args.device)
    print(f"auto precision on {args.device}: {auto} ({why})")
    choices = {"both": ["fp32"] + ([auto] if auto != "fp32" else []), "auto": [auto]}
    ratios = {p: measure(args, p) for p in choices.get(args.precision, [args.precision])}
    print("ratios: " + ", ".join(f"{p} {r:.2f}" for p, r in ratios.items()))


if __name__ == "__main__":
    main()

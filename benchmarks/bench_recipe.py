"""Is training compute-bound? Recipe steps/s against the bare encoder, same batch and crop.

Times, in one run:
  * bare: ResNetSE34L forward + backward on random features ``[N, F, n_mels]``;
  * recipe: ``SpeakerBrain.fit_batch`` on real batches from the recipe's DataLoader
    (speaker-grouped sampler, random crops read from disk, Fbank, normalisation,
    loss, backward, SGD step).
Prints utterances/s of both and their ratio (target: recipe >= 90 % of bare).

    python benchmarks/bench_recipe.py --hparams recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml \
        --speakers 20 --steps 10 --threads 2
"""

import argparse
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
sys.path.insert(0, str(RECIPE))
import train_speaker_embeddings as recipe  # noqa: E402


def rate(step, n_utts, steps, warmup):
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return n_utts * steps / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hparams", default=str(RECIPE / "hparams" / "mp_balance.yaml"))
    parser.add_argument("--speakers", type=int, default=20, help="speakers per batch")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--output_folder", default="results/bench_recipe")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    overrides = {"speakers_per_batch": args.speakers, "output_folder": args.output_folder,
                 "num_workers": args.num_workers}
    with open(args.hparams, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    manifests = recipe.prepare_data(hparams)
    train, _, _, sampler, n_speakers = recipe.dataio_prep(hparams, manifests)
    hparams["modules"]["loss_fn"] = hparams["loss_fn"](n_classes=n_speakers)
    brain = recipe.SpeakerBrain(modules=hparams["modules"], opt_class=hparams["opt_class"],
                                hparams=hparams, run_opts={"device": "cpu"})
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN)
    brain.modules.train()
    k = hparams["utts_per_speaker"]
    k = k if isinstance(k, int) else sum(k) / len(k)
    n = int(round(args.speakers * k))
    frames = hparams["crop_frames"]

    # Bare encoder: same number of utterances and feature frames (Fbank gives F + 2).
    feats = torch.randn(n, frames + 2, hparams["n_mels"])
    model = brain.modules.embedding_model

    def bare():
        model.zero_grad(set_to_none=True)
        model(feats).sum().backward()

    loader = brain.make_dataloader(train, sb.Stage.TRAIN, batch_sampler=sampler, num_workers=args.num_workers)
    batches = iter(loader)
    counted = []

    def recipe_step():
        batch = next(batches)
        counted.append(len(batch.id))
        brain.fit_batch(batch)

    bare_rate = rate(bare, n, args.steps, args.warmup)
    counted.clear()
    steps = min(args.steps, len(sampler) - args.warmup)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        recipe_step()
    counted.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        recipe_step()
    recipe_rate = sum(counted) / (time.perf_counter() - t0)
    print(f"{hparams['loss_name']}: batch {n} utterances ({args.speakers} speakers), {frames}-frame crops, "
          f"threads={args.threads}, loader workers={args.num_workers}")
    print(f"bare encoder forward+backward : {bare_rate:7.1f} utt/s")
    print(f"recipe fit_batch (everything) : {recipe_rate:7.1f} utt/s")
    print(f"ratio recipe / bare           : {recipe_rate / bare_rate:7.2f}  (target >= 0.90)")


if __name__ == "__main__":
    main()

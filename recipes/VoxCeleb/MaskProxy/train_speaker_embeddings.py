#!/usr/bin/env python3
"""Train a speaker-embedding model with a Masked Proxy loss (or a baseline).

    python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml [--overrides]

From the repository root; with no override it trains on the built-in corpus (made if
absent) at the yaml's ``builtin`` scale; for VoxCeleb see the recipe README.

The data flow, top to bottom in :func:`train`: lists -> manifests -> datasets and the
speaker-grouped sampler -> ``fit`` (each epoch: training, then the EER on the held-out dev
trials, which keeps the best checkpoint and drives ReduceLROnPlateau) -> the best
checkpoint's dev scores -> calibration and QMF -> export to ``<output_folder>/model``
(EncoderClassifier format + ``calibration.json``, ``qmf.json``) -> test scores. Bad input
stops the run before training with one ``error:`` line and exit code 2.
"""

import logging
import os
import sys
import time
from typing import NamedTuple

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from maskproxy_losses import export_model
from maskproxy_losses.data.augment import build_augmenter
from maskproxy_losses.data.crops import train_loader_options
from maskproxy_losses.data.trials import read_prepared_trials
from maskproxy_losses.inference.export import unwrap
from maskproxy_losses.scoring.cosine import score_trials
from maskproxy_losses.scoring.metrics import verification_metrics
from maskproxy_losses.training import back_end  # calibration + QMF on the dev trials
from maskproxy_losses.training.averaging import keep_kwargs, load_average
from maskproxy_losses.training.batch_trace import BatchTrace
from maskproxy_losses.training.brain import GroupedBatchBrain
from maskproxy_losses.training.health import warn_if_near_chance
from maskproxy_losses.training.hparams import load_recipe_hparams, recipe_copy
from maskproxy_losses.training.recipe_setup import (
    dataio_prep,
    prepare_manifests,
    resolve_run_options,
    setup_training,
)
from maskproxy_losses.utils.errors import run_cli
from maskproxy_losses.utils.files import check_writable_dir

logger = logging.getLogger(__name__)


class Scored(NamedTuple):
    """A scored trial list: ``scores``, ``labels`` and their ``metrics`` (EER in %)."""

    scores: np.ndarray
    labels: np.ndarray
    metrics: dict


class SpeakerBrain(GroupedBatchBrain):
    """Encoder + loss. Verification stages collect embeddings; :meth:`score` scores them.

    Beside ``sb.Brain``'s arguments: ``dev_trials`` (scored after every epoch),
    ``augment`` (a batch augmenter or None) and ``trace`` (a :class:`BatchTrace`).
    """

    def __init__(self, *args, dev_trials, augment=None, trace=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dev_trials, self.augment, self.trace = dev_trials, augment, trace or BatchTrace(None)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        if stage == sb.Stage.TRAIN and self.augment is not None:
            wavs, lens = self.augment(wavs, lens)  # same batch size and order
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        return self.modules.embedding_model(feats, lens)

    def compute_objectives(self, embeddings, batch, stage):
        if stage != sb.Stage.TRAIN:  # verification stages: keep embeddings, no loss
            self.embeddings.update(
                zip(map(os.path.abspath, batch.wav), embeddings.squeeze(1).float().cpu())
            )
            return torch.zeros((), device=self.device)
        labels, _ = batch.spk_id_encoded
        self.trace.batch(self.hparams.epoch_counter.current, self.step, batch.id)
        self._check_finite(embeddings, "the embeddings")
        loss = self.modules.loss_fn(embeddings, labels)
        self._check_finite(loss, "the loss")
        self.acc_sum = self.acc_sum + unwrap(self.modules.loss_fn).last_accuracy
        self.n_utts += len(labels)
        return loss

    def _check_finite(self, value, what):
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"{what} became NaN/Inf at epoch {self.hparams.epoch_counter.current}, "
                f"step {self.step}; lower the learning rate or check the data"
            )

    def on_stage_start(self, stage, epoch=None):
        self.embeddings, self.acc_sum, self.n_utts = {}, 0.0, 0
        self.stage_start = time.perf_counter()
        if stage == sb.Stage.TRAIN:
            self.epoch_start = self.stage_start

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            loss_fn = unwrap(self.modules.loss_fn)
            self.train_stats = {
                "loss": stage_loss,
                "acc": float(self.acc_sum) / max(self.step, 1),
                "w": loss_fn.w.item() if hasattr(loss_fn, "w") else float("nan"),
                "b": loss_fn.b.item() if hasattr(loss_fn, "b") else float("nan"),
                "utt_per_s": round(self.n_utts / (time.perf_counter() - self.stage_start), 1),
            }
            warn_if_near_chance(loss_fn, self.hparams, epoch, self.train_stats["acc"])
        elif stage == sb.Stage.VALID:  # the dev EER keeps the best checkpoint, drives the lr
            stats = _log_stats(
                verification_metrics(*score_trials(self.embeddings, self.dev_trials))
            )
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stats["EER"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.trace.valid(epoch, stats["EER"], old_lr, new_lr)
            epoch_s = round(time.perf_counter() - self.epoch_start, 1)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr, "epoch_s": epoch_s},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(  # the best (N best with averaging)
                meta={"EER": stats["EER"]}, **keep_kwargs(self.hparams)
            )

    def on_evaluate_start(self, max_key=None, min_key=None):
        super().on_evaluate_start(max_key=max_key, min_key=min_key)  # the best checkpoint
        load_average(self.checkpointer, self.hparams)  # average_checkpoints: N > 1

    def score(self, dataset, trials, loader_kwargs):
        """:class:`Scored` trials of ``dataset`` with the best dev-EER checkpoint."""
        self.evaluate(dataset, min_key="EER", test_loader_kwargs=loader_kwargs)
        scores, labels = score_trials(self.embeddings, trials)
        return Scored(scores, labels, verification_metrics(scores, labels))


def _log_stats(m):
    """The train log's rounded view of verification metrics ``m``."""
    return {
        "EER": round(m["EER"], 3),
        "minDCF_0.01": round(m["minDCF_0.01"], 4),
        "minDCF_0.05": round(m["minDCF_0.05"], 4),
        "threshold": round(m["EER_threshold"], 4),
    }


def calibrate_export_and_test(brain, hparams, dev, test, dev_trials, test_trials):
    """Best checkpoint -> dev scores -> calibration and QMF -> export -> test scores;
    returns ``(model dir, test Scored, back-end metrics on the test trials)``."""
    loader = hparams["verification_loader"]
    dev_scored = brain.score(dev, dev_trials, loader)
    quality = back_end.dataset_quality(dev, dev_trials, brain.embeddings)
    fitted = back_end.fit_back_end(*dev_scored[:2], quality)
    out = None
    if if_main_process():  # the model is saved before anything else can fail
        out = export_model(
            hparams["export_folder"],
            hparams["embedding_model"],
            frontend=hparams.get("frontend", "fbank"),
            n_mels=hparams["n_mels"],
            overwrite=True,
            extra_files=back_end.back_end_files(fitted),  # calibration.json, qmf.json
        )
    test_scored = brain.score(test, test_trials, loader)
    hparams["train_logger"].log_stats(
        {"Epoch loaded": hparams["epoch_counter"].current},
        test_stats=_log_stats(test_scored.metrics),
    )
    quality = back_end.dataset_quality(test, test_trials, brain.embeddings)
    return out, test_scored, back_end.back_end_metrics(fitted, *test_scored[:2], quality)


def train(argv):
    """Run the recipe as the command line ``argv`` says; returns the trained Brain."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, overrides = load_recipe_hparams(hparams_file, overrides)
    for key in ("output_folder", "manifest_folder"):  # fail in seconds, not after data prep
        check_writable_dir(hparams[key], key)
    run_opts = resolve_run_options(hparams, run_opts)  # gloo on CPU, `precision: auto`
    sb.utils.distributed.ddp_init_group(run_opts)
    recipe_file = recipe_copy(hparams_file, overrides, hparams["output_folder"])  # + encoder
    sb.create_experiment_directory(hparams["output_folder"], recipe_file, overrides)
    if run_opts.ckpt_interval_steps > 0:  # SpeechBrain allows one intra-epoch interval only
        hparams.pop("ckpt_interval_minutes", None)

    manifests = run_on_main(
        prepare_manifests, kwargs={"hparams": hparams}
    )  # paths sent to every rank
    dev_trials = read_prepared_trials(manifests["dev_trials"], manifests["dev_csv"])
    test_trials = read_prepared_trials(manifests["trials"], manifests["test_csv"])
    train_set, dev, test, sampler, n_speakers = dataio_prep(hparams, manifests)
    setup_training(hparams, train_set, sampler, n_speakers)  # loss, schedule, pretrained; logged

    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        dev_trials=dev_trials,
        augment=build_augmenter(hparams),
        trace=BatchTrace(hparams["batch_trace"]),
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_set=train_set,
        valid_set=dev,
        train_loader_kwargs=train_loader_options(sampler, hparams["num_workers"], hparams["seed"]),
        valid_loader_kwargs=hparams["verification_loader"],
    )
    brain.trace.save_state(brain.modules)
    out, scored, cal = calibrate_export_and_test(brain, hparams, dev, test, dev_trials, test_trials)
    if if_main_process():
        m = scored.metrics
        print(
            f"[{hparams['loss_name']}] test EER {m['EER']:.2f} %  minDCF(0.01) "
            f"{m['minDCF_0.01']:.4f}  minDCF(0.05) {m['minDCF_0.05']:.4f}  Cllr "
            f"{cal['Cllr']:.3f} (min {cal['minCllr']:.3f})  QMF: EER {cal['QMF']['EER']:.2f} % "
            f"Cllr {cal['QMF']['Cllr']:.3f}  (best dev-EER checkpoint, exported to {out})"
        )
    return brain


def main(argv=None):
    """Command-line entry point: 0, or 2 after one ``error:`` line for bad input."""

    def run(args):
        train(args)
        return 0

    return run_cli(run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

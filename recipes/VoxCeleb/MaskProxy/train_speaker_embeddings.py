#!/usr/bin/env python3
"""Train a speaker-embedding model with a Masked Proxy loss (or a baseline).

    python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml [--overrides]

From the repository root; with no override it trains on the built-in corpus (made if
absent) at the yaml's ``builtin`` scale; for VoxCeleb see the recipe README.

The data flow, top to bottom in :func:`train`: lists -> manifests -> datasets and the
speaker-grouped sampler -> ``fit`` (each epoch: training, then, every ``valid_every``
epochs, the EER on the held-out dev trials, which keeps the best checkpoint and drives
ReduceLROnPlateau) -> the best checkpoint's dev scores -> calibration and QMF -> export
to ``<output_folder>/model`` (EncoderClassifier format + ``calibration.json``,
``qmf.json``, a model card) -> test scores. Bad input stops the run before training with
one ``error:`` line and exit code 2.
"""

import logging
import sys
import time
from typing import NamedTuple

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from maskproxy_losses import export_model
from maskproxy_losses.data.augment import build_augmenter
from maskproxy_losses.data.length_batches import verification_loader_options
from maskproxy_losses.data.trials import read_prepared_trials
from maskproxy_losses.inference.export import unwrap
from maskproxy_losses.scoring.cosine import score_trials
from maskproxy_losses.scoring.metrics import rounded_metrics, verification_metrics
from maskproxy_losses.training import back_end  # calibration + QMF on the dev trials
from maskproxy_losses.training.averaging import keep_kwargs, load_average
from maskproxy_losses.training.batch_trace import BatchTrace
from maskproxy_losses.training.brain import GroupedBatchBrain
from maskproxy_losses.training.health import warn_if_near_chance
from maskproxy_losses.training.hparams import load_recipe_hparams, recipe_copy
from maskproxy_losses.training.options import split_arguments
from maskproxy_losses.training.recipe_setup import (
    dataio_prep,
    loader_options,
    prepare_manifests,
    resolve_run_options,
    setup_training,
)
from maskproxy_losses.training.run_card import record_test_results, training_card
from maskproxy_losses.training.run_folder import open_run_folder
from maskproxy_losses.training.step import SpeakerStep
from maskproxy_losses.utils.errors import run_cli

logger = logging.getLogger(__name__)


class Scored(NamedTuple):
    """A scored trial list: ``scores``, ``labels`` and their ``metrics`` (EER in %)."""

    scores: np.ndarray
    labels: np.ndarray
    metrics: dict


class SpeakerBrain(GroupedBatchBrain):
    """Encoder + loss. Verification stages collect embeddings; :meth:`score` scores them.

    Beside ``sb.Brain``'s arguments: ``dev_trials`` (scored after every ``valid_every``
    epochs), ``augment`` (a batch augmenter or None) and ``trace`` (a :class:`BatchTrace`).
    """

    guarded = ("embeddings", "loss")  # the NaN guard: the embeddings' largest size, the loss

    def __init__(self, *args, dev_trials, augment=None, trace=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dev_trials, self.augment, self.trace = dev_trials, augment, trace or BatchTrace(None)

    def make_train_step(self):  # what --compile True compiles into one graph
        m = self.modules
        return SpeakerStep(m.compute_features, m.mean_var_norm, m.embedding_model, m.loss_fn)

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device, non_blocking=True)  # pinned by the loader on CUDA
        wavs, lens = batch.sig
        if stage != sb.Stage.TRAIN:  # whole files, padded; lengths exact in frames
            feats = self.modules.mean_var_norm(self.modules.compute_features(wavs), lens)
            return self.modules.embedding_model(feats, lens)
        if self.augment is not None:
            wavs, lens = self.augment(wavs, lens)  # same batch size and order
        step = self.train_step if self.train_step is not None else self.make_train_step()
        full = getattr(batch, "full_length", False)  # decided on the host by the collate
        return step(wavs, None if full else lens, batch.spk_id_encoded.data, batch.layout)

    def compute_objectives(self, outputs, batch, stage):
        if stage != sb.Stage.TRAIN:  # verification stages: embeddings stay on the device
            self.keep_embeddings(batch.wav, outputs.squeeze(1))
            return torch.zeros(())
        self.trace.batch(self.hparams.epoch_counter.current, self.step, batch.id)
        self.n_utts += len(batch.id)
        return outputs[1]

    def step_values(self, batch, outputs, loss):  # loss, embeddings' size, acc, w, b
        return SpeakerStep.values(unwrap(self.modules.loss_fn), outputs[0], loss)

    def on_stage_start(self, stage, epoch=None):
        self.stage_start, self.n_utts = time.perf_counter(), 0
        if stage == sb.Stage.TRAIN:
            self.epoch_start = self.stage_start
        torch.backends.cudnn.benchmark = stage == sb.Stage.TRAIN  # fixed shapes only

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:  # the step log is read before anything else
            self.train_stats = self.finish_train_stage(mean=("acc",), last=("w", "b"))
            seconds = time.perf_counter() - self.stage_start
            self.train_stats["utt_per_s"] = round(self.n_utts / seconds, 1)
            return
        self.embeddings = self.take_embeddings()  # one device-to-host copy per pass
        if stage == sb.Stage.VALID:  # the dev EER keeps the best checkpoint, drives the lr
            dev_s = round(time.perf_counter() - self.stage_start, 1)
            stats = rounded_metrics(
                verification_metrics(*score_trials(self.embeddings, self.dev_trials))
            )
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stats["EER"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.trace.valid(epoch, stats["EER"], old_lr, new_lr)
            self._log_epoch(epoch, old_lr, stats, dev_s=dev_s)
            self.checkpointer.save_and_keep_only(  # the best (N best with averaging)
                meta={"EER": stats["EER"]}, **keep_kwargs(self.hparams)
            )

    def on_epoch_without_validation(self, epoch):  # valid_every: no dev EER this epoch
        self._log_epoch(epoch, self.optimizer.param_groups[0]["lr"])
        self.checkpointer.save_and_keep_only(meta={}, **keep_kwargs(self.hparams))

    def _log_epoch(self, epoch, lr, valid_stats=None, **meta):  # and the learning check
        acc, eer = self.train_stats["acc"], (valid_stats or {}).get("EER")
        warn_if_near_chance(unwrap(self.modules.loss_fn), self.hparams, epoch, acc, eer)
        epoch_s = round(time.perf_counter() - self.epoch_start, 1)
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "lr": lr, "epoch_s": epoch_s, **meta},
            train_stats=self.train_stats,
            valid_stats=valid_stats,
        )

    def on_evaluate_start(self, max_key=None, min_key=None):
        super().on_evaluate_start(max_key=max_key, min_key=min_key)  # the best checkpoint
        load_average(self.checkpointer, self.hparams)  # average_checkpoints: N > 1

    def score(self, dataset, trials, loader_kwargs):
        """:class:`Scored` trials of ``dataset`` with the best dev-EER checkpoint."""
        self.evaluate(dataset, min_key="EER", test_loader_kwargs=loader_kwargs)
        scores, labels = score_trials(self.embeddings, trials)
        return Scored(scores, labels, verification_metrics(scores, labels))


def calibrate_export_and_test(brain, hparams, dev, test, dev_trials, test_trials):
    """Best checkpoint -> dev scores -> calibration and QMF -> export (with its model card)
    -> test scores; returns ``(model dir, test Scored, back-end metrics on the test
    trials)``."""

    def loader(data):  # the trial files, in length-bucketed batches, read by workers
        return verification_loader_options(data, hparams["verification_loader"], brain.device)

    dev_scored = brain.score(dev, dev_trials, loader(dev))
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
            card=training_card(hparams, dev_scored, fitted.calibration),
        )
    test_scored = brain.score(test, test_trials, loader(test))
    loaded = {"Epoch loaded": hparams["epoch_counter"].current}
    hparams["train_logger"].log_stats(loaded, test_stats=rounded_metrics(test_scored.metrics))
    quality = back_end.dataset_quality(test, test_trials, brain.embeddings)
    test_cal = back_end.back_end_metrics(fitted, *test_scored[:2], quality)
    record_test_results(out, test_scored.metrics, test_cal)  # in the model card
    return out, test_scored, test_cal


def train(argv):
    """Run the recipe as the command line ``argv`` says; returns the trained Brain."""
    hparams_file, run_opts, overrides = split_arguments(argv)  # no option twice; --compile True
    hparams, overrides = load_recipe_hparams(hparams_file, overrides)  # keys, value ranges
    run_opts = resolve_run_options(hparams, run_opts)  # gloo on CPU, `precision: auto`
    run = open_run_folder(hparams, hparams_file, overrides, run_opts)  # locked, same settings
    sb.utils.distributed.ddp_init_group(run_opts)
    if run_opts.ckpt_interval_steps > 0:  # SpeechBrain allows one intra-epoch interval only
        hparams.pop("ckpt_interval_minutes", None)
    manifests = run_on_main(prepare_manifests, kwargs={"hparams": hparams})  # to every rank
    run.check_data(manifests)  # same data and labels on resume; nothing rewritten before
    recipe_file = recipe_copy(hparams_file, overrides, hparams["output_folder"])  # + encoder
    sb.create_experiment_directory(hparams["output_folder"], recipe_file, overrides)
    run.started()  # partial checkpoints removed, log-file errors as one note
    dev_trials = read_prepared_trials(manifests["dev_trials"], manifests["dev_csv"])
    test_trials = read_prepared_trials(manifests["trials"], manifests["test_csv"])
    train_set, dev, test, sampler, n_speakers = dataio_prep(
        hparams, manifests, dev_trials, test_trials, run_opts.device
    )  # dev / test: the files of their trials only
    setup_training(hparams, train_set, sampler, n_speakers)  # loss, schedule, pretrained; logged

    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        dev_trials=dev_trials,
        augment=build_augmenter(hparams, run_opts.device),
        trace=BatchTrace(hparams["batch_trace"]),
    )
    train_kwargs, valid_kwargs = loader_options(hparams, brain.device, sampler, dev)
    brain.fit(
        brain.hparams.epoch_counter,
        train_set=train_set,
        valid_set=dev,
        train_loader_kwargs=train_kwargs,
        valid_loader_kwargs=valid_kwargs,
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
    run.release()
    return brain


def main(argv=None):
    """Command-line entry point: 0, or 2 after one ``error:`` line for bad input."""
    return run_cli(lambda args: train(args) and 0, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())

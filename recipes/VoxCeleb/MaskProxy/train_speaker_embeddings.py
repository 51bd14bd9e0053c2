#!/usr/bin/env python3
"""Train a speaker-embedding model with a Masked Proxy loss (or a baseline).

    python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml [--overrides]

Run from the repository root. With no override it trains on the built-in corpus (made
if absent) at the yaml's ``builtin`` scale; for VoxCeleb see the recipe README.

Each epoch: training on speaker-grouped batches, then the EER on the held-out dev trials
(the best checkpoint is kept and drives ReduceLROnPlateau). At the end the best checkpoint
is calibrated on the dev trials, exported to ``<output_folder>/model`` (EncoderClassifier
format + ``calibration.json``), and only then scored on the test trials. Bad input stops
the run before training with one ``error:`` line and exit code 2.
"""

import json
import logging
import os
import time

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.demo_corpus import prepare_builtin
from data_prep.shards import write_shards
from data_prep.voxceleb import prepare_voxceleb
from maskproxy_losses import SpeakerBatchSampler, export_model
from maskproxy_losses.augment import build_augmenter
from maskproxy_losses.averaging import keep_kwargs, load_average
from maskproxy_losses.batch_log import BatchLog
from maskproxy_losses.calibration import CALIBRATION_FILE, calibration_metrics, fit_calibration
from maskproxy_losses.data.shards import EpochStart, ShardedSpeakerBatches
from maskproxy_losses.errors import InputError, run_cli
from maskproxy_losses.export import unwrap
from maskproxy_losses.files import check_writable_dir
from maskproxy_losses.hparams import load_recipe_hparams
from maskproxy_losses.recipe_setup import dataio_prep, resolve_run_options, setup_training
from maskproxy_losses.scoring import score_trials, verification_metrics
from maskproxy_losses.training_data import train_loader_options
from maskproxy_losses.trials import read_prepared_trials

logger = logging.getLogger(__name__)


class SpeakerBrain(sb.Brain):
    """Encoder + loss; the verification stages collect embeddings and score trials."""

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        augment = getattr(self.hparams, "wav_augment", None)
        if stage == sb.Stage.TRAIN and augment is not None:
            wavs, lens = augment(wavs, lens)  # same batch size and order
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
        self.hparams.batch_log.batch(self.hparams.epoch_counter.current, self.step, batch.id)
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
            return
        trials = self.hparams.dev_trials if stage == sb.Stage.VALID else self.eval_trials
        self.scores, self.labels = score_trials(self.embeddings, trials)
        metrics = verification_metrics(self.scores, self.labels)
        stats = {
            "EER": round(metrics["EER"], 3),
            "minDCF_0.01": round(metrics["minDCF_0.01"], 4),
            "minDCF_0.05": round(metrics["minDCF_0.05"], 4),
            "threshold": round(metrics["EER_threshold"], 4),
        }
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stats["EER"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.batch_log.valid(epoch, stats["EER"], old_lr, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "epoch": epoch,
                    "lr": old_lr,
                    "epoch_s": round(time.perf_counter() - self.epoch_start, 1),
                },
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(  # the best (N best with averaging)
                meta={"EER": stats["EER"]}, **keep_kwargs(self.hparams)
            )
        elif self.eval_trials is self.hparams.test_trials:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )

    def on_evaluate_start(self, max_key=None, min_key=None):
        super().on_evaluate_start(max_key=max_key, min_key=min_key)  # the best checkpoint
        load_average(self.checkpointer, self.hparams)  # average_checkpoints: N > 1

    # Private Brain hooks, written against SpeechBrain 1.1.2 (check them on upgrades).
    def _train_loader_specifics(self, dataset, loader_kwargs):
        # SpeakerBatchSampler splits its batches across DDP ranks itself; SpeechBrain's
        # generic DistributedSamplerWrapper would pad and reshuffle them.
        if isinstance(dataset, ShardedSpeakerBatches):  # issue 20: sharded training data
            # It splits its shards by rank itself; set_epoch also tells it the step to resume at.
            self.train_sampler = EpochStart(dataset, lambda: self.step)
            return loader_kwargs
        sampler = loader_kwargs.get("batch_sampler")
        if isinstance(getattr(sampler, "sampler", None), SpeakerBatchSampler):
            self.train_sampler = sampler
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _wrap_distributed(self):
        # SpeechBrain converts BatchNorm to SyncBatchNorm, which needs GPUs: plain DDP on CPU.
        if self.distributed_launch and str(self.device).startswith("cpu"):
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                        module, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()


def prepare_data(hparams):
    """Manifests of the built-in corpus (generated when absent) or of the given lists;
    with ``write_shards`` also the training set's shards (``train_shards``)."""
    manifests = prepare_manifests(hparams)
    if hparams.get("write_shards"):
        if hparams.get("train_shards"):
            raise InputError("give train_shards (shards written before) or write_shards, not both")
        manifests["train_shards"] = write_shards(
            manifests["train_csv"],
            os.path.join(hparams["manifest_folder"], "shards"),
            shard_size=hparams["shard_size"],
            seed=hparams["prep_seed"],
        )
    return manifests


def prepare_manifests(hparams):
    """Manifests of the built-in corpus (generated when absent) or of the given lists."""
    if hparams["builtin_corpus"]:
        return prepare_builtin(
            hparams["data_folder"],
            hparams["manifest_folder"],
            corpus_seed=hparams["corpus_seed"],
            prep_seed=hparams["prep_seed"],
        )
    return prepare_voxceleb(
        hparams["manifest_folder"],
        train_root=hparams["train_root"],
        test_root=hparams["test_root"],
        train_list=hparams["train_list"],
        trials=hparams["trials_list"],
        dev_share=hparams["dev_share"],
        n_dev_trials=hparams["n_dev_trials"],
        seed=hparams["prep_seed"],
        skip_bad=hparams["skip_bad"],
    )


def finish(brain, hparams, dev, test):
    """Best checkpoint -> calibration on the dev trials -> export -> test scores."""
    loader = hparams["verification_loader"]
    brain.eval_trials = hparams["dev_trials"]
    brain.evaluate(dev, min_key="EER", test_loader_kwargs=loader)
    calibration = fit_calibration(brain.scores, brain.labels, source="dev trials (best checkpoint)")
    calibration.meta = {"score_mode": "cosine", "norm": "none"}  # what it may be applied to
    out = None
    if if_main_process():  # the model is saved before anything else can fail
        out = export_model(
            hparams["export_folder"],
            hparams["embedding_model"],
            frontend="fbank",
            n_mels=hparams["n_mels"],
            overwrite=True,
            extra_files={CALIBRATION_FILE: json.dumps(calibration.to_dict(), indent=2)},
        )
    brain.eval_trials = hparams["test_trials"]
    brain.evaluate(test, min_key="EER", test_loader_kwargs=loader)
    brain.test_calibration = calibration_metrics(brain.scores, brain.labels, calibration)
    return out


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    hparams, overrides = load_recipe_hparams(hparams_file, overrides)
    for key in ("output_folder", "manifest_folder"):  # fail in seconds, not after data prep
        check_writable_dir(hparams[key], key)
    run_opts = resolve_run_options(hparams, run_opts)  # gloo on CPU, `precision: auto`
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if run_opts.ckpt_interval_steps > 0:  # SpeechBrain allows one intra-epoch interval only
        hparams.pop("ckpt_interval_minutes", None)

    hparams["wav_augment"] = build_augmenter(hparams)
    hparams["batch_log"] = BatchLog(hparams["batch_log"])  # None: off
    manifests = run_on_main(prepare_data, kwargs={"hparams": hparams})  # paths sent to every rank
    hparams["dev_trials"] = read_prepared_trials(manifests["dev_trials"], manifests["dev_csv"])
    hparams["test_trials"] = read_prepared_trials(manifests["trials"], manifests["test_csv"])
    train, dev, test, sampler, n_speakers = dataio_prep(hparams, manifests)

    setup_training(hparams, train, sampler, n_speakers)  # loss, schedule, pretrained; logged
    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    options = train_loader_options(sampler, hparams["num_workers"], hparams["seed"])
    brain.fit(
        brain.hparams.epoch_counter,
        train_set=train,
        valid_set=dev,
        train_loader_kwargs=options,
        valid_loader_kwargs=hparams["verification_loader"],
    )
    hparams["batch_log"].save_state(brain.modules)
    out = finish(brain, hparams, dev, test)
    if if_main_process():
        stats, cal = brain.test_stats, brain.test_calibration
        print(
            f"[{hparams['loss_name']}] test EER {stats['EER']:.2f} %  minDCF(0.01) "
            f"{stats['minDCF_0.01']:.4f}  minDCF(0.05) {stats['minDCF_0.05']:.4f}  Cllr "
            f"{cal['Cllr']:.3f} (min {cal['minCllr']:.3f})  "
            f"(best dev-EER checkpoint, exported to {out})"
        )
    return brain


if __name__ == "__main__":
    run_cli(main)

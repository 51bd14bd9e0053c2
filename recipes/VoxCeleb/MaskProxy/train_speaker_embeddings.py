#!/usr/bin/env python3
"""Train a speaker-embedding model with a Masked Proxy loss (or a baseline).

Run from the repository root (the default data and results paths are relative):

    python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml [--overrides]

With no override the built-in corpus is generated (if absent) under
``data/demo_corpus``, prepared, and used for a run of a few minutes on CPU. For
VoxCeleb, point the data overrides at your lists (see the recipe README):

    python recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py \
        recipes/VoxCeleb/MaskProxy/hparams/mp_balance.yaml --builtin_corpus False \
        --train_root /data/vox2/dev/wav --train_list /data/vox2/train_list.txt \
        --test_root /data/vox1/wav --trials_list /data/vox1/veri_test.txt \
        --manifest_folder results/manifests_vox

Augmentation is off by default (as in the paper); ``--noise_csv`` / ``--rir_csv`` (SpeechBrain
augmentation CSVs) turn on noise / reverberation for a share ``augment_prob`` of the batches.

Each epoch: training on speaker-grouped batches, then the EER on the held-out dev
trials (the checkpoint with the best dev EER is kept and drives ReduceLROnPlateau).
At the end the best model is exported to ``<output_folder>/model`` in the
EncoderClassifier format and the test EER / minDCF are printed.
"""

import csv
import dataclasses
import logging
import math
import os
import sys
import time

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.augment.augmenter import Augmenter
from speechbrain.augment.time_domain import AddNoise, AddReverb
from speechbrain.dataio.dataio import read_audio
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.demo_corpus import prepare_builtin
from data_prep.voxceleb import PrepError, prepare_voxceleb
from maskproxy_losses import SpeakerBatchSampler, export_model
from maskproxy_losses.scoring import compute_eer, compute_min_dcf, cosine_scores
from maskproxy_losses.trials import index_trials, read_trials

logger = logging.getLogger(__name__)


class SpeakerBrain(sb.Brain):
    """Encoder + loss; dev / test stages collect embeddings and score trials."""

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
            self.embeddings.update(zip(batch.wav, embeddings.squeeze(1).float().cpu()))
            return torch.zeros((), device=self.device)
        labels, _ = batch.spk_id_encoded
        self._check_finite(embeddings, "the embeddings")
        loss = self.modules.loss_fn(embeddings, labels)
        self._check_finite(loss, "the loss")
        self.acc_sum = self.acc_sum + _unwrap(self.modules.loss_fn).last_accuracy
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
            loss_fn = _unwrap(self.modules.loss_fn)
            self.train_stats = {
                "loss": stage_loss,
                "acc": float(self.acc_sum) / max(self.step, 1),
                "w": loss_fn.w.item() if hasattr(loss_fn, "w") else float("nan"),
                "utt_per_s": round(self.n_utts / (time.perf_counter() - self.stage_start), 1),
            }
            return
        trials = self.hparams.dev_trials if stage == sb.Stage.VALID else self.hparams.test_trials
        stats = score_trials(self.embeddings, trials)
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_scheduler([self.optimizer], epoch, stats["EER"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr,
                            "epoch_s": round(time.perf_counter() - self.epoch_start, 1)},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta={"EER": stats["EER"]}, min_keys=["EER"])
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                {"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )

    def _train_loader_specifics(self, dataset, loader_kwargs):
        # SpeakerBatchSampler splits its batches across DDP ranks itself; SpeechBrain's
        # generic DistributedSamplerWrapper would pad and reshuffle them.
        sampler = loader_kwargs.get("batch_sampler")
        if isinstance(sampler, SpeakerBatchSampler):
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


def _unwrap(module):
    return getattr(module, "module", module)


def score_trials(embeddings, trials_path):
    """Cosine-score a trial list against ``{wav path: embedding}``: EER (%), minDCF, threshold."""
    trials, problems = read_trials(trials_path)
    if problems:
        raise PrepError(problems)
    labels = [t[0] for t in trials]
    keys, enrol, test = index_trials([t[1:3] for t in trials])
    emb = torch.stack([embeddings[k] for k in keys])
    scores = cosine_scores(emb, enrol, test)
    eer, threshold = compute_eer(scores, labels)
    return {
        "EER": round(100 * eer, 3),
        "minDCF_0.01": round(compute_min_dcf(scores, labels, 0.01)[0], 4),
        "minDCF_0.05": round(compute_min_dcf(scores, labels, 0.05)[0], 4),
        "threshold": round(threshold, 4),
    }


def prepare_data(hparams):
    """Manifests of the built-in corpus (generated when absent) or of the given lists."""
    if hparams["builtin_corpus"]:
        return prepare_builtin(hparams["data_folder"], hparams["manifest_folder"],
                               corpus_seed=hparams["corpus_seed"], prep_seed=hparams["prep_seed"])
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


def dataio_prep(hparams, manifests):
    """Datasets (random crops for training, full files for dev / test) and the sampler."""
    crop = hparams["crop_frames"] * 160 + 240  # samples of a crop of F frames (authors)

    @sb.utils.data_pipeline.takes("wav", "duration")
    @sb.utils.data_pipeline.provides("sig")
    def random_crop(wav, duration):
        n = int(round(float(duration) * hparams["sample_rate"]))
        if n > crop:
            start = int(torch.randint(0, n - crop + 1, ()).item())
            return read_audio({"file": wav, "start": start, "stop": start + crop})
        sig = read_audio(wav)
        return sig.repeat(math.ceil(crop / max(len(sig), 1)))[:crop]  # short: wrap around

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def full_file(wav):
        return read_audio(wav)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()
    train = sb.dataio.dataset.DynamicItemDataset.from_csv(manifests["train_csv"])
    train.add_dynamic_item(random_crop)
    label_encoder.load_or_create(
        os.path.join(hparams["save_folder"], "label_encoder.txt"), from_didatasets=[train], output_key="spk_id"
    )
    train.add_dynamic_item(label_encoder.encode_label_torch, takes="spk_id", provides="spk_id_encoded")
    train.set_output_keys(["id", "sig", "spk_id_encoded"])

    def verification_set(csv):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv).filtered_sorted(sort_key="duration")
        data.add_dynamic_item(full_file)
        data.set_output_keys(["id", "sig", "wav"])
        return data

    speakers = [train.data[i]["spk_id"] for i in train.data_ids]
    sampler = SpeakerBatchSampler(
        speakers,
        speakers_per_batch=hparams["speakers_per_batch"],
        utts_per_speaker=hparams["utts_per_speaker"],
        max_per_speaker=hparams["max_per_speaker"],
        seed=hparams["seed"],
    )
    dev, test = verification_set(manifests["dev_csv"]), verification_set(manifests["test_csv"])
    return train, dev, test, sampler, len(label_encoder)


AUGMENT_CSV_COLUMNS = ("ID", "duration", "wav", "wav_format", "wav_opts")


def check_augment_csv(path, key):
    """Raise ``PrepError`` naming ``file:line`` unless ``path`` is a SpeechBrain
    augmentation CSV whose rows point at existing audio files."""
    if not os.path.isfile(path):
        raise PrepError([f"{path}: {key} not found"])
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = [c for c in AUGMENT_CSV_COLUMNS if c not in header]
        if missing:  # SpeechBrain's augmentation CSV reader needs all five
            raise PrepError([f"{path}:1: {key} lacks the column(s) {', '.join(missing)} "
                             f"(expected {','.join(AUGMENT_CSV_COLUMNS)}, as written by "
                             "speechbrain.augment.preparation.prepare_csv)"])
        problems, n_rows, wav = [], 0, header.index("wav")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            n_rows += 1
            if len(row) != len(header):
                problems.append(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            elif not os.path.isfile(row[wav]):
                problems.append(f"{path}:{lineno}: audio file not found: {row[wav]}")
    if not n_rows:
        problems.append(f"{path}: {key} lists no audio files")
    if problems:
        raise PrepError(problems)


def build_augmenter(hparams):
    """SpeechBrain ``Augmenter`` adding noise (``noise_csv``) and / or reverberation
    (``rir_csv``) in place, or None when neither CSV is given."""
    rate, augmentations = hparams["sample_rate"], []
    if hparams.get("noise_csv"):
        check_augment_csv(hparams["noise_csv"], "noise_csv")
        augmentations.append(AddNoise(
            csv_file=hparams["noise_csv"], snr_low=hparams["snr_low"], snr_high=hparams["snr_high"],
            noise_sample_rate=rate, clean_sample_rate=rate,
        ))
    if hparams.get("rir_csv"):
        check_augment_csv(hparams["rir_csv"], "rir_csv")
        augmentations.append(AddReverb(csv_file=hparams["rir_csv"], reverb_sample_rate=rate, clean_sample_rate=rate))
    if not augmentations:
        return None
    return Augmenter(
        augmentations=augmentations, min_augmentations=1, max_augmentations=len(augmentations),
        shuffle_augmentations=True, augment_prob=hparams["augment_prob"],
    )


def train_loader_kwargs(hparams, sampler):
    """Training DataLoader options: the speaker-grouped batches, loader workers kept
    alive across epochs (starting new ones every epoch costs seconds on a small CPU)."""
    workers = hparams["num_workers"]
    return {"batch_sampler": sampler, "num_workers": workers, "persistent_workers": workers > 0}


def apply_builtin_scale(hparams, overrides):
    """The built-in corpus is far smaller than VoxCeleb2: use its own batch and epochs
    (values given on the command line win)."""
    if not hparams["builtin_corpus"]:
        return
    given = yaml.safe_load(overrides) or {} if overrides else {}
    for key, value in hparams["builtin"].items():
        if key not in given and hparams[key] != value:
            logger.info("built-in corpus: %s = %s (VoxCeleb setting: %s)", key, value, hparams[key])
            hparams[key] = value
    hparams["epoch_counter"].limit = hparams["number_of_epochs"]


def main(argv):
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if run_opts.distributed_backend == "nccl" and not torch.cuda.is_available():
        run_opts = dataclasses.replace(  # DDP on CPU
            run_opts, distributed_backend="gloo",
            overridden_args=run_opts.overridden_args | {"distributed_backend"},
        )
    sb.utils.distributed.ddp_init_group(run_opts)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    apply_builtin_scale(hparams, overrides)
    if run_opts.ckpt_interval_steps > 0:  # SpeechBrain allows one intra-epoch interval only
        hparams.pop("ckpt_interval_minutes", None)

    hparams["wav_augment"] = build_augmenter(hparams)
    manifests = run_on_main(prepare_data, kwargs={"hparams": hparams})  # paths sent to every rank
    hparams["dev_trials"], hparams["test_trials"] = manifests["dev_trials"], manifests["trials"]
    train, dev, test, sampler, n_speakers = dataio_prep(hparams, manifests)

    hparams["modules"]["loss_fn"] = hparams["loss_fn"](n_classes=n_speakers)
    hparams["checkpointer"].add_recoverable("loss_fn", hparams["modules"]["loss_fn"])
    brain = SpeakerBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    logger.info(
        "%s: %d training speakers, %d utterances, %d batches/epoch (per process) of %d speakers x %s utterances, "
        "%d-frame crops; augmentation: %s; encoder %.2f M parameters",
        hparams["loss_name"], n_speakers, len(train), len(sampler), hparams["speakers_per_batch"],
        hparams["utts_per_speaker"], hparams["crop_frames"],
        " + ".join(k[:-4] for k in ("noise_csv", "rir_csv") if hparams.get(k)) or "none",
        sum(p.numel() for p in hparams["embedding_model"].parameters()) / 1e6,
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_set=train,
        valid_set=dev,
        train_loader_kwargs=train_loader_kwargs(hparams, sampler),
        valid_loader_kwargs=hparams["verification_loader"],
    )
    brain.evaluate(test, min_key="EER", test_loader_kwargs=hparams["verification_loader"])
    if if_main_process():
        out = export_model(
            hparams["export_folder"], hparams["embedding_model"], frontend="fbank",
            n_mels=hparams["n_mels"], overwrite=True,
        )
        stats = brain.test_stats
        print(
            f"[{hparams['loss_name']}] test EER {stats['EER']:.2f} %  minDCF(0.01) {stats['minDCF_0.01']:.4f}  "
            f"minDCF(0.05) {stats['minDCF_0.05']:.4f}  (best dev-EER checkpoint, exported to {out})"
        )
    return brain


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FloatingPointError, PrepError) as err:  # NaN loss or bad input: the message only
        sys.exit(f"error: {err}")

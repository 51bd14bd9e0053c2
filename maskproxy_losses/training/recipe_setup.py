"""The training recipe's data and run set-up, kept out of its script.

- :func:`prepare_manifests`: the manifests of the built-in corpus or of VoxCeleb lists.
- :func:`dataio_prep`: datasets (seeded random crops for training, whole files for dev /
  test, only those their trials use), the label encoder and the speaker-grouped sampler;
  with ``speed_perturb: True`` the training items are read at one of 3 speeds per
  speaker group (:mod:`maskproxy_losses.data.speed_perturb`). With ``train_shards`` (or
  shards written by data prep) the training set is :func:`sharded_train`'s, read from
  WebDataset shards (:mod:`maskproxy_losses.data.shards`) and its own sampler.
- :func:`loader_options`: the training and dev DataLoader options
  (:func:`maskproxy_losses.data.crops.train_loader_options`, the length-bucketed
  :func:`maskproxy_losses.data.length_batches.verification_loader_options`), workers
  sized for the machine, batches pinned on CUDA.
- :func:`resolve_run_options`: DDP on CPU, the device, and ``precision: auto``; on a GPU
  also TF32 for float32 and, for bfloat16, the encoder in ``channels_last``.
- :func:`setup_training`: the loss for the number of classes, registered with the
  checkpointer; the epoch length and the number of DDP processes for a per-step lr
  schedule; the ``pretrained`` weights
  (:mod:`maskproxy_losses.training.finetune`).
"""

import dataclasses
import logging
import os

import speechbrain as sb
import torch

from maskproxy_losses.data.crops import (
    SeededCrops,
    auto_num_workers,
    full_file_item,
    train_loader_options,
)
from maskproxy_losses.data.length_batches import trial_files, verification_loader_options
from maskproxy_losses.data.sampler import SpeakerBatchSampler
from maskproxy_losses.data.speed_perturb import SPEEDS, SpeedPerturbedCrops
from maskproxy_losses.training.finetune import load_pretrained
from maskproxy_losses.training.options import check_device
from maskproxy_losses.training.run_lock import check_rewrite, hold_manifests, preparing_manifests
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.precision import resolve_run_precision

__all__ = [
    "prepare_manifests",
    "dataio_prep",
    "sharded_train",
    "loader_options",
    "resolve_run_options",
    "setup_training",
]

logger = logging.getLogger(__name__)


def prepare_manifests(hparams):
    """The manifest paths of the built-in corpus (generated when absent) or of the given
    VoxCeleb-style lists (``data_prep``); with ``write_shards`` also the training set's
    WebDataset shards (``train_shards``, :mod:`data_prep.shards`). Run on the main
    process only. Prepared under the manifest folder's lock, then held (shared) until the
    run ends: no other run rewrites them meanwhile
    (:func:`~maskproxy_losses.training.run_lock.hold_manifests`)."""
    if hparams.get("write_shards") and hparams.get("train_shards"):
        raise InputError("give train_shards (shards written before) or write_shards, not both")
    with preparing_manifests(hparams["manifest_folder"]):
        manifests = _prepare_manifests(hparams)
        hold_manifests(hparams["manifest_folder"], hparams["output_folder"])
    return manifests


def _prepare_manifests(hparams):
    from data_prep.demo_corpus import prepare_builtin
    from data_prep.shards import write_shards
    from data_prep.voxceleb import prepare_voxceleb

    if hparams["builtin_corpus"]:
        seeds = {"corpus_seed": hparams["corpus_seed"], "prep_seed": hparams["prep_seed"]}
        manifests = prepare_builtin(hparams["data_folder"], hparams["manifest_folder"], **seeds)
    else:
        keys = ("train_root", "test_root", "train_list", "dev_share", "n_dev_trials", "skip_bad")
        manifests = prepare_voxceleb(
            hparams["manifest_folder"],
            trials=hparams["trials_list"],
            seed=hparams["prep_seed"],
            resample=bool(hparams.get("resample", False)),
            **{k: hparams[k] for k in keys},
        )
    if hparams.get("write_shards"):
        manifests["train_shards"] = write_shards(
            manifests["train_csv"],
            os.path.join(hparams["manifest_folder"], "shards"),
            shard_size=hparams["shard_size"],
            seed=hparams["prep_seed"],
            before_rewrite=lambda: check_rewrite(hparams["manifest_folder"]),
        )
    return manifests


def dataio_prep(hparams, manifests, dev_trials=None, test_trials=None, device="cpu"):
    """``(train, dev, test, sampler, n_classes)``: the datasets (random crops for training,
    full files for dev / test: only those ``dev_trials`` / ``test_trials`` name, when
    given), the speaker-grouped sampler and the number of labels. ``device`` sizes the
    loader workers a sharded training set is planned for (``num_workers: auto``)."""
    label_encoder = sb.dataio.encoder.CategoricalEncoder()
    train = sb.dataio.dataset.DynamicItemDataset.from_csv(manifests["train_csv"])
    speed = bool(hparams.get("speed_perturb", False))
    label_encoder.load_or_create(
        os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[train],
        output_key="spk_id",
    )
    train.add_dynamic_item(
        label_encoder.encode_label_torch, takes="spk_id", provides="spk_id_encoded"
    )
    train.set_output_keys(["id", "wav", "spk_id_encoded"])  # wav -> seeded crop below

    def verification_set(csv, trials):
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv)
        if trials is None:
            data = data.filtered_sorted(sort_key="duration")
        else:
            data = trial_files(data, trials)
        data.add_dynamic_item(full_file_item())
        data.set_output_keys(["id", "sig", "wav"])
        return data

    shards = hparams.get("train_shards") or manifests.get("train_shards")
    if shards:  # sharded training data (issue 20): the dataset batches itself
        workers = auto_num_workers(hparams["num_workers"], device)
        train = sharded_train(hparams, manifests, shards, label_encoder.lab2ind, workers)
        dev = verification_set(manifests["dev_csv"], dev_trials)
        test = verification_set(manifests["test_csv"], test_trials)
        return train, dev, test, train, len(label_encoder)

    speakers = [train.data[i]["spk_id"] for i in train.data_ids]
    try:
        sampler = SpeakerBatchSampler(
            speakers,
            speakers_per_batch=hparams["speakers_per_batch"],
            utts_per_speaker=hparams["utts_per_speaker"],
            max_per_speaker=hparams["max_per_speaker"],
            seed=hparams["seed"],
            n_speeds=len(SPEEDS) if speed else 1,
        )
    except ValueError as err:  # too few usable speakers for the batch, bad group sizes
        raise InputError(
            f"{manifests['train_csv']}: {err}; change it with --speakers_per_batch "
            "N / --utts_per_speaker / --max_per_speaker"
        ) from None
    n_classes = len(label_encoder)
    if not speed:
        train = SeededCrops(train, hparams["crop_frames"])
    else:
        train = SpeedPerturbedCrops(
            train,
            hparams["crop_frames"],
            n_classes,
            SPEEDS,
            as_new_speaker=hparams.get("speed_as_new_speaker", True),
        )
        n_classes = train.n_classes
        logger.info(
            "speed perturbation %s per speaker group: %d classes",
            "/".join(map(str, SPEEDS)),
            n_classes,
        )
    dev = verification_set(manifests["dev_csv"], dev_trials)
    test = verification_set(manifests["test_csv"], test_trials)
    return train, dev, test, sampler, n_classes


# ---- Sharded training data (issue 20)
def sharded_train(hparams, manifests, index_path, labels, num_workers):
    """The training batches read from the shards of ``index_path``
    (:class:`~maskproxy_losses.data.shards.ShardedSpeakerBatches`, ``labels``: speaker ->
    label) by ``num_workers`` loader workers; the shards must have been written from this
    run's ``train.csv``."""
    from data_prep.shards import manifest_sha256, read_index
    from maskproxy_losses.data.shards import ShardedSpeakerBatches

    if hparams.get("speed_perturb", False):
        raise InputError(f"{index_path}: speed_perturb is not supported with train_shards")
    index = read_index(index_path)
    if index["manifest"]["sha256"] != manifest_sha256(manifests["train_csv"]):
        raise InputError(
            f"{index_path}: written from {index['manifest']['path']}, whose content differs "
            f"from this run's {manifests['train_csv']}; rewrite the shards (python -m "
            "data_prep.shards, or --write_shards True)"
        )
    try:
        return ShardedSpeakerBatches(
            index_path,
            speakers_per_batch=hparams["speakers_per_batch"],
            utts_per_speaker=hparams["utts_per_speaker"],
            max_per_speaker=hparams["max_per_speaker"],
            crop_frames=hparams["crop_frames"],
            seed=hparams["seed"],
            num_workers=num_workers,
            labels=labels,
        )
    except InputError:
        raise
    except ValueError as err:  # bad group sizes
        raise InputError(
            f"{index_path}: {err}; change --utts_per_speaker / --max_per_speaker"
        ) from None


def loader_options(hparams, device, sampler, dev):
    """``(train, dev)`` DataLoader options: the seeded crops of ``sampler`` with their
    speaker grouping, ``num_workers`` workers (``auto``: see
    :func:`~maskproxy_losses.data.crops.auto_num_workers`), pinned on CUDA; the dev
    files in length-bucketed batches (``verification_loader``)."""
    cuda = str(device).startswith("cuda")
    workers = auto_num_workers(hparams["num_workers"], device)
    train = train_loader_options(
        sampler, workers, hparams["seed"], pin_memory=cuda, label_key="spk_id_encoded"
    )
    logger.info(
        "loader workers: %d for training (num_workers: %s)", workers, hparams["num_workers"]
    )
    return train, verification_loader_options(dev, hparams["verification_loader"], device)


def resolve_run_options(hparams, run_opts):
    """SpeechBrain run options with DDP on CPU (gloo: nccl needs GPUs), the device and the
    precision made concrete (``precision: auto``, see
    :mod:`maskproxy_losses.utils.precision`; on a GPU it is measured there,
    :mod:`maskproxy_losses.training.precision_probe`), logged; a device that is not here,
    or a precision it cannot train in, is refused
    (:func:`maskproxy_losses.training.options.check_device`). On a GPU float32 runs as
    TF32 and cuDNN picks its fastest algorithms; with bfloat16 the encoder is made
    ``channels_last``."""
    from speechbrain.utils.distributed import infer_device

    from maskproxy_losses.training.precision_probe import gpu_precision_probe

    given = run_opts.overridden_args
    if run_opts.distributed_backend == "nccl" and not torch.cuda.is_available():
        run_opts = dataclasses.replace(
            run_opts, distributed_backend="gloo", overridden_args=given | {"distributed_backend"}
        )
    device = run_opts.device if "device" in given and run_opts.device else None
    device = device or hparams.get("device") or run_opts.device or infer_device()
    check_device(device, None)
    cuda = str(device).startswith("cuda")
    run_opts = dataclasses.replace(
        run_opts, device=device, overridden_args=run_opts.overridden_args | {"device"}
    )
    measure = gpu_precision_probe(hparams, device) if cuda else None
    try:
        run_opts, why = resolve_run_precision(hparams, run_opts, device, measure=measure)
    except ValueError as err:  # an unknown precision in the yaml
        raise InputError(f"--precision: {err}") from None
    check_device(run_opts.device, run_opts.precision)
    logger.info("training precision: %s (%s)", run_opts.precision, why)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        if run_opts.precision == "bf16":
            hparams["embedding_model"].to(memory_format=torch.channels_last)
    return run_opts


def _world_size():
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def setup_training(hparams, train, sampler, n_classes):
    """Build the loss for ``n_classes`` (``hparams["modules"]["loss_fn"]``, checkpointed),
    tell a per-step lr schedule the epoch length, load ``pretrained`` weights, and log
    what the run will do."""
    loss_fn = hparams["loss_fn"](n_classes=n_classes)
    hparams["modules"]["loss_fn"] = loss_fn
    hparams["checkpointer"].add_recoverable("loss_fn", loss_fn)
    schedule = hparams.get("lr_scheduler")
    if hasattr(schedule, "set_epoch_length"):  # per-process steps; lr_scale x processes
        schedule.set_epoch_length(len(sampler), world_size=_world_size())
    if hparams.get("pretrained"):
        load_pretrained(hparams["pretrained"], hparams["embedding_model"], loss_fn)
    augment = [k[:-4] for k in ("noise_csv", "rir_csv") if hparams.get(k)]
    logger.info(
        "%s: %d classes, %d utterances, %d batches/epoch per process (%d processes) of %d "
        "speakers x %s utterances, %d-frame crops; augmentation: %s; encoder %.2f M parameters",
        hparams["loss_name"], n_classes, getattr(train, "n_utterances", len(train)), len(sampler),
        _world_size(),
        hparams["speakers_per_batch"],
        hparams["utts_per_speaker"], hparams["crop_frames"], " + ".join(augment) or "none",
        sum(p.numel() for p in hparams["embedding_model"].parameters()) / 1e6,
    )  # fmt: skip
    return loss_fn

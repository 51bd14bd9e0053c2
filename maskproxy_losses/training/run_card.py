"""What a training run tells its model card: loss, data, schedule, fine-tuning, averaging, results.

The training recipe exports the best (or averaged) checkpoint through
:func:`maskproxy_losses.inference.export.export_model` with ``card=training_card(...)``
(the training manifest ``<manifest_folder>/train.csv`` gives the data counts), then adds
the test results with :func:`record_test_results`.

Example
-------
>>> import os, tempfile
>>> csv = os.path.join(tempfile.mkdtemp(), "train.csv")
>>> _ = open(csv, "w").write("ID,duration,wav,spk_id\\na,1.5,a.wav,s1\\nb,2.5,b.wav,s2\\n")
>>> data_counts(csv)
{'speakers': 2, 'utterances': 2, 'hours': 0.0011}
"""

import csv
from pathlib import Path

from maskproxy_losses.inference.model_card import metrics_summary, update_model_card

__all__ = ["data_counts", "training_card", "record_test_results"]

RECIPE = "recipes/VoxCeleb/MaskProxy/train_speaker_embeddings.py"


def data_counts(train_csv):
    """``{"speakers", "utterances", "hours"}`` of a training manifest (SpeechBrain CSV with
    ``spk_id`` and ``duration`` columns)."""
    speakers, n, seconds = set(), 0, 0.0
    with open(train_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            speakers.add(row["spk_id"])
            n += 1
            seconds += float(row.get("duration") or 0.0)
    return {"speakers": len(speakers), "utterances": n, "hours": round(seconds / 3600, 4)}


def _data_name(hparams):
    if hparams.get("builtin_corpus"):
        return (
            f"the built-in synthetic corpus (data_prep.demo_corpus, seed {hparams['corpus_seed']})"
        )
    source = hparams.get("train_list") or hparams.get("train_root")
    return f"{Path(str(source)).name} ({source})"


def training_card(hparams, dev_scored, calibration=None):
    """The ``training``, ``evaluation`` (dev: ``dev_scored`` = ``(scores, labels, metrics)``,
    Cllr with ``calibration``, which was fitted on them) and ``source`` sections of a recipe
    run's card."""
    from maskproxy_losses.scoring.calibration import calibration_metrics

    scores, labels, dev_metrics = dev_scored[:3]
    dev_cal = calibration_metrics(scores, labels, calibration)
    train_csv = Path(hparams["manifest_folder"]) / "train.csv"
    n_avg = int(hparams.get("average_checkpoints") or 0)
    training = {
        "loss": hparams["loss_name"],
        "data": {"name": _data_name(hparams), **data_counts(train_csv)},
        "batch": (
            f"{hparams['speakers_per_batch']} speakers x {hparams['utts_per_speaker']} "
            f"utterances, crops of {hparams['crop_frames']} frames"
        ),
        "epochs": int(hparams["epoch_counter"].current),
        "seed": hparams["seed"],
        "pretrained": hparams.get("pretrained") or None,
        "averaged": (
            f"mean of {n_avg} checkpoints ({hparams.get('average_mode', 'best')})"
            if n_avg > 1
            else None
        ),
        "speed_perturb": bool(hparams.get("speed_perturb", False)),
        "augmentation": bool(hparams.get("noise_csv") or hparams.get("rir_csv")),
    }
    return {
        "training": training,
        "evaluation": {"dev": metrics_summary(dev_metrics, dev_cal)},
        "source": {
            "how": f"trained by {RECIPE}; "
            + ("checkpoint average" if n_avg > 1 else "the best dev-EER checkpoint")
        },
    }


def record_test_results(model_dir, metrics, calibration_metrics=None):
    """Add the test trials' results to the card of ``model_dir`` (nothing when it is None,
    on the ranks that did not export)."""
    if model_dir is not None:
        update_model_card(
            model_dir, evaluation={"test": metrics_summary(metrics, calibration_metrics)}
        )

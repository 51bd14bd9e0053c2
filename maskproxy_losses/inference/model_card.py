"""The model card of a model directory: ``README.md`` saying what the model is and how to use it.

Every export (:func:`maskproxy_losses.inference.export.export_model`: the training recipe,
fine-tuning and checkpoint averaging through it, the converter of the authors' checkpoint,
or a user's own call) writes one. Its YAML front matter holds the machine-readable card
under the key ``maskproxy`` (read back with :func:`read_model_card`; the ONNX export copies
it into the file's metadata), the Markdown body says the same for people:

- ``model``: encoder class and its init arguments (whatever the encoder), parameters,
  embedding size, front end, sample rate;
- ``training``: loss, data (speakers, utterances), epochs, seed, fine-tuned from,
  checkpoint averaging; ``None`` when the exporter was not told (e.g. converted weights);
- ``evaluation``: per trial list (``dev``, ``test``) EER (%), minDCF, Cllr and the trial
  counts;
- ``calibration``: what ``calibration.json`` holds and the cosine thresholds that give its
  decisions with SpeechBrain's ``SpeakerRecognition``;
- ``source`` (how the directory was made), ``package`` (name, version, git commit),
  ``license``, ``citation``, ``created``.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> card = {"model": {"encoder": "Enc", "embedding_dim": 8, "frontend": "fbank",
...                   "sample_rate": 16000}, "training": None, "evaluation": {}}
>>> write_model_card(d, card)
>>> read_model_card(d)["model"]["embedding_dim"]
8
>>> (d / "README.md").read_text().startswith("---\\nlicense: apache-2.0\\n")
True
"""

import datetime
import json
import math
from pathlib import Path

import yaml

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text
from maskproxy_losses.utils.provenance import package_info

__all__ = [
    "CARD_FILE",
    "CARD_KEY",
    "CITATION",
    "describe_encoder",
    "calibration_summary",
    "metrics_summary",
    "write_model_card",
    "read_model_card",
    "update_model_card",
]

CARD_FILE = "README.md"
CARD_KEY = "maskproxy"
CITATION = """@inproceedings{lian2021maskedproxy,
  title     = {Masked Proxy Loss for Text-Independent Speaker Verification},
  author    = {Lian, Jiachen and Vinod Kumar, Aiswarya and Dhamyal, Hira and Raj, Bhiksha
               and Singh, Rita},
  booktitle = {Proc. Interspeech 2021},
  year      = {2021},
  note      = {arXiv:2011.04491}
}"""
P_TARGETS = (0.01, 0.05)


def describe_encoder(embedding_model, compute_features, mean_var_norm, frontend, n_mels):
    """The ``model`` section for an encoder in eval mode (any class with ``init_kwargs``):
    its class, init arguments, parameter count and the embedding size it outputs for one
    second of audio through the front end."""
    import torch

    cls = type(embedding_model)
    with torch.no_grad():
        wav = torch.linspace(-0.5, 0.5, 16000)[None] * torch.sin(torch.arange(16000.0))[None]
        feats = mean_var_norm(compute_features(wav), torch.ones(1))
        dim = int(embedding_model(feats).reshape(1, -1).shape[1])
    return {
        "encoder": cls.__name__,
        "encoder_class": f"{cls.__module__}.{cls.__qualname__}",
        "encoder_kwargs": dict(getattr(embedding_model, "init_kwargs", {}) or {}),
        "parameters": int(sum(p.numel() for p in embedding_model.parameters())),
        "embedding_dim": dim,
        "frontend": frontend,
        "n_mels": int(n_mels),
        "sample_rate": 16000,
        "input": "16 kHz mono waveform, float in [-1, 1]",
    }


def metrics_summary(metrics, calibration_metrics=None):
    """The card's view of a trial list's ``verification_metrics`` (+ calibration metrics)."""
    out = {
        key: round(float(metrics[key]), 4)
        for key in ("EER", "minDCF_0.01", "minDCF_0.05")
        if key in metrics
    }
    for key in ("n_trials", "n_target", "n_nontarget"):
        if key in metrics:
            out[key] = int(metrics[key])
    for key in ("Cllr", "minCllr"):
        if calibration_metrics and key in calibration_metrics:
            out[key] = round(float(calibration_metrics[key]), 4)
    qmf = (calibration_metrics or {}).get("QMF")  # the quality-aware calibration's
    if qmf and "Cllr" in qmf:
        out["Cllr_QMF"] = round(float(qmf["Cllr"]), 4)
    return out


def calibration_summary(data):
    """The ``calibration`` section for the parsed ``calibration.json`` ``data`` (or None):
    its kind and fit, and for a linear one the cosine threshold of each target prior."""
    if not isinstance(data, dict):
        return None
    out = {"file": "calibration.json", "format": data.get("format")}
    for key in ("scale", "offset", "prior", "n_target", "n_nontarget", "source", "meta"):
        if key in data:
            out[key] = data[key]
    scale, offset = data.get("scale"), data.get("offset")
    if isinstance(scale, (int, float)) and isinstance(offset, (int, float)) and scale > 0:
        out["kind"] = "linear: llr = scale * cosine + offset"
        out["cosine_thresholds"] = {
            f"{p:g}": round((math.log((1 - p) / p) - offset) / scale, 6) for p in P_TARGETS
        }
    return out


def _front_matter(card):
    head = {
        "license": "apache-2.0",
        "library_name": "speechbrain",
        "tags": ["speaker-verification", "speaker-embedding", "masked-proxy"],
        CARD_KEY: card,
    }
    return "---\n" + yaml.safe_dump(head, sort_keys=False, width=1000) + "---\n"


def _fmt(value):
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _training_lines(training):
    if not training:
        return ["Not recorded: this directory was exported without training information."]
    data = training.get("data") or {}
    lines = [f"- loss: `{training.get('loss', 'n/a')}`"]
    if data:
        lines.append(
            f"- data: {data.get('name', 'n/a')}: {_fmt(data.get('speakers'))} speakers, "
            f"{_fmt(data.get('utterances'))} utterances"
        )
    for key, label in (
        ("epochs", "epochs"),
        ("seed", "seed"),
        ("pretrained", "fine-tuned from"),
        ("averaged", "checkpoint averaging"),
    ):
        if training.get(key) not in (None, 0, ""):
            lines.append(f"- {label}: {training[key]}")
    return lines


def _evaluation_lines(evaluation):
    if not evaluation:
        return ["Not evaluated at export (score a trial list with the verification recipe)."]
    lines = [
        "| trials | EER % | minDCF(0.01) | minDCF(0.05) | Cllr | min Cllr | trials (target) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in evaluation.items():
        cells = [_fmt(m.get(k)) for k in ("EER", "minDCF_0.01", "minDCF_0.05", "Cllr", "minCllr")]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_fmt(m.get('n_trials'))} "
            f"({_fmt(m.get('n_target'))}) |"
        )
    if "Cllr" in evaluation.get("dev", {}):
        lines += [
            "",
            "Full-utterance cosine scores. The dev trials chose the checkpoint and fitted the "
            "calibration, so their Cllr is optimistic; the test trials are held out.",
        ]
    return lines


def _calibration_lines(cal):
    if not cal:
        return [
            "No `calibration.json`: scores are cosines, not log-likelihood ratios; "
            "`maskproxy calibrate` fits one on a scored trial list."
        ]
    lines = [f"`calibration.json` ({cal.get('format')})."]
    if "cosine_thresholds" in cal:
        lines[0] += (
            f" `llr = {cal['scale']:.6g} * cosine {cal['offset']:+.6g}` (natural log), fitted "
            f"on {_fmt(cal.get('source'))} ({_fmt(cal.get('n_target'))} target, "
            f"{_fmt(cal.get('n_nontarget'))} non-target trials). Accept when "
            "`llr >= log((1 - p) / p)`, i.e. when the cosine reaches:"
        )
        lines += ["", "| target prior p | cosine threshold |", "|---|---|"]
        lines += [f"| {p} | {t:.6f} |" for p, t in cal["cosine_thresholds"].items()]
        lines += [
            "",
            "SpeechBrain's `SpeakerRecognition.verify_files` decides at a fixed cosine of "
            "0.25; give `verify_batch(..., threshold=...)` the value above, or load the "
            "directory with `CalibratedSpeakerRecognition` (below), which applies the file.",
        ]
    return lines


def _body(card):
    m, pkg = card.get("model") or {}, card.get("package") or {}
    training = card.get("training")
    title = m.get("encoder", "speaker embedding model")
    if training and training.get("loss"):
        title += f" trained with `{training['loss']}`"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in (m.get("encoder_kwargs") or {}).items())
    source = card.get("source") or {}
    lines = [
        f"# {title}",
        "",
        "A speaker-embedding model directory (SpeechBrain inference format) written by "
        f"{pkg.get('name', 'maskproxy-losses')} {pkg.get('version', '')} "
        f"(commit {_fmt(pkg.get('commit'))}); {source.get('how', 'exported')}.",
        "",
        "## Model",
        "",
        f"- encoder: `{m.get('encoder_class', m.get('encoder'))}({kwargs})`, "
        f"{_fmt(m.get('parameters'))} parameters",
        f"- embedding: {_fmt(m.get('embedding_dim'))} dimensions, compared by cosine",
        f"- input: {m.get('input', '16 kHz mono waveform')}; front end `{m.get('frontend')}` "
        f"({_fmt(m.get('n_mels'))} mel bins). `maskproxy` and the Python API resample other "
        "rates and mix stereo down first.",
        "",
        "## Training",
        "",
        *_training_lines(training),
        "",
        "## Evaluation",
        "",
        *_evaluation_lines(card.get("evaluation")),
        "",
        "## Calibration",
        "",
        *_calibration_lines(card.get("calibration")),
        "",
        "## How to load it",
        "",
        "```python",
        "# SpeechBrain (offline, from any folder): embeddings [batch, 1, D]",
        "from speechbrain.inference.speaker import EncoderClassifier",
        'encoder = EncoderClassifier.from_hparams(source="MODEL_DIR", savedir="tmp/encoder")',
        "# this package: loaded once, calibrated decisions, any sample rate",
        "from maskproxy_losses.inference.api import Verifier",
        'verifier = Verifier("MODEL_DIR")',
        'result = verifier.verify("a.wav", "b.wav")  # score, llr, accept',
        "# SpeechBrain's SpeakerRecognition with this directory's calibration",
        "from maskproxy_losses.inference.speechbrain_interface import CalibratedSpeakerRecognition",
        'sr = CalibratedSpeakerRecognition.from_hparams(source="MODEL_DIR", savedir="tmp/sr")',
        "```",
        "",
        "```bash",
        "maskproxy embed MODEL_DIR --wav-list wavs.txt --output emb.npz",
        "maskproxy verify MODEL_DIR a.wav b.wav",
        "maskproxy export-onnx MODEL_DIR model.onnx   # waveform -> embedding, onnxruntime only",
        "```",
        "",
        "`MODEL_DIR` is this folder. Install the package from its repository (a wheel or a "
        "git checkout: `pip install .`); the front matter above holds this card as data.",
        "",
        "## License and citation",
        "",
        f"{card.get('license', 'Apache-2.0')} (the code that wrote it). Cite the losses as:",
        "",
        "```bibtex",
        card.get("citation", CITATION),
        "```",
        "",
    ]
    return "\n".join(lines)


def _complete(card):
    card = dict(card)
    card.setdefault("package", package_info())
    card.setdefault("license", card["package"].get("license", "Apache-2.0"))
    card.setdefault("citation", CITATION)
    card.setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return json.loads(json.dumps(card))  # plain JSON types only (tuples -> lists)


def write_model_card(model_dir, card):
    """Write ``model_dir/README.md`` for ``card`` (completed with package, license,
    citation and date, and the calibration read from ``model_dir/calibration.json``)."""
    model_dir = Path(model_dir)
    card = dict(card)
    cal_path = model_dir / "calibration.json"
    if "calibration" not in card:
        try:
            card["calibration"] = calibration_summary(json.loads(cal_path.read_text("utf-8")))
        except (OSError, ValueError):
            card["calibration"] = None
    card = _complete(card)
    atomic_write_text(model_dir / CARD_FILE, _front_matter(card) + "\n" + _body(card))


def read_model_card(model_dir):
    """The card stored in ``model_dir/README.md`` (a dict), or ``None`` without one."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    parts = text.split("---\n", 2)
    try:
        if parts[0] != "" or len(parts) < 3:
            raise yaml.YAMLError("no front matter")
        head = yaml.safe_load(parts[1])
        card = head[CARD_KEY]
        if not isinstance(card, dict):
            raise TypeError(f"'{CARD_KEY}' is not a mapping")
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a model card written by this package ({err})") from None
    return card


def update_model_card(model_dir, **sections):
    """Merge ``sections`` (e.g. ``evaluation={"test": ...}``, merged key by key for dicts)
    into the card of ``model_dir`` and rewrite it."""
    card = read_model_card(model_dir) or {}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(card.get(key), dict):
            card[key] = {**card[key], **value}
        else:
            card[key] = value
    card.pop("calibration", None)  # re-read from the directory
    write_model_card(model_dir, card)

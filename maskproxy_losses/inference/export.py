"""Export an embedding model as a SpeechBrain inference directory, with its model card.

The directory holds ``hyperparams.yaml``, ``embedding_model.ckpt`` and ``README.md`` (the
model card, :mod:`.model_card`: encoder, training, results, calibration, version, how to
load it) and loads offline with ``EncoderClassifier.from_hparams(source=dir,
savedir=...)`` or ``SpeakerRecognition.from_hparams(...)`` from any working directory:
the pretrainer names no path, so SpeechBrain fetches ``<source>/embedding_model.ckpt``
from whatever ``source`` the directory is loaded from (it may be moved freely). Every
export goes through :func:`export_model`: the training recipe (fine-tuning and checkpoint
averaging included), the converter of the authors' checkpoint and a user's own call.

Example
-------
>>> import tempfile, torch
>>> from maskproxy_losses.inference.model_card import read_model_card
>>> from maskproxy_losses.models.resnetse34l import ResNetSE34L
>>> model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval()
>>> out = export_model(tempfile.mkdtemp() + "/model", model)
>>> sorted(p.name for p in out.iterdir())
['README.md', 'embedding_model.ckpt', 'hyperparams.yaml']
>>> card = read_model_card(out)
>>> card["model"]["encoder"], card["model"]["embedding_dim"], card["training"]
('ResNetSE34L', 16, None)
"""

import io
import json
from pathlib import Path

import torch
from hyperpyyaml import load_hyperpyyaml

from maskproxy_losses.inference.model_card import describe_encoder, write_model_card
from maskproxy_losses.inference.model_dir import CKPT_FILE, HPARAMS_FILE
from maskproxy_losses.models.frontend import frontend_spec
from maskproxy_losses.utils.files import atomic_dir

__all__ = ["export_model", "render_hparams", "unwrap", "HPARAMS_FILE", "CKPT_FILE"]


def unwrap(model):
    """Strip DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _new(key, path, kwargs):
    lines = [f"{key}: !new:{path}"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in kwargs.items()]
    return "\n".join(lines)


def render_hparams(embedding_model, frontend="fbank", n_mels=40):
    """Return the hyperparams.yaml text for ``embedding_model`` and a front end."""
    model = unwrap(embedding_model)
    kwargs = getattr(model, "init_kwargs", None)
    if not isinstance(kwargs, dict):
        raise TypeError(f"{type(model).__name__} has no `init_kwargs` dict to rebuild it from")
    expected = kwargs.get("n_mels", kwargs.get("input_size", n_mels))  # ECAPA: input_size
    if expected != n_mels:
        raise ValueError(f"model expects {expected} mels, the front end gives {n_mels}")
    (feat_path, feat_kwargs), (norm_path, norm_kwargs) = frontend_spec(frontend, n_mels)
    cls = type(model)
    # A class that only records SpeechBrain's constructor arguments exports as SpeechBrain's.
    model_path = getattr(model, "export_path", f"{cls.__module__}.{cls.__qualname__}")
    return (
        "\n\n".join(
            [
                "# SpeechBrain inference hyperparameters, written by "
                f"maskproxy_losses.inference.export (front end: {frontend})",
                f"sample_rate: 16000\nn_mels: {int(n_mels)}",
                _new("compute_features", feat_path, feat_kwargs),
                _new("mean_var_norm", norm_path, norm_kwargs),
                _new("embedding_model", model_path, kwargs),
                "modules:\n"
                "    compute_features: !ref <compute_features>\n"
                "    mean_var_norm: !ref <mean_var_norm>\n"
                "    embedding_model: !ref <embedding_model>",
                "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
                "    loadables:\n"
                "        embedding_model: !ref <embedding_model>",
            ]
        )
        + "\n"
    )


def export_model(
    output_dir,
    embedding_model,
    frontend="fbank",
    n_mels=40,
    overwrite=False,
    extra_files=None,
    card=None,
):
    """Write ``embedding_model`` (+ front end preset) as a SpeechBrain inference dir.

    Arguments
    ---------
    output_dir : str or Path
        Directory to create. An existing non-empty one is only replaced when
        ``overwrite`` is True.
    embedding_model : torch.nn.Module
        Model with an ``init_kwargs`` dict (``ResNetSE34L``, ``ResNet34``, ``ECAPA_TDNN``;
        an ``export_path`` attribute names the class to write instead of its own);
        DataParallel, DDP and torch.compile wrappers are unwrapped.
    frontend : str
        A preset of :mod:`maskproxy_losses.models.frontend`: "fbank" (SpeechBrain Fbank +
        sentence mean/var norm, ResNetSE34L's in training), "fbank_cmn" (mean norm only,
        ResNet34's and ECAPA-TDNN's) or "authors" (the authors' log-mel + instance norm).
    n_mels : int
        Number of mel bins of the front end.
    overwrite : bool
        Replace an existing non-empty ``output_dir``.
    extra_files : dict, optional
        ``{file name: text}`` written into the directory too (e.g. ``calibration.json``).
    card : dict, optional
        What the exporter knows beyond the model (see :mod:`.model_card`): ``training``,
        ``evaluation``, ``source`` (``{"how": ...}``). The ``model``, ``calibration`` and
        ``package`` sections are filled in here.

    Returns
    -------
    Path
        The absolute path of the written directory.

    The directory is built in a hidden temporary folder beside ``output_dir``,
    checked (YAML builds, state dict loads strictly), then renamed into place, so
    no half-written ``output_dir`` is ever left behind.
    """
    out = Path(output_dir).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (use overwrite=True to replace it)")

    text = render_hparams(embedding_model, frontend, n_mels)
    state = {k: v.detach().cpu() for k, v in unwrap(embedding_model).state_dict().items()}

    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        (tmp / HPARAMS_FILE).write_text(text, encoding="utf-8")
        buf = io.BytesIO()  # torch.save to a file hides a full disk in a RuntimeError
        torch.save(state, buf)
        (tmp / CKPT_FILE).write_bytes(buf.getbuffer())
        for name, content in (extra_files or {}).items():
            (tmp / name).write_text(content, encoding="utf-8")
        # Check the directory before it becomes visible.
        hparams = load_hyperpyyaml(text)
        hparams["embedding_model"].load_state_dict(
            torch.load(tmp / CKPT_FILE, map_location="cpu", weights_only=True), strict=True
        )
        modules = [hparams[k].eval() for k in ("embedding_model", "compute_features")]
        mvn = hparams["mean_var_norm"].eval()
        info = {"model": describe_encoder(*modules, mvn, frontend, n_mels)}
        info.update({"training": None, "evaluation": {}, **(card or {})})
        info.setdefault("source", {"how": "exported by maskproxy_losses.inference.export"})
        write_model_card(tmp, info)
    return out

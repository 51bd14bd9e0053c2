"""Convert the authors' ResNetSE34L checkpoint into a SpeechBrain inference directory.

The authors' checkpoint is a ``torch.save``'d state dict with model keys ``__S__.*``
and loss keys ``__L__.*`` (possibly all under a ``module.`` prefix). The converter
keeps ``__S__.*`` minus the prefix, drops ``__L__.*`` and the front-end buffers
``__S__.torchfb.*``, checks the keys and shapes against ``ResNetSE34L`` and exports
the result with the authors' front end (``maskproxy_losses.inference.export``).

Command line: ``maskproxy convert voxceleb_pretrained.model exported/ [--overwrite]``.
"""

import hashlib
import inspect
from pathlib import Path

import torch

from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.errors import MAX_LISTED, InputError
from maskproxy_losses.utils.files import check_not_input

__all__ = ["load_authors_state_dict", "convert_checkpoint"]

MODEL_PREFIX, LOSS_PREFIX, FRONTEND_PREFIX = "__S__.", "__L__.", "__S__.torchfb."


def _listing(title, items):
    shown = list(items)[:MAX_LISTED]
    more = len(items) - len(shown)
    text = f"  {title} ({len(items)}): " + ", ".join(shown)
    return text + (f", ... and {more} more" if more else "")


def load_authors_state_dict(path):
    """Read ``path`` and return ``(model_state, n_mels)`` with the prefixes stripped.

    ``n_mels`` comes from the ``torchfb`` mel filterbank when present (else 40).
    Raises ``InputError`` naming the file if it cannot be read or is not an
    authors'-layout state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors vary by content
        detail = str(err).splitlines()[0] if str(err) else "no details"
        raise InputError(
            f"cannot read {path} as a PyTorch checkpoint: not a torch.save file, corrupt, "
            f"or holding objects other than tensors ({type(err).__name__}: {detail})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{path} does not hold a state dict (name -> tensor)")

    model, others, n_mels = {}, [], 40
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(FRONTEND_PREFIX):
            if key == FRONTEND_PREFIX + "mel_scale.fb" and value.dim() == 2:
                n_mels = int(value.shape[1])
        elif key.startswith(MODEL_PREFIX):
            model[key[len(MODEL_PREFIX) :]] = value
        elif not key.startswith(LOSS_PREFIX):
            others.append(key)
    if not model:
        raise InputError(
            f"{path} has no '{MODEL_PREFIX}*' model keys: not a checkpoint in the authors' layout"
        )
    if others:
        raise InputError(
            f"{path} has keys outside '{MODEL_PREFIX}*' / '{LOSS_PREFIX}*':\n"
            + _listing("unexpected keys", others)
        )
    return model, n_mels


def build_model_for(state, n_mels=40):
    """Build the ``ResNetSE34L`` that ``state`` belongs to, loaded and in eval mode.

    The embedding size and pooling ("sap"/"asp") are read from ``fc.weight``; the
    rest is the standard ResNetSE34L. Raises ``InputError`` listing missing,
    unexpected and mis-shaped keys.
    """
    kwargs = {"n_mels": n_mels}
    fc = state.get("fc.weight")
    if isinstance(fc, torch.Tensor) and fc.dim() == 2:
        kwargs["emb_dim"] = int(fc.shape[0])
        if fc.shape[1] == 2 * inspect.signature(ResNetSE34L).parameters["channels"].default[-1]:
            kwargs["pooling"] = "asp"
    model = ResNetSE34L(**kwargs)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {list(state[k].shape)} (model: {list(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        args = ", ".join(f"{k}={v!r}" for k, v in model.init_kwargs.items())
        lines = [f"checkpoint does not match ResNetSE34L({args}):"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped keys", misshaped),
        ):
            if items:
                lines.append(_listing(title, items))
        raise InputError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_checkpoint(path, output_dir, overwrite=False):
    """Convert the authors' checkpoint ``path`` into SpeechBrain directory ``output_dir``.

    Returns the absolute output path. Raises ``InputError`` for unusable checkpoints
    and if ``output_dir`` is not empty and ``overwrite`` is False; nothing is written
    in either case.
    """
    out = Path(output_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: exists and is not empty (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    check_not_input(out, [(path, "the checkpoint")], "OUTPUT_DIR", folder=True)
    state, n_mels = load_authors_state_dict(path)
    try:
        model = build_model_for(state, n_mels)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    card = converted_card(path)
    return export_model(
        out, model, frontend="authors", n_mels=n_mels, overwrite=overwrite, card=card
    )


def converted_card(path):
    """The model card's ``training`` and ``source`` sections of a converted checkpoint: what
    the file itself tells (its sha256, the number of training classes in the loss weights);
    the loss and the data are not stored in it."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    state = torch.load(path, map_location="cpu", weights_only=True)
    loss_keys = {
        k.removeprefix("module.")[len(LOSS_PREFIX) :]: v
        for k, v in state.items()
        if k.removeprefix("module.").startswith(LOSS_PREFIX)
    }
    classes = next((int(v.shape[0]) for k, v in loss_keys.items() if v.dim() == 2), None)
    return {
        "training": {
            "loss": "not stored in the checkpoint (the authors evaluate their released "
            "model with --trainfunc mmp_balance)",
            "data": {
                "name": "not stored in the checkpoint (the authors' README: VoxCeleb2 dev)",
                "speakers": classes,
            },
            "loss_weights_dropped": sorted(loss_keys),
        },
        "source": {
            "how": f"converted from the authors' checkpoint {path.name} by maskproxy convert",
            "checkpoint": path.name,
            "checkpoint_sha256": digest,
        },
    }

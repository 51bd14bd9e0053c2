"""Loading a model directory (``hyperparams.yaml`` + ``embedding_model.ckpt``) safely.

A SpeechBrain ``hyperparams.yaml`` is code: HyperPyYAML builds whatever its tags name
(``!new:``, ``!name:``, ``!apply:os.system`` ...) when the file is loaded. A model
directory downloaded from someone else could therefore run anything on load. Before
loading, :func:`check_hparams` compares the file with what this project's export
writes: the only tags allowed are ``!ref`` and ``!new:`` of the constructors in
:data:`ALLOWED_CONSTRUCTORS`; anything else is refused unless the caller passes
``trust=True`` (``--trust_model_dir True`` / ``--trust-model-dir`` on the command lines).
The checkpoint is read with ``torch.load(weights_only=True)``: tensors only, no pickle.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "hyperparams.yaml").write_text("x: !apply:os.system ['echo hi']\\n")
>>> check_hparams(d)
Traceback (most recent call last):
...
maskproxy_losses.errors.InputError: ... refusing to load it ...
"""

from pathlib import Path

import torch
import yaml

from maskproxy_losses.errors import InputError
from maskproxy_losses.hparams import read_plain_yaml

__all__ = ["ALLOWED_CONSTRUCTORS", "HPARAMS_FILE", "CKPT_FILE", "check_hparams", "load_encoder"]

HPARAMS_FILE = "hyperparams.yaml"
CKPT_FILE = "embedding_model.ckpt"

# Every class the project's export (maskproxy_losses.export) and converter may name.
ALLOWED_CONSTRUCTORS = frozenset({
    "speechbrain.lobes.features.Fbank",
    "speechbrain.processing.features.InputNormalization",
    "speechbrain.utils.parameter_transfer.Pretrainer",
    "maskproxy_losses.encoder.ResNetSE34L",
    "maskproxy_losses.frontend.AuthorsFbank",
    "maskproxy_losses.frontend.InstanceNorm",
})


def check_hparams(model_dir):
    """Raise ``InputError`` unless ``model_dir/hyperparams.yaml`` names only what the
    project's export writes (``!ref`` and ``!new:`` of :data:`ALLOWED_CONSTRUCTORS`)."""
    path = Path(model_dir) / HPARAMS_FILE
    if not path.is_file():
        raise InputError(f"{model_dir}: not a model directory (no {HPARAMS_FILE})")
    try:
        _, tags = read_plain_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    bad = [
        f"{path}:{line}: {tag}"
        for tag, line in tags
        if tag != "!ref" and not (tag.startswith("!new:") and tag[5:] in ALLOWED_CONSTRUCTORS)
    ]
    if bad:
        raise InputError(
            [f"{path}: names code this project's export never writes; refusing to load it "
             "(a hyperparams.yaml runs what it names). If you trust its author, pass "
             "--trust_model_dir True (recipe) / --trust-model-dir (tools) / trust=True:"] + bad
        )


def load_encoder(model_dir, device="cpu", trust=False):
    """``EncoderClassifier`` of a model directory, in eval mode on ``device``.

    The yaml is checked with :func:`check_hparams` unless ``trust``; the checkpoint is
    loaded with ``weights_only=True`` and strictly, and every problem names the user's
    path (not a temporary copy).
    """
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.inference.speaker import EncoderClassifier

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: model directory not found")
    if trust:
        if not (model_dir / HPARAMS_FILE).is_file():
            raise InputError(f"{model_dir}: not a model directory (no {HPARAMS_FILE})")
    else:
        check_hparams(model_dir)
    hparams_path, ckpt = model_dir / HPARAMS_FILE, model_dir / CKPT_FILE
    try:
        with open(hparams_path, encoding="utf-8") as f:
            hparams = load_hyperpyyaml(f)
        modules = hparams["modules"]
        model = modules["embedding_model"]
    except (KeyError, TypeError) as err:
        raise InputError(f"{hparams_path}: lacks modules / embedding_model ({err})") from None
    except Exception as err:  # a bad constructor argument, an unknown key, ...
        raise InputError(f"{hparams_path}: cannot build the model ({type(err).__name__}: {err})") from None
    if not ckpt.is_file():
        raise InputError(f"{ckpt}: checkpoint not found (a model directory needs {CKPT_FILE})")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled objects
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{ckpt}: not a readable weights-only checkpoint ({detail})") from None
    if not isinstance(state, dict):
        raise InputError(f"{ckpt}: does not hold a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise InputError([f"{ckpt}: does not fit the model in {HPARAMS_FILE}:"] + lines[:20]) from None
    encoder = EncoderClassifier(modules=modules, hparams=hparams, run_opts={"device": str(device)})
    encoder.eval()
    return encoder

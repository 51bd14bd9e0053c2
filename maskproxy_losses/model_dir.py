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

__all__ = [
    "ALLOWED_CONSTRUCTORS", "HPARAMS_FILE", "CKPT_FILE", "MODULE_KEYS", "check_hparams", "load_modules",
    "load_encoder",
]

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


MODULE_KEYS = ("compute_features", "mean_var_norm", "embedding_model")


def load_modules(model_dir, trust=False):
    """``(hparams, modules)`` of a model directory: the front end and the embedding model
    (``modules`` maps :data:`MODULE_KEYS` to modules), weights loaded, in eval mode.

    The yaml is checked with :func:`check_hparams` unless ``trust``; the checkpoint is
    loaded with ``weights_only=True`` and strictly, and every problem names the user's
    path (not a temporary copy).
    """
    from hyperpyyaml import load_hyperpyyaml

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
        modules = {key: hparams["modules"][key] for key in MODULE_KEYS}
    except (KeyError, TypeError) as err:
        raise InputError(f"{hparams_path}: needs modules {', '.join(MODULE_KEYS)} ({err})") from None
    except Exception as err:  # a bad constructor argument, an unknown class, ...
        raise InputError(f"{hparams_path}: cannot build the model ({type(err).__name__}: {err})") from None
    if not all(isinstance(m, torch.nn.Module) for m in modules.values()):
        raise InputError(f"{hparams_path}: {', '.join(MODULE_KEYS)} must be torch modules")
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
        modules["embedding_model"].load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise InputError([f"{ckpt}: does not fit the model in {HPARAMS_FILE}:"] + lines[:20]) from None
    for module in modules.values():
        module.eval()
    return hparams, modules


def load_encoder(model_dir, device="cpu", trust=False):
    """``EncoderClassifier`` of a model directory (see :func:`load_modules`), in eval mode
    on ``device``."""
    from speechbrain.inference.speaker import EncoderClassifier

    hparams, modules = load_modules(model_dir, trust)
    encoder = EncoderClassifier(modules=modules, hparams=hparams, run_opts={"device": str(device)})
    encoder.eval()
    return encoder

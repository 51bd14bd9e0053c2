"""Loading a model directory (``hyperparams.yaml`` + ``embedding_model.ckpt``) safely.

A SpeechBrain ``hyperparams.yaml`` is code: HyperPyYAML builds whatever its tags name
(``!new:``, ``!name:``, ``!apply:os.system`` ...), and even plain values can run code
through it (a value in parentheses is re-parsed as a tuple with PyYAML's unsafe loader,
and ``!ref`` allows attribute access and arithmetic). A model directory downloaded from
someone else could therefore run anything on load. So an untrusted file never reaches
HyperPyYAML: :func:`read_model_hparams` reads it with PyYAML's safe loader and builds the
objects itself, accepting only what this project's export writes: ``!new:`` of the
classes in :data:`ALLOWED_CONSTRUCTORS` with plain arguments, and ``!ref <key>`` of a
whole top-level key. YAML anchors and aliases (``&a`` / ``*a``, which the export never
writes and which can expand without bound) and files over :data:`MAX_HPARAMS_BYTES` are
refused from the event stream, before anything is built. Anything else is refused with
its ``file:line`` unless the caller passes ``trust=True`` (``--trust_model_dir True`` /
``--trust-model-dir`` on the command lines), which loads the file with HyperPyYAML as
SpeechBrain would. The checkpoint is read with ``torch.load(weights_only=True)``: tensors
only, no pickle; weights that are not finite are refused (the model would embed every
file to NaN).

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "hyperparams.yaml").write_text("x: !apply:os.system ['echo hi']\\n")
>>> check_hparams(d)
Traceback (most recent call last):
...
maskproxy_losses.utils.errors.InputError: ... refusing to load it ...
"""

import importlib
import re
from pathlib import Path

import torch
import yaml

from maskproxy_losses.utils.errors import InputError

__all__ = [
    "ALLOWED_CONSTRUCTORS",
    "HPARAMS_FILE",
    "MAX_HPARAMS_BYTES",
    "CKPT_FILE",
    "model_inputs",
    "MODULE_KEYS",
    "check_model_dir",
    "check_hparams",
    "read_model_hparams",
    "load_modules",
    "load_encoder",
]

HPARAMS_FILE = "hyperparams.yaml"
CKPT_FILE = "embedding_model.ckpt"
MAX_HPARAMS_BYTES = 1 << 20  # an exported hyperparams.yaml is about 1 KB

# Every class the project's export (maskproxy_losses.inference.export) and converter may name:
# today's homes, and the pre-0.2 module paths that directories exported earlier name.
ALLOWED_CONSTRUCTORS = frozenset(
    {
        "speechbrain.lobes.features.Fbank",
        "speechbrain.processing.features.InputNormalization",
        "speechbrain.utils.parameter_transfer.Pretrainer",
        "maskproxy_losses.models.resnetse34l.ResNetSE34L",
        "maskproxy_losses.models.resnet34.ResNet34",
        "maskproxy_losses.models.ecapa_tdnn.ECAPA_TDNN",
        "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",  # what an ECAPA_TDNN exports as
        "maskproxy_losses.models.frontend.AuthorsFbank",
        "maskproxy_losses.models.frontend.InstanceNorm",
        "maskproxy_losses.encoder.ResNetSE34L",
        "maskproxy_losses.frontend.AuthorsFbank",
        "maskproxy_losses.frontend.InstanceNorm",
    }
)
_WHOLE_REF = re.compile(r"<(\w+)>")


class _New:
    """A ``!new:path`` node, not yet built."""

    def __init__(self, path, kwargs, line):
        self.path, self.kwargs, self.line = path, kwargs, line


class _Ref:
    """A ``!ref <key>`` node, not yet resolved."""

    def __init__(self, key, line):
        self.key, self.line = key, line


class _ModelYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that keeps ``!new:`` / ``!ref`` nodes as markers and records
    every other application tag as a problem (nothing is ever run)."""


def _construct_new(loader, suffix, node):
    line = node.start_mark.line + 1
    if suffix not in ALLOWED_CONSTRUCTORS:
        loader.problems.append((line, f"!new:{suffix}"))
    if isinstance(node, yaml.MappingNode):
        return _New(suffix, loader.construct_mapping(node, deep=True), line)
    if isinstance(node, yaml.ScalarNode) and not loader.construct_scalar(node):
        return _New(suffix, {}, line)
    loader.problems.append((line, f"!new:{suffix} with positional arguments"))
    return None


def _construct_ref(loader, node):
    line = node.start_mark.line + 1
    text = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None
    match = _WHOLE_REF.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        loader.problems.append((line, f"!ref {text!r} (only a whole <key> is accepted)"))
        return None
    return _Ref(match[1], line)


def _construct_other(loader, suffix, node):
    loader.problems.append((node.start_mark.line + 1, f"!{suffix}"))
    return None


_ModelYamlLoader.add_multi_constructor("!new:", _construct_new)
_ModelYamlLoader.add_constructor("!ref", _construct_ref)
_ModelYamlLoader.add_multi_constructor("!", _construct_other)


def _refuse(path, problems):
    raise InputError(
        [
            f"{path}: names code this project's export never writes; refusing to load it "
            "(a hyperparams.yaml runs what it names). If you trust its author, pass "
            "--trust_model_dir True (recipe) / --trust-model-dir (tools) / trust=True:"
        ]
        + [f"{path}:{line}: {what}" for line, what in sorted(problems)]
    )


def _anchors(text):
    """``[(line, what)]`` of the anchors and aliases in the YAML ``text``, read from its
    event stream (linear in its length: nothing is expanded)."""
    found = []
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            found.append((event.start_mark.line + 1, f"alias *{event.anchor}"))
        elif getattr(event, "anchor", None):
            found.append((event.start_mark.line + 1, f"anchor &{event.anchor}"))
    return found


def _parse(path):
    """The safe parse of ``path``: ``(top-level dict with markers, [(line, problem)])``."""
    try:
        size = path.stat().st_size
        if size > MAX_HPARAMS_BYTES:
            raise InputError(
                f"{path}: {size} bytes, more than the {MAX_HPARAMS_BYTES} a model directory's "
                f"{HPARAMS_FILE} may have (the export writes about 1 KB); refusing to read it"
            )
        text = path.read_text(encoding="utf-8")
        anchors = _anchors(text)
        if anchors:
            line, what = anchors[0]
            raise InputError(
                f"{path}:{line}: YAML {what}: anchors and aliases are refused in a model "
                f"directory (the export never writes them; they can expand without bound); "
                f"{len(anchors)} in this file"
            )
        loader = _ModelYamlLoader(text)
        loader.problems = []
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a mapping of keys to values")
    return data, loader.problems


def _not_a_training_folder(model_dir):
    """Raise ``InputError`` when ``model_dir`` is a training output folder (its own
    ``hyperparams.yaml`` is the recipe's; the exported model is in ``model/``)."""
    inner = Path(model_dir) / "model"
    if not (Path(model_dir) / CKPT_FILE).is_file() and all(
        (inner / name).is_file() for name in (HPARAMS_FILE, CKPT_FILE)
    ):
        raise InputError(f"{model_dir}: is a training output folder; use {inner}")


def model_inputs(model_dir):
    """``(path, what)`` of the files of a model directory that define the model (the
    inputs :func:`~maskproxy_losses.utils.files.check_not_input` protects)."""
    from maskproxy_losses.inference.model_card import CARD_FILE
    from maskproxy_losses.scoring.calibration import CALIBRATION_FILE
    from maskproxy_losses.scoring.qmf import QMF_FILE

    names = (HPARAMS_FILE, CKPT_FILE, CALIBRATION_FILE, QMF_FILE, CARD_FILE)
    return [(Path(model_dir) / name, f"the model directory's {name}") for name in names]


def _check_folder(model_dir):
    """Raise ``InputError`` unless ``model_dir`` is a folder with a :data:`HPARAMS_FILE`
    that is not a training output folder's."""
    if not Path(model_dir).is_dir():
        raise InputError(f"{model_dir}: model directory not found")
    _not_a_training_folder(model_dir)
    if not (Path(model_dir) / HPARAMS_FILE).is_file():
        raise InputError(f"{model_dir}: not a model directory (no {HPARAMS_FILE})")


def check_model_dir(model_dir):
    """Raise ``InputError`` unless ``model_dir`` is a folder holding a model directory's
    :data:`HPARAMS_FILE` and :data:`CKPT_FILE` (nothing is read)."""
    _check_folder(model_dir)
    if not (Path(model_dir) / CKPT_FILE).is_file():
        raise InputError(f"{model_dir}: not a model directory (no {CKPT_FILE})")


def check_hparams(model_dir):
    """Raise ``InputError`` unless ``model_dir/hyperparams.yaml`` names only what the
    project's export writes (``!ref <key>`` and ``!new:`` of :data:`ALLOWED_CONSTRUCTORS`)."""
    _not_a_training_folder(model_dir)
    path = Path(model_dir) / HPARAMS_FILE
    if not path.is_file():
        raise InputError(f"{model_dir}: not a model directory (no {HPARAMS_FILE})")
    _, problems = _parse(path)
    if problems:
        _refuse(path, problems)


def read_model_hparams(model_dir):
    """The hyperparameters of a model directory, built without HyperPyYAML: the checked
    ``!new:`` classes are instantiated with their plain arguments and each ``!ref <key>``
    is the object built for that key (one object per key)."""
    path = Path(model_dir) / HPARAMS_FILE
    check_hparams(model_dir)
    data, _ = _parse(path)
    built, building = {}, set()

    def build(value):
        if isinstance(value, _Ref):
            if value.key not in data:
                raise InputError(f"{path}:{value.line}: !ref <{value.key}> names no key")
            if value.key not in built:
                if value.key in building:
                    raise InputError(f"{path}:{value.line}: !ref <{value.key}> refers to itself")
                building.add(value.key)
                built[value.key] = build(data[value.key])
            return built[value.key]
        if isinstance(value, _New):
            module, _, name = value.path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            kwargs = {k: build(v) for k, v in value.kwargs.items()}
            try:
                return cls(**kwargs)
            except Exception as err:  # a bad argument for an allowed class
                raise InputError(
                    f"{path}:{value.line}: cannot build {value.path} ({type(err).__name__}: {err})"
                ) from None
        if isinstance(value, dict):
            return {k: build(v) for k, v in value.items()}
        if isinstance(value, list):
            return [build(v) for v in value]
        return value

    for key in data:
        build(_Ref(key, 0))
    return built


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
    _check_folder(model_dir)
    hparams_path, ckpt = model_dir / HPARAMS_FILE, model_dir / CKPT_FILE
    try:
        if trust:  # the user's explicit choice: SpeechBrain's own loader, tags and all
            with open(hparams_path, encoding="utf-8") as f:
                hparams = load_hyperpyyaml(f)
        else:
            hparams = read_model_hparams(model_dir)
        modules = {key: hparams["modules"][key] for key in MODULE_KEYS}
    except (KeyError, TypeError) as err:
        raise InputError(
            f"{hparams_path}: needs modules {', '.join(MODULE_KEYS)} ({err})"
        ) from None
    except InputError:
        raise
    except Exception as err:  # a bad constructor argument, an unknown class, ...
        raise InputError(
            f"{hparams_path}: cannot build the model ({type(err).__name__}: {err})"
        ) from None
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
        raise InputError(
            [f"{ckpt}: does not fit the model in {HPARAMS_FILE}:"] + lines[:20]
        ) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise InputError(
            f"{ckpt}: {len(bad)} weight tensor(s) hold NaN/Inf ({', '.join(bad[:3])}); "
            "this model would embed every file to NaN"
        )
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

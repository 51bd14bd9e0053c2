"""Loading a training recipe's hyperparameters: checked overrides, the built-in scale.

:func:`load_recipe_hparams` reads a HyperPyYAML recipe file with command-line
overrides, after four checks that would otherwise fail late or silently:

- every override names a key of the file (a typo gets the closest valid keys),
- ``loss_name`` is one the library builds,
- with ``builtin_corpus: True``, the file's ``builtin`` block (the built-in corpus's
  batch, crop and epoch values) is merged into the overrides *before* loading, so every
  ``!ref`` sees the scaled values; values given on the command line win,
- the values are in range (:func:`maskproxy_losses.training.options.check_values`: a
  positive lr, at least one epoch, crops the model can embed, ...).

Anything HyperPyYAML still cannot build from the file is one line naming the file.
:func:`read_tagged_yaml` reads a file with its tags kept as values (``{"!new:X": args}``),
for comparing two runs' settings (:mod:`maskproxy_losses.training.run_folder`).

The encoder: a recipe file names it in a top-level ``encoder: NAME`` line, and
:func:`compose_recipe` splices ``encoders/NAME.yaml`` (beside the recipe file: its front
end, ``n_mels``, ``emb_dim``, ``channels`` and ``embedding_model``) in after that line, so
``--encoder resnet34`` trains every loss with another encoder and the encoder's keys are
overridden as any other (``--channels [8,16,32,64]``). :func:`recipe_copy` writes the
spliced file into the run's folder, where SpeechBrain's resolved ``hyperparams.yaml``
copy is made from it.

Example
-------
>>> data, tags = read_plain_yaml("a: !ref <b>\\nb: 1\\n")
>>> data, tags
({'a': '<b>', 'b': 1}, [('!ref', 1)])
"""

import difflib
import logging
import re
from pathlib import Path

import yaml

from maskproxy_losses.training.options import check_values
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text

__all__ = [
    "read_plain_yaml",
    "read_tagged_yaml",
    "check_override_keys",
    "compose_recipe",
    "recipe_copy",
    "load_recipe_hparams",
]

logger = logging.getLogger(__name__)


class _TagRecorder(yaml.SafeLoader):
    """A safe YAML loader that records every application tag instead of running it."""


def _record(loader, tag_suffix, node):
    loader.tags.append((f"!{tag_suffix}", node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


_TagRecorder.add_multi_constructor("!", _record)


def read_plain_yaml(text):
    """``(data, [(tag, line), ...])``: the YAML read safely, HyperPyYAML tags recorded
    (their nodes kept as plain values) and never run."""
    loader = _TagRecorder(text)
    loader.tags = []
    try:
        return loader.get_single_data(), loader.tags
    finally:
        loader.dispose()


class _TagKeeper(yaml.SafeLoader):
    """A safe YAML loader that keeps every application tag in the value it builds."""


def _keep(loader, tag_suffix, node):
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return {f"!{tag_suffix}": value}


_TagKeeper.add_multi_constructor("!", _keep)


def read_tagged_yaml(text):
    r"""The YAML ``text`` read safely, each tagged node as ``{"!tag": value}``.

    >>> read_tagged_yaml("m: !new:torch.nn.Linear {in_features: 2}\nn: !ref <m>\n")
    {'m': {'!new:torch.nn.Linear': {'in_features': 2}}, 'n': {'!ref': '<m>'}}
    """
    loader = _TagKeeper(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_override_keys(keys, valid, source):
    """Raise ``InputError`` naming each key of ``keys`` that is not in ``valid``, with the
    closest valid keys.

    >>> try:
    ...     check_override_keys(["sed"], ["speakers_per_batch", "seed"], "m.yaml")
    ... except InputError as err:
    ...     print(err)
    m.yaml: no key sed (overridden with --sed); did you mean --seed?
    """
    problems = []
    for key in keys:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else ""
        problems.append(f"{source}: no key {key} (overridden with --{key}){hint}")
    if problems:
        raise InputError(problems)


_ENCODER_LINE = re.compile(r"^encoder:[ \t]*([^\s#]*)[^\n]*$", re.MULTILINE)


def encoder_names(folder):
    """The encoder yamls of ``folder`` (``NAME.yaml`` -> ``NAME``), sorted."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def compose_recipe(hparams_file, encoder=None):
    """``(text, encoder file or None)``: the recipe file with ``encoders/<encoder>.yaml``
    spliced in after its top-level ``encoder:`` line (``encoder`` None: the line's own
    value). A file with no such line, or one that builds ``embedding_model`` itself (a
    copy :func:`recipe_copy` wrote), is returned as it is.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp(); os.mkdir(os.path.join(folder, "encoders"))
    >>> _ = open(os.path.join(folder, "encoders", "tiny.yaml"), "w").write("emb_dim: 8\\n")
    >>> _ = open(os.path.join(folder, "r.yaml"), "w").write("a: 1\\nencoder: tiny\\nb: 2\\n")
    >>> print(compose_recipe(os.path.join(folder, "r.yaml"))[0], end="")
    a: 1
    encoder: tiny   # spliced in: encoders/tiny.yaml
    emb_dim: 8
    b: 2
    """
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    lines = list(_ENCODER_LINE.finditer(text))
    if not lines:
        if encoder is not None:
            raise InputError(f"{hparams_file}: has no top-level encoder: line to override")
        return text, None
    if len(lines) > 1:
        raise InputError(f"{hparams_file}: more than one top-level encoder: line")
    own = lines[0].group(1)
    name = own if encoder is None else str(encoder)
    if re.search(r"^embedding_model:", text, re.MULTILINE):  # complete already (a run's copy)
        if name != own:
            raise InputError(
                f"{hparams_file}: builds encoder {own} itself (a run's copy); --encoder "
                "applies to the recipe files in hparams/"
            )
        return text, None
    folder = Path(hparams_file).parent / "encoders"
    names = encoder_names(folder)
    if name not in names:
        raise InputError(
            f"{hparams_file}: unknown encoder {name!r}; choose one of "
            f"{', '.join(names) or '(none found)'} (the yamls in {folder})"
        )
    path = folder / f"{name}.yaml"
    with open(path, encoding="utf-8") as f:
        spliced = f.read().rstrip("\n")
    try:
        keys = set(read_plain_yaml(spliced)[0] or {})
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    both = keys & set(read_plain_yaml(text)[0] or {})  # its YAML errors name hparams_file
    if both:
        raise InputError(
            f"{hparams_file}: defines {', '.join(sorted(both))}, which the encoder file "
            f"{path} defines too; keep them in one of the two"
        )
    line = f"encoder: {name}   # spliced in: encoders/{name}.yaml\n"
    return text[: lines[0].start()] + line + spliced + text[lines[0].end() :], path


def recipe_copy(hparams_file, overrides, folder):
    """The recipe file to give ``sb.create_experiment_directory``: ``hparams_file`` itself,
    or, when an encoder yaml is spliced in, that text written to
    ``folder/<name>.<encoder>.yaml`` (on the main process; its path is returned on every
    process). ``overrides``: the text :func:`load_recipe_hparams` returned."""
    from speechbrain.utils.distributed import if_main_process

    given = (read_plain_yaml(overrides)[0] if overrides else None) or {}
    text, encoder_file = compose_recipe(hparams_file, given.get("encoder"))
    if encoder_file is None:
        return str(hparams_file)
    path = Path(folder) / f"{Path(hparams_file).stem}.{encoder_file.stem}.yaml"
    if if_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return str(path)


def _making_folder(err):
    """Whether ``err`` is an ``OSError`` of making a folder (read-only, no such parent,
    not permitted, a file in the way, ...)."""
    if not isinstance(err, OSError) or err.filename is None:
        return False
    if isinstance(err, (NotADirectoryError, FileExistsError, PermissionError)):
        return True
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("makedirs", "mkdir"):
            return True
        tb = tb.tb_next
    return False


def load_recipe_hparams(hparams_file, overrides="", losses=None):
    """``(hparams, overrides)``: the loaded recipe and the overrides it was loaded with
    (the built-in scale merged in; give them to ``sb.create_experiment_directory``).

    ``overrides`` is the YAML text ``sb.parse_arguments`` returns; ``losses`` the valid
    ``loss_name`` values (default: ``maskproxy_losses.LOSSES``).
    """
    from hyperpyyaml import load_hyperpyyaml

    if losses is None:
        from maskproxy_losses.losses import LOSSES as losses
    try:
        given = (read_plain_yaml(overrides)[0] if overrides else None) or {}
        text, encoder_file = compose_recipe(hparams_file, given.get("encoder"))
        raw, _ = read_plain_yaml(text)
    except yaml.YAMLError as err:
        raise InputError(f"{hparams_file}: not valid YAML ({str(err).splitlines()[0]})") from None
    if encoder_file is not None:
        logger.info("encoder: %s (%s)", raw.get("encoder"), encoder_file)
    check_override_keys(given, raw, hparams_file)
    loss_name = given.get("loss_name", raw.get("loss_name"))
    if loss_name is not None and loss_name not in losses:
        raise InputError(
            f"{hparams_file}: unknown loss_name {loss_name!r}; choose one of "
            f"{', '.join(sorted(losses))}"
        )
    scale = {}
    if given.get("builtin_corpus", raw.get("builtin_corpus")):
        for key, value in (raw.get("builtin") or {}).items():
            if key not in given:
                logger.info(
                    "built-in corpus: %s = %s (VoxCeleb setting: %s)", key, value, raw.get(key)
                )
                scale[key] = value
    problems = check_values({**raw, **scale, **given})
    if problems:
        raise InputError(problems)
    # The command line's own text stays as HyperPyYAML reads it (YAML 1.2: 1e30 is a float).
    merged = "\n".join(
        part for part in (overrides or "", yaml.safe_dump(scale) if scale else "") if part
    )
    try:
        return load_hyperpyyaml(text, merged), merged
    except InputError:
        raise
    except Exception as err:  # a constructor refusing its arguments, a bad !ref, ...
        if _making_folder(err):  # folders made on load (the checkpointer's): any reason
            raise InputError(
                f"{err.filename}: cannot create this folder ({err.strerror}); "
                "check output_folder and the other paths"
            ) from None
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(
            f"{hparams_file}: cannot build the recipe from it and the overrides "
            f"({type(err).__name__}: {detail})"
        ) from None

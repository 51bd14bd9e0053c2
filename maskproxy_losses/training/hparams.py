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

Example
-------
>>> data, tags = read_plain_yaml("a: !ref <b>\\nb: 1\\n")
>>> data, tags
({'a': '<b>', 'b': 1}, [('!ref', 1)])
"""

import difflib
import logging

import yaml

from maskproxy_losses.training.options import check_values
from maskproxy_losses.utils.errors import InputError

__all__ = ["read_plain_yaml", "read_tagged_yaml", "check_override_keys", "load_recipe_hparams"]

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


def load_recipe_hparams(hparams_file, overrides="", losses=None):
    """``(hparams, overrides)``: the loaded recipe and the overrides it was loaded with
    (the built-in scale merged in; give them to ``sb.create_experiment_directory``).

    ``overrides`` is the YAML text ``sb.parse_arguments`` returns; ``losses`` the valid
    ``loss_name`` values (default: ``maskproxy_losses.LOSSES``).
    """
    from hyperpyyaml import load_hyperpyyaml

    if losses is None:
        from maskproxy_losses.losses import LOSSES as losses
    with open(hparams_file, encoding="utf-8") as f:
        text = f.read()
    try:
        raw, _ = read_plain_yaml(text)
        given = (read_plain_yaml(overrides)[0] if overrides else None) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{hparams_file}: not valid YAML ({str(err).splitlines()[0]})") from None
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
    except (NotADirectoryError, FileExistsError, PermissionError) as err:  # folders made on load
        raise InputError(
            f"{err.filename}: cannot create this folder ({err.strerror}); "
            "check output_folder and the other paths"
        ) from None
    except InputError:
        raise
    except Exception as err:  # a constructor refusing its arguments, a bad !ref, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(
            f"{hparams_file}: cannot build the recipe from it and the overrides "
            f"({type(err).__name__}: {detail})"
        ) from None

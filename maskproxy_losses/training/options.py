"""The training recipe's command line and environment, checked before any work.

- :func:`split_arguments`: SpeechBrain's ``parse_arguments`` after these fixes: an option
  given twice is refused in one line (SpeechBrain would hand YAML a duplicate key and
  fail with a traceback), ``--precision auto`` (the yamls' default, which SpeechBrain's
  parser does not accept) becomes the yaml override ``precision: auto``, SpeechBrain's
  on/off run options (``--compile``) also take ``True`` / ``False`` as every other
  option of the recipe does, its parser's errors (``--precision fp8``, ``--max_grad_norm
  abc``) are one ``InputError`` instead of argparse's usage text, and its run options
  that a bad value breaks are range-checked (:data:`RUN_OPTION_RULES`;
  ``--optimizer_step_limit``, a string for SpeechBrain's parser, becomes an integer).
- :func:`check_values`: value ranges of the recipe's settings, read from the plain YAML
  and the overrides *before* HyperPyYAML builds anything (``--number_of_epochs 0`` would
  otherwise divide by zero in ``ap.yaml``'s decay, or export an untrained model).
- :func:`check_device`: the device exists here and supports the precision.

Every problem is an :class:`~maskproxy_losses.utils.errors.InputError` naming the option.

Example
-------
>>> split_arguments(["mp.yaml", "--precision", "auto", "--seed", "3"])[2]
'seed: 3\\nprecision: auto'
>>> split_arguments(["mp.yaml", "--compile", "True"])[1].compile
True
>>> try:
...     split_arguments(["mp.yaml", "--lr", "0.1", "--lr=0.2"])
... except InputError as err:
...     print(err)
--lr is given twice (0.1 and 0.2); give each option once
>>> try:
...     split_arguments(["mp.yaml", "--precision", "fp8"])
... except InputError as err:
...     print(err)
--precision fp8: must be one of fp32, fp16, bf16 or auto
>>> check_values({"lr": "1e-3", "number_of_epochs": 0, "crop_frames": 200})
['--number_of_epochs 0: must be an integer of at least 1']
>>> check_values({"lr": -0.1, "crop_frames": 0})[1][:45]
'--crop_frames 0: must be an integer of at lea'
"""

import dataclasses
import math
import numbers
import re

from speechbrain.utils.run_opts import RunOptions

from maskproxy_losses.data.audio import HOP, MIN_SAMPLES, WIN_EXTRA
from maskproxy_losses.utils.errors import InputError

__all__ = [
    "split_arguments",
    "check_values",
    "check_device",
    "MIN_CROP_FRAMES",
    "RUN_OPTION_RULES",
]

# the shortest crop the front ends and the encoder embed (data.audio.MIN_SAMPLES)
MIN_CROP_FRAMES = max(1, math.ceil((MIN_SAMPLES - WIN_EXTRA) / HOP))


def _given(argv):
    """``[(name, value or None)]`` of the ``--name value`` / ``--name=value`` options."""
    out = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = None if nxt is None or nxt.startswith("--") else nxt
        out.append((name, value))
    return out


def split_arguments(argv):
    """``(hparams file, run options, overrides)`` as ``sb.parse_arguments`` returns them,
    after refusing repeated options and turning ``--precision auto`` into an override."""
    seen, auto = {}, []
    for name, value in _given(argv):
        if name in seen and value is not None:
            raise InputError(
                f"--{name} is given twice ({seen[name]} and {value}); give each option once"
            )
        seen[name] = value
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--precision=auto" or (arg == "--precision" and argv[i + 1 : i + 2] == ["auto"]):
            del argv[i : i + (1 if "=" in arg else 2)]
            auto.append("precision: auto")
            break
    hparams_file, run_opts, overrides = _Parsing.from_command_line_args(_bare_flags(argv))
    run_opts = _check_run_options(run_opts)
    return hparams_file, run_opts, "\n".join(p for p in [overrides, *auto] if p)


class _Parsing(RunOptions):
    """SpeechBrain's ``parse_arguments`` whose parser errors are one ``InputError``."""

    @staticmethod
    def _create_parser():
        parser = RunOptions._create_parser()
        parser.error = _parser_error
        return parser


_ARGPARSE = re.compile(r"argument (--[\w-]+)(?:/\S+)?: (.*)")
_VALUE = re.compile(r"invalid (choice|float value|int value): '(.*?)'")


def _parser_error(message):
    """argparse's error ``message`` as one ``InputError`` naming the option and value."""
    match = _ARGPARSE.fullmatch(message)
    if match is None:
        if "param_file" in message:
            message = "no hparams file given: the first argument is the recipe's yaml"
        raise InputError(message)
    option, what = match.groups()
    value = _VALUE.match(what)
    if value is None:  # "expected one argument"
        raise InputError(f"{option}: {what}")
    kind, given = value.groups()
    must = {"float value": "a number", "int value": "an integer"}.get(kind)
    if must is None:  # the precision options' choices
        must = "one of fp32, fp16, bf16" + (" or auto" if option == "--precision" else "")
    raise InputError(f"{option} {given}: must be {must}")


def _check_run_options(run_opts):
    """``run_opts`` with ``optimizer_step_limit`` an integer; ``InputError`` listing every
    given run option out of its range (:data:`RUN_OPTION_RULES`)."""
    given = run_opts.overridden_args
    limit = run_opts.optimizer_step_limit
    if limit is not None:
        run_opts = dataclasses.replace(run_opts, optimizer_step_limit=_yaml12(limit))
    problems = [
        f"--{key} {run_opts[key]}: must be {what}"
        for key, (test, what) in RUN_OPTION_RULES.items()
        if key in given and not test(run_opts[key])
    ]
    both = {"ckpt_interval_minutes", "ckpt_interval_steps"}
    if both <= given and run_opts.ckpt_interval_minutes > 0 and run_opts.ckpt_interval_steps > 0:
        problems.append(
            f"--ckpt_interval_minutes {run_opts.ckpt_interval_minutes} --ckpt_interval_steps "
            f"{run_opts.ckpt_interval_steps}: give one of them"
        )
    if problems:
        raise InputError(problems)
    return run_opts


def _bare_flags(argv):
    """``argv`` with SpeechBrain's on/off run options given as ``--flag True`` / ``--flag
    False`` (or ``=``) spelt as SpeechBrain takes them: ``--flag`` or nothing."""
    from speechbrain.utils.run_opts import RunOptions

    flags = {k for k, v in RunOptions().as_dict().items() if v is False}
    out, argv = [], list(argv)
    while argv:
        arg = argv.pop(0)
        name, eq, value = arg.partition("=")
        key = name[2:].replace("-", "_") if name.startswith("--") else None
        if key in flags and not eq and argv and argv[0].lower() in ("true", "false"):
            value, eq = argv.pop(0), "="
        if key in flags and eq:
            if value.lower() not in ("true", "false"):
                raise InputError(f"{name}: expected True or False, got {value!r}")
            arg = name if value.lower() == "true" else None
        if arg is not None:
            out.append(arg)
    return out


_YAML12_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _yaml12(value):
    """``value`` as HyperPyYAML (YAML 1.2) reads it: ``1e30`` is a float there, a string
    for PyYAML's safe loader (YAML 1.1), which read the plain settings."""
    if isinstance(value, str) and _YAML12_NUMBER.fullmatch(value.strip()):
        text = value.strip()
        return float(text) if any(c in text for c in ".eE") else int(text)
    return value


def _number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# key: (test, what it must be); a key absent from a yaml, or given as a !ref, is skipped
_RULES = {
    "lr": (lambda v: _number(v) and v > 0, "a number above 0"),
    "final_lr": (lambda v: _number(v) and v > 0, "a number above 0"),
    "number_of_epochs": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "crop_frames": (
        lambda v: _integer(v) and v >= MIN_CROP_FRAMES,
        f"an integer of at least {MIN_CROP_FRAMES} (a crop of F frames is F * {HOP} + "
        f"{WIN_EXTRA} samples; the model needs {MIN_SAMPLES})",
    ),
    "speakers_per_batch": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "max_per_speaker": (lambda v: v is None or (_integer(v) and v >= 2), "an integer >= 2"),
    "num_workers": (
        lambda v: v == "auto" or (_integer(v) and v >= 0),
        "auto or an integer of at least 0",
    ),
    "log_every": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "valid_every": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "emb_dim": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "n_mels": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "seed": (_integer, "an integer"),
    "dev_share": (lambda v: _number(v) and v >= 0, "a share in [0, 1) or a count"),
    "n_dev_trials": (lambda v: _integer(v) and v >= 2, "an integer of at least 2"),
    "augment_prob": (lambda v: _number(v) and 0 <= v <= 1, "a share in [0, 1]"),
    "average_checkpoints": (lambda v: _integer(v) and v >= 0, "an integer of at least 0"),
    "ckpt_interval_minutes": (lambda v: _number(v) and v >= 0, "a number of at least 0"),
    "warmup_epochs": (lambda v: _number(v) and v >= 0, "a number of at least 0"),
}
# SpeechBrain's run options (command line, or yaml keys) whose bad values break a run: 0
# accumulation steps divide by zero, negative ones or a gradient norm <= 0 turn the update
# around or off, a step limit below 1 trains nothing, a negative interval saves nothing.
RUN_OPTION_RULES = {
    "grad_accumulation_factor": (lambda v: _integer(v) and v >= 1, "an integer of at least 1"),
    "max_grad_norm": (lambda v: _number(v) and v > 0, "a number above 0"),
    "optimizer_step_limit": (
        lambda v: v is None or (_integer(v) and v >= 1),
        "an integer of at least 1",
    ),
    "ckpt_interval_minutes": _RULES["ckpt_interval_minutes"],
    "ckpt_interval_steps": (lambda v: _integer(v) and v >= 0, "an integer of at least 0"),
}
_RULES.update(RUN_OPTION_RULES)


def check_values(settings):
    """The problems (``--key value: must be ...``) of the plain ``settings`` (a mapping
    of the yaml's top-level keys, overrides applied)."""
    settings = {key: _yaml12(value) for key, value in settings.items()}
    problems = []
    for key, (test, what) in _RULES.items():
        value = settings.get(key)
        if key not in settings or (isinstance(value, str) and "<" in value):
            continue  # not in this yaml, or derived (!ref): checked where it comes from
        if isinstance(value, dict):  # computed (!apply: its arguments): checked there
            continue
        if not test(value):
            problems.append(f"--{key} {value}: must be {what}")
    share = settings.get("dev_share")
    if _number(share) and not _integer(share) and share >= 1:
        problems.append(f"--dev_share {share}: a share must be below 1 (or give a count: 3)")
    low, high = settings.get("snr_low"), settings.get("snr_high")
    if _number(low) and _number(high) and low > high:
        problems.append(f"--snr_low {low} --snr_high {high}: snr_low must not exceed snr_high")
    utts = settings.get("utts_per_speaker")
    most = settings.get("max_per_speaker")
    if _integer(utts) and _integer(most) and most < utts:
        problems.append(f"--max_per_speaker {most}: must be at least utts_per_speaker ({utts})")
    return problems


def check_device(device, precision):
    """Raise ``InputError`` unless ``device`` (a torch device string, or None for
    SpeechBrain's choice) exists here and runs ``precision`` (fp32 / bf16 / fp16)."""
    import torch

    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}: not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device}: CUDA is not available on this machine; leave --device "
                "out (or give --device cpu) to train on the CPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s) (cuda:0 ...)"
            )
    elif dev.type != "cpu":
        raise InputError(f"--device {device}: the recipe trains on cpu or cuda devices")
    if precision == "fp16" and dev.type != "cuda":
        raise InputError(
            f"--precision fp16: float16 training needs a CUDA device (its gradient scaler), "
            f"not {device}; use --precision bf16, fp32 or auto"
        )

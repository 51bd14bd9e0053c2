"""What every ``maskproxy`` sub-command shares: the parser, value types and common options.

One convention for every command: options are spelled with dashes (``--train-root``); the
underscore spelling of an option (``--train_root``) is still accepted with a deprecation
note; usage errors are one ``error:`` line naming the command's ``--help``, exit code 2.

Example
-------
>>> normalize_options(["--dev_share", "3", "--seed=1", "x_y"], {"--dev-share", "--seed"})
(['--dev-share', '3', '--seed=1', 'x_y'], ['--dev_share'])
>>> positive_int("3"), probability("0.01")
(3, 0.01)
"""

import argparse
import os
import sys

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import check_not_input, check_writable_dir

__all__ = [
    "PROG",
    "Parser",
    "normalize_options",
    "positive_int",
    "non_negative_int",
    "number",
    "probability",
    "add_model_options",
    "add_debug",
    "check_output",
]

PROG = "maskproxy"


class Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and exit code 2, like every other bad input."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def normalize_options(argv, known):
    """``(argv, renamed)``: each ``--a_b`` whose dashed spelling ``--a-b`` is in ``known``
    rewritten to it (also in ``--a_b=value``); ``renamed`` lists the old spellings."""
    out, renamed = [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        dashed = name.replace("_", "-")
        if arg.startswith("--") and "_" in name and dashed in known:
            renamed.append(name)
            arg = dashed + eq + value
        out.append(arg)
    return out, renamed


def _checked(convert, test, what):
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        problem = test(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = what.split()[-1]
    return parse


positive_int = _checked(int, lambda v: v < 1 and "must be at least 1", "an integer")
non_negative_int = _checked(int, lambda v: v < 0 and "must be at least 0", "an integer")
number = _checked(float, lambda v: v != v and "must be a number", "a number")
probability = _checked(float, lambda v: not 0.0 < v < 1.0 and "must be in (0, 1)", "a number")


def add_debug(parser):
    """``--debug``: the traceback of an error instead of the one-line message."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of an error instead of one 'error:' line (also MASKPROXY_DEBUG=1)",
    )


def add_model_options(parser, device=True, precision=True):
    """``MODEL_DIR``, ``--trust-model-dir`` and (optionally) ``--device`` / ``--precision``."""
    parser.add_argument(
        "model_dir",
        metavar="MODEL_DIR",
        help="a model directory (hyperparams.yaml + embedding_model.ckpt) written by the "
        "training recipe, the export or the converter",
    )
    parser.add_argument(
        "--trust-model-dir",
        action="store_true",
        help="load a hyperparams.yaml that names code the export never writes (only for a "
        "directory whose author you trust)",
    )
    if device:
        parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    if precision:
        parser.add_argument(
            "--precision",
            default="auto",
            choices=["auto", "fp32", "bf16"],
            help="auto (default): bfloat16 autocast where the CPU / GPU does it natively, "
            "else fp32",
        )


def check_output(path, inputs=(), listed=()):
    """Refuse an output that is a folder, lies in a folder that cannot be written or would
    overwrite an input of the run (``inputs``: ``(path, what)`` pairs; ``listed``: the
    audio files of a list, see :func:`~maskproxy_losses.utils.files.check_not_input`);
    make its folder."""
    if os.path.isdir(path):
        raise InputError(f"{path}: --output is a directory, expected a file name")
    check_not_input(path, [(p, what) for p, what in inputs if p], listed=listed, what="audio file")
    folder = os.path.dirname(str(path)) or "."
    check_writable_dir(folder, "output folder")
    os.makedirs(folder, exist_ok=True)

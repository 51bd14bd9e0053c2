"""The ``maskproxy`` command: one entry point for every job, one convention for all of them.

::

    maskproxy prepare --train-root vox2/dev/aac --train-list train.txt --output-dir manifests
    maskproxy embed MODEL_DIR --wav-list wavs.txt --output emb.npz
    maskproxy verify MODEL_DIR a.wav b.wav
    maskproxy --help | --version;  maskproxy COMMAND --help

``python -m maskproxy_losses ...`` is the same command. Every sub-command answers
``--help`` and ``--version``; options are spelled with dashes (the underscore spelling
still works, with a note); bad input or a bad environment ends in one ``error:`` line and
exit code 2 (``--debug`` or ``MASKPROXY_DEBUG=1``: the traceback instead), Ctrl-C in exit
code 130. Each sub-command lives in a module of this package and is imported only when
it runs, so ``maskproxy --help`` and the data-preparation commands start without torch.

Example
-------
>>> main(["--version"])  # doctest: +ELLIPSIS
maskproxy ...
0
>>> main(["idenitfy", "model"])  # stderr: "... did you mean 'identify'? ..."
2
"""

import difflib
import importlib
import os
import sys
from typing import NamedTuple

from maskproxy_losses.cli.common import PROG, Parser, add_debug, normalize_options
from maskproxy_losses.utils.errors import run_cli

__all__ = ["COMMANDS", "ALIASES", "main", "console"]


class Command(NamedTuple):
    module: str  # under maskproxy_losses.cli; its build(name, parser) returns run(args)
    summary: str


COMMANDS = {
    "prepare": Command("prepare", "VoxCeleb-style lists or trees -> SpeechBrain manifests"),
    "transcode": Command("transcode", "any audio tree (VoxCeleb2 m4a) -> 16 kHz mono wav"),
    "demo-corpus": Command("demo_corpus", "write the built-in synthetic corpus"),
    "shards": Command("shards", "a training manifest -> WebDataset tar shards"),
    "embed": Command("embed", "embed audio files into an .npz (paths, embeddings)"),
    "extract": Command("extract", "embed millions of files: N resumable processes, Kaldi ark/scp"),
    "enrol": Command("embed", "build speaker models from enrolment utterances"),
    "identify": Command("embed", "rank enrolled speakers for each audio file"),
    "verify": Command("embed", "score two audio files (calibrated LLR and decision)"),
    "calibrate": Command("calibrate", "fit a score calibration on a scored trial list"),
    "convert": Command("convert", "the authors' ResNetSE34L checkpoint -> a model directory"),
    "export-onnx": Command("export_onnx", "a model directory -> one ONNX graph"),
}
ALIASES = {"enroll": "enrol"}


def _version():
    from maskproxy_losses import __version__

    return f"{PROG} {__version__}"


def _usage():
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for each)",
        "",
        "Masked Proxy speaker verification: data preparation, embeddings, scoring, export.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()),
        "",
        "options: -h/--help, -V/--version, --debug (traceback instead of one 'error:' line).",
        "Training and the verification protocol are SpeechBrain recipes: see "
        "recipes/VoxCeleb/MaskProxy/README.md.",
    ]
    return "\n".join(lines)


def _unknown(name, names=(*COMMANDS, *ALIASES), prog=PROG):
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    what = "option" if name.startswith("-") else "command"
    print(f"error: unknown {what} '{name}'{hint} (see {prog} --help)", file=sys.stderr)
    return 2


def build_parser(name):
    """``(parser, run)`` of sub-command ``name`` (an alias is resolved)."""
    name = ALIASES.get(name, name)
    command = COMMANDS[name]
    module = importlib.import_module(f"{__name__}.{command.module}")
    parser = Parser(prog=f"{PROG} {name}", description=command.summary)
    run = module.build(name, parser)
    parser.add_argument("-V", "--version", action="version", version=_version())
    add_debug(parser)
    return parser, run


def main(argv=None):
    """Run ``maskproxy ARGV``; returns the exit status (0, 2 for bad input, 130 Ctrl-C)."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv or os.environ.get("MASKPROXY_DEBUG", "") not in ("", "0")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(_version())
        return 0
    if ALIASES.get(argv[0], argv[0]) not in COMMANDS:
        return _unknown(argv[0])
    parser, run = build_parser(argv[0])
    known = {s for action in parser._actions for s in action.option_strings}
    rest, renamed = normalize_options(argv[1:], known)
    for old in renamed:
        print(f"note: {old} is now spelled {old.replace('_', '-')}", file=sys.stderr)
    for arg in rest:
        if arg.startswith("--") and arg.partition("=")[0] not in known:
            return _unknown(arg.partition("=")[0], sorted(known), parser.prog)

    def go(_):
        return run(parser.parse_intermixed_args(rest))

    return run_cli(go, [], debug=debug)


def console():
    """The ``maskproxy`` console script."""
    sys.exit(main())

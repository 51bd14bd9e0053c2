"""The one command-line layer: every sub-command answers --help and --version, unknown
commands and options get a suggestion, and the console script / ``python -m`` run it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskproxy_losses import __version__
from maskproxy_losses.cli import ALIASES, COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_and_version(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: maskproxy {command} ") and "--debug" in out
    assert main([command, "--version"]) == 0  # before any required option is asked for
    assert capsys.readouterr().out == f"maskproxy {__version__}\n"


def test_top_level_help_version_and_no_arguments(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"maskproxy {__version__}\n"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main([]) == 2 and "usage: maskproxy COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["idenitfy", "m"], "error: unknown command 'idenitfy'; did you mean 'identify'?"),
        (["export_onnx"], "error: unknown command 'export_onnx'; did you mean 'export-onnx'?"),
        (["frobnicate"], "error: unknown command 'frobnicate' (see maskproxy --help)"),
        (["--verbose"], "error: unknown option '--verbose' (see maskproxy --help)"),
        (
            ["calibrate", "s.txt", "--outptu", "c.json"],
            "error: unknown option '--outptu'; did you mean '--output'? "
            "(see maskproxy calibrate --help)",
        ),
    ],
)
def test_unknown_commands_and_options_get_one_line_and_a_suggestion(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == message + "\n" or (err.startswith(message) and err.count("\n") == 1), err


def test_underscore_spelling_still_works_with_a_note(tmp_path, capsys):
    scores = tmp_path / "s.txt"
    scores.write_text("1 0.9\n0 0.1\n1 0.7\n0 0.3\n")
    code = main(["calibrate", str(scores), "--output", str(tmp_path / "c.json"), "--prior=0.3"])
    assert code == 0
    capsys.readouterr()
    assert main(["demo-corpus", "--output_dir", str(tmp_path / "d"), "--utterances", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("note: --output_dir is now spelled --output-dir\nerror: need utter")


def test_enroll_is_an_alias_of_enrol(capsys):
    assert ALIASES == {"enroll": "enrol"}
    assert main(["enroll", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: maskproxy enrol ")


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    import maskproxy_losses.cli.calibrate as calibrate

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate, "run", interrupted)
    monkeypatch.delenv("MASKPROXY_DEBUG", raising=False)
    assert main(["calibrate", "s.txt", "--output", "c.json"]) == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def _installed_script():
    script = Path(sys.executable).with_name("maskproxy")
    return script if script.is_file() else shutil.which("maskproxy")


def test_console_script_and_python_m_run_the_same_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = _installed_script()
    assert script, "no maskproxy script: install the package (./run_tests.sh does: pip install -e)"
    for cmd in ([str(script)], [sys.executable, "-m", "maskproxy_losses"]):
        proc = subprocess.run(
            cmd + ["--version"], capture_output=True, text=True, env=env, timeout=60
        )
        assert (proc.returncode, proc.stdout) == (0, f"maskproxy {__version__}\n")
        proc = subprocess.run(
            cmd + ["identfy"], capture_output=True, text=True, env=env, timeout=60
        )
        assert proc.returncode == 2 and "did you mean 'identify'?" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_help_and_data_prep_commands_start_without_torch():
    code = (
        "import sys; from maskproxy_losses.cli import build_parser;"
        "[build_parser(c) for c in ('prepare', 'demo-corpus', 'transcode', 'calibrate')];"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert proc.stdout == "False\n", proc.stderr

"""One error type for input the user can fix, one report format, one CLI wrapper.

Every command of the project (data preparation, the converter, both recipes, the
deployment tools) raises :class:`InputError` for bad input or a bad environment
(a missing or unreadable file, a read-only output folder, a malformed list line)
and ends through :func:`run_cli`, which prints one ``error: ...`` message and returns
exit code 2. A traceback is printed only with ``--debug`` (or ``MASKPROXY_DEBUG=1``).

Example
-------
>>> err = InputError([f"list.txt:{i}: expected 2 fields, got 3" for i in range(1, 24)])
>>> print(str(err).splitlines()[0])
23 problem(s) in the input:
>>> str(err).splitlines()[-1]
'  ... and 3 more'
>>> print(InputError("trials.txt: not found"))
trials.txt: not found
"""

import os
import re
import sys

__all__ = ["InputError", "MAX_LISTED", "report", "problem_key", "run_cli", "pop_debug_flag"]

MAX_LISTED = 20
_WHERE = re.compile(r"(.+?):(\d+): ")


def report(problems, limit=MAX_LISTED):
    """One problem as is; several as a count, the first ``limit``, then a count of the rest."""
    problems = list(problems)
    if len(problems) == 1:
        return problems[0]
    lines = [f"{len(problems)} problem(s) in the input:"]
    lines += [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def problem_key(problem):
    """Sort key ``(file, line)`` of a ``file:line: what`` report line."""
    match = _WHERE.match(problem)
    return (match[1], int(match[2])) if match else (problem, 0)


class InputError(ValueError):
    """Bad input or environment; ``problems`` holds every ``file:line: what`` line."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(report(self.problems))


def pop_debug_flag(argv):
    """``(argv without --debug, debug)``; ``MASKPROXY_DEBUG=1`` also turns debug on."""
    argv = list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    return argv, debug or os.environ.get("MASKPROXY_DEBUG", "") not in ("", "0")


def _describe(err):
    """The message of an environment error, with the user's path in it."""
    if isinstance(err, OSError) and err.filename is not None:
        what = err.strerror or type(err).__name__
        return f"{err.filename}: {what}"
    if isinstance(err, UnicodeDecodeError):
        return (
            f"a file is not UTF-8 text ({err.reason} at byte {err.start} of a block); "
            "--debug shows which"
        )
    return str(err)


def run_cli(main, argv=None, debug=None):
    """Run ``main(argv)`` under the project's one command-line convention; return the exit
    status: ``main``'s (None counts as 0); 2 after one ``error: ...`` line for bad input
    or environment; 130 after a one-line note on Ctrl-C; the code of a ``SystemExit``
    raised inside (argparse's usage errors, ``--help``).

    ``--debug`` in ``argv`` (removed before ``main`` sees it) or ``MASKPROXY_DEBUG=1``
    (or ``debug=True``) lets the exception propagate with its traceback instead. Scripts
    end with ``sys.exit(run_cli(main))``.

    >>> def main(argv):
    ...     raise InputError(f"{argv[0]}: not found")
    >>> run_cli(main, ["list.txt"])
    2
    """
    argv, flag = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    debug = flag if debug is None else debug
    try:
        status = main(argv)
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except (InputError, OSError, UnicodeDecodeError, FloatingPointError) as err:
        if debug:
            raise
        print(f"error: {_describe(err)}", file=sys.stderr)
        return 2
    return 0 if status is None else status

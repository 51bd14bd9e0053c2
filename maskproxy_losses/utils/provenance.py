"""Where the running code comes from: the package version and, in a git checkout, its commit.

Model cards and ONNX metadata record both, so that a model directory says which code
wrote it. The commit is read with ``git`` from the package's own folder; an installed
wheel (no ``.git``) or a machine without git gives ``None``. ``+dirty`` is appended when
tracked files differ from the commit.

Example
-------
>>> from maskproxy_losses import __version__
>>> package_info()["version"] == __version__
True
>>> commit = package_info()["commit"]
>>> commit is None or len(commit.split("+")[0]) == 40
True
"""

import subprocess
from pathlib import Path

__all__ = ["PACKAGE_NAME", "LICENSE", "package_info", "source_commit"]

PACKAGE_NAME = "maskproxy-losses"
LICENSE = "Apache-2.0"


def _git(folder, *args):
    out = subprocess.run(
        ["git", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.strip()


def source_commit(folder=None):
    """The commit of the git checkout holding ``folder`` (default: this package), with
    ``+dirty`` when tracked files were changed; ``None`` outside a checkout."""
    folder = Path(folder or Path(__file__).resolve().parents[1])
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        dirty = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if len(commit) == 40 else None


def package_info():
    """``{"name", "version", "commit", "license"}`` of the running package."""
    from maskproxy_losses import __version__

    return {
        "name": PACKAGE_NAME,
        "version": __version__,
        "commit": source_commit(),
        "license": LICENSE,
    }

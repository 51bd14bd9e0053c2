"""Files that appear complete or not at all, and the clean-up of killed writes.

Every file the project writes goes through a hidden temporary file in the target's
folder (``.tmp-<pid>-...``) renamed into place, with the permissions the umask gives
(``tempfile.mkstemp`` alone would leave 0600). A process killed mid-write leaves only
such a temporary; :func:`remove_stale_temps` (called by the next run of the same
command) removes those of processes that no longer run.

Example
-------
>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> atomic_write_text(os.path.join(folder, "a.txt"), "hello\\n")
>>> open(os.path.join(folder, "a.txt")).read()
'hello\\n'
>>> os.listdir(folder)
['a.txt']
"""

import os
import re
import shutil
import uuid

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "temp_path", "remove_stale_temps", "umask_mode",
    "check_writable",
]

_STALE = re.compile(r"\.(?:tmp|old)-(\d+)-")


def umask_mode(base=0o666):
    """``base`` with the process umask applied (what ``open`` would give a new file)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def temp_path(target, kind="tmp"):
    """A hidden sibling of ``target`` named after this process (``.tmp-<pid>-<hex>-<name>``),
    for a write + rename; ``kind="old"`` names the place an old version is moved aside to."""
    folder, name = os.path.split(os.path.abspath(target))
    return os.path.join(folder, f".{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` via a temporary file in the same folder + ``os.replace``."""
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder):
    """Remove the ``.tmp-<pid>-*`` / ``.old-<pid>-*`` files and folders in ``folder`` whose
    process no longer runs (left by a killed write). Returns the names removed."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        match = _STALE.match(name)
        if not match or _pid_alive(int(match[1])):
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError:
            continue
        removed.append(name)
    return removed


def check_writable(folder, what="output folder"):
    """Create ``folder`` if needed and check a file can be written in it; raise
    ``InputError`` naming it otherwise (before any long work starts)."""
    from maskproxy_losses.errors import InputError

    try:
        os.makedirs(folder, exist_ok=True)
        probe = temp_path(os.path.join(folder, "write-check"))
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except FileExistsError:
        raise InputError(f"{folder}: {what} is an existing file, not a folder") from None
    except NotADirectoryError:
        raise InputError(f"{folder}: {what} lies under a file, not a folder") from None
    except OSError as err:
        raise InputError(f"{folder}: cannot write to the {what} ({err.strerror})") from None

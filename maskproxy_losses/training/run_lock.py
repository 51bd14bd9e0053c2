"""``run.lock``: one training run per output folder.

:class:`RunLock` creates ``<output_folder>/run.lock`` holding the owner's pid, host, start
time (``/proc/<pid>/stat``, so a reused pid is told apart) and command line. A second
run into the folder is refused in one line naming the owner. The lock of a process that
no longer runs on this host (killed, machine rebooted) is taken over with a note; one
from another host is never guessed at (the line says to delete it if that run is gone).
The lock appears complete or not at all (a hard link of a written file; written in
place where the file system has no hard links), and the decision on a lock already
there is taken under ``flock`` of a guard file beside it, so two starts never both take
a stale lock.

Example
-------
>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> lock = RunLock(os.path.join(out, LOCK_FILE))
>>> lock.acquire(); sorted(json.load(open(lock.path)))
['argv', 'host', 'pid', 'start_ticks', 'started']
>>> RunLock(lock.path).acquire()  # the same process (an in-process rerun) takes it again
>>> lock.release(); os.path.exists(lock.path)
False
"""

import json
import os
import socket
import sys
import time

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text, temp_path

__all__ = ["LOCK_FILE", "RunLock"]

LOCK_FILE = "run.lock"


def _start_ticks(pid):
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, ticks):
    """Whether process ``pid`` still runs and is the one that started at ``ticks``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


class RunLock:
    """``run.lock``: created atomically (hard link of a complete file), removed on release."""

    def __init__(self, path):
        self.path = str(path)
        self.mine = None

    def _owner(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self):
        """Take the lock, or raise ``InputError`` naming the run that holds it. Deciding
        on a lock already there (and taking a stale one over) happens under ``flock`` of
        a guard file beside it, so two starts never both take a stale lock."""
        import fcntl

        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "start_ticks": _start_ticks(os.getpid()),
            "argv": sys.argv,
        }
        tmp = temp_path(self.path)
        atomic_write_text(tmp, json.dumps(me))
        guard = os.path.join(os.path.dirname(self.path), f".{LOCK_FILE}.guard")
        try:
            with open(guard, "a") as g:
                try:
                    fcntl.flock(g, fcntl.LOCK_EX)
                except OSError:  # a file system without locks: the check alone
                    pass
                try:
                    self._create(tmp, json.dumps(me))
                except FileExistsError:
                    note = self._refuse_unless_stale(me)
                    os.replace(tmp, self.path)
                    if note:
                        print(f"note: {self.path}: taking over the lock {note}", file=sys.stderr)
            self.mine = me
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)

    def _create(self, tmp, text):
        """The lock as ``tmp``'s hard link (complete when visible), or written in place
        where the file system has no hard links; ``FileExistsError`` when it exists."""
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # e.g. some network or FUSE file systems
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)

    def _refuse_unless_stale(self, me):
        """Raise ``InputError`` when the lock's owner may still run; else say why not."""
        owner = self._owner()
        pid, host = owner.get("pid"), owner.get("host")
        if not isinstance(pid, int):
            return "that is unreadable"
        if host != me["host"]:
            raise InputError(
                f"{self.path}: another run (pid {pid} on host {host}, started "
                f"{owner.get('started')}) writes to this output folder; wait for it, train "
                "into another --output_folder, or delete the lock if that run is gone"
            )
        if pid == me["pid"]:
            return None  # this process (an earlier call in it): taken again quietly
        if _alive(pid, owner.get("start_ticks")):
            raise InputError(
                f"{self.path}: another run (pid {pid}, started {owner.get('started')}) is "
                "writing to this output folder; wait for it to end or train into another "
                "--output_folder"
            )
        return f"of pid {pid}, which no longer runs (started {owner.get('started')})"

    def release(self):
        """Remove the lock if this process still holds it."""
        if self.mine is not None and self._owner().get("pid") == self.mine["pid"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.mine = None

"""``run.lock``: one training run per output folder; :func:`preparing_manifests`,
:func:`check_rewrite`, :func:`hold_manifests`: no manifest folder rewritten under a run.

:class:`RunLock` creates ``<output_folder>/run.lock`` holding the owner's pid, host, start
time (``/proc/<pid>/stat``, so a reused pid is told apart) and command line. A second
run into the folder is refused in one line naming the owner. The lock of a process that
no longer runs on this host (killed, machine rebooted) is taken over with a note; one
from another host is never guessed at (the line says to delete it if that run is gone).
The lock appears complete or not at all (a hard link of a written file; written in
place where the file system has no hard links), and the decision on a lock already
there is taken under ``flock`` of a guard file beside it, so two starts never both take
a stale lock.

A manifest folder has two ``flock`` files: ``.prep.lock``, held exclusively while its
manifests are checked and (re)written (:func:`preparing_manifests`, re-entrant in a
process), and ``.readers.lock``, held shared by each run that trains on them, from its
preparation to its end (:func:`hold_manifests`, with a record in ``.readers/`` naming
the run). A preparation that would rewrite them needs ``.readers.lock`` exclusively
(:func:`check_rewrite`) and is refused, naming a run that reads them, before any long
work; one that finds them current reuses them beside the other runs.

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

import contextlib
import glob
import json
import logging
import os
import socket
import sys
import time

from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import atomic_write_text, temp_path

__all__ = [
    "LOCK_FILE",
    "RunLock",
    "preparing_manifests",
    "check_rewrite",
    "hold_manifests",
    "release_manifests",
]

LOCK_FILE = "run.lock"

logger = logging.getLogger(__name__)


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


# ------------------------------------------------------------ manifest folders
_PREP, _READERS, _RECORDS = ".prep.lock", ".readers.lock", ".readers"
_held = {}  # ("prep", folder): [lock file, depth, made]; ("read", folder): (lock file, record)


def _flock(f, mode):
    """``flock`` ``f``; True when taken, False when another holds it (``LOCK_NB``); a
    file system without locks counts as taken (the checks alone, as for ``run.lock``)."""
    import fcntl

    try:
        fcntl.flock(f, mode)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def _open_locked(path, mode):
    """``path`` opened and ``flock``-ed (``mode``, waiting), checked to be the file at
    ``path`` still (a preparation that made the folder removes its lock files on error)."""
    while True:
        os.makedirs(os.path.dirname(path), exist_ok=True)  # removed by a failed preparation
        f = open(path, "a")
        _flock(f, mode)
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                return f
        except FileNotFoundError:
            pass
        f.close()


@contextlib.contextmanager
def preparing_manifests(folder):
    """Hold ``folder``'s ``.prep.lock`` exclusively (waiting for another preparation);
    a folder made here that holds only lock files at the end (an error) is removed."""
    import fcntl

    folder = os.path.realpath(folder)
    key = ("prep", folder)
    if key in _held:  # re-entered in this process
        _held[key][1] += 1
    else:
        made = not os.path.isdir(folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, _PREP)
        with open(path, "a") as f:
            busy = not _flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if busy:
            logger.info("%s: waiting for another data preparation in it", folder)
        _held[key] = [_open_locked(path, fcntl.LOCK_EX), 1, made]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            f, _, made = _held.pop(key)
            if made and set(os.listdir(folder)) <= {_PREP, _READERS}:
                for name in (_READERS, _PREP):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            f.close()


def _readers(folder):
    """The records of the runs that may read ``folder`` (those of dead processes on this
    host are removed)."""
    out, host = [], socket.gethostname()
    for path in sorted(glob.glob(os.path.join(folder, _RECORDS, "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("host") == host and not _alive(pid, record.get("start_ticks")):
            with contextlib.suppress(OSError):
                os.remove(path)
            continue
        out.append(record)
    return out


def check_rewrite(folder):
    """Raise ``InputError`` naming a run that trains on the manifests of ``folder``, which
    a preparation is about to rewrite (call inside :func:`preparing_manifests`)."""
    import fcntl

    folder = os.path.realpath(folder)
    release_manifests(folder)  # an earlier run of this process: over
    with open(os.path.join(folder, _READERS), "a") as f:
        if _flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return  # no reader; none can start while .prep.lock is held
    here = socket.gethostname()
    who = [
        f"pid {r['pid']}{'' if r.get('host') == here else ' on ' + str(r.get('host'))}, "
        f"started {r.get('started')}, output folder {r.get('output')}"
        for r in _readers(folder)
    ]
    raise InputError(
        f"{folder}: another run ({who[0] if who else 'unknown'}) trains on these manifests; "
        "preparing them again from other lists or options would change its data. Wait "
        "for it to end, or prepare into another folder (--manifest_folder NEW)"
    )


def hold_manifests(folder, output):
    """Hold ``folder``'s ``.readers.lock`` shared until :func:`release_manifests` or the
    process ends, recorded as read by the run writing to ``output`` (call inside
    :func:`preparing_manifests`)."""
    import fcntl

    folder = os.path.realpath(folder)
    release_manifests(folder)
    f = open(os.path.join(folder, _READERS), "a")
    _flock(f, fcntl.LOCK_SH)
    os.makedirs(os.path.join(folder, _RECORDS), exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_ticks": _start_ticks(os.getpid()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "output": str(output),
    }
    record = os.path.join(folder, _RECORDS, f"{me['host']}-{me['pid']}.json")
    atomic_write_text(record, json.dumps(me))
    _held[("read", folder)] = (f, record)


def release_manifests(folder):
    """Release this process's hold of ``folder`` (:func:`hold_manifests`), if any."""
    held = _held.pop(("read", os.path.realpath(folder)), None)
    if held is not None:
        with contextlib.suppress(OSError):
            os.remove(held[1])
        held[0].close()

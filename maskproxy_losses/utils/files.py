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

import contextlib
import json
import os
import re
import shutil
import uuid

from maskproxy_losses.utils.errors import InputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_chunks",
    "atomic_write_text",
    "atomic_write_lines",
    "atomic_dir",
    "naming_path",
    "temp_path",
    "remove_stale_temps",
    "umask_mode",
    "check_writable_dir",
    "check_not_input",
    "stat_many",
    "utf8_named",
    "text_lines",
    "list_fields",
    "read_format_json",
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
    atomic_write_chunks(path, [data])


def atomic_write_chunks(path, chunks):
    """Write the byte strings ``chunks`` (any iterable, consumed as it is written, so a
    long output never sits whole in memory) to ``path`` via a temporary file in the same
    folder + ``os.replace``; on any error the temporary is removed and ``path`` untouched.
    A write error (a full disk) names ``path``, not the temporary."""
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, umask_mode())
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError):
            raise naming_path(err, tmp, path) from err
        raise


def naming_path(err, tmp, path):
    """``err`` (an OSError) naming the user's ``path`` instead of its temporary ``tmp`` (a
    file inside a temporary folder becomes the same file inside ``path``)."""
    name = err.filename
    if name is None or os.fspath(name) == os.fspath(tmp):
        name = os.fspath(path)
    elif os.fspath(name).startswith(os.fspath(tmp) + os.sep):
        name = os.fspath(path) + os.fspath(name)[len(os.fspath(tmp)) :]
    else:
        return err
    return OSError(err.errno, err.strerror, name)


def atomic_write_text(path, text):
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_lines(path, lines, batch=10000):
    r"""``atomic_write_chunks`` of the text ``lines`` (an iterable of str), UTF-8 encoded
    ``batch`` lines at a time.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "scores.txt")
    >>> atomic_write_lines(path, (f"{i}\n" for i in range(3)), batch=2)
    >>> open(path).read()
    '0\n1\n2\n'
    """

    def chunks():
        part = []
        for line in lines:
            part.append(line)
            if len(part) >= batch:
                yield "".join(part).encode("utf-8")
                part = []
        if part:
            yield "".join(part).encode("utf-8")

    atomic_write_chunks(path, chunks())


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a hidden temporary folder beside ``path`` to fill; on success it is renamed
    to ``path`` (an existing ``path`` is replaced only then), on any error removed. An
    OSError (a full disk, a read-only folder) names ``path`` (or the file inside it), not
    the temporary."""
    path = os.path.abspath(path)
    tmp = temp_path(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        remove_stale_temps(os.path.dirname(path))  # left by a killed write
        os.mkdir(tmp, umask_mode(0o777))
        yield tmp
        if os.path.lexists(path):
            old = temp_path(path, "old")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise naming_path(err, tmp, path) from err
        raise


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


def check_writable_dir(folder, what="output folder"):
    """Raise ``InputError`` naming ``folder`` unless it is a folder this process can write
    to, or can be created as one (its nearest existing ancestor is a writable folder).

    Creates nothing that stays: an existing folder is tested by creating and removing a
    temporary file in it.
    """
    folder = os.path.abspath(folder)
    base = folder
    while not os.path.lexists(base) and os.path.dirname(base) != base:
        base = os.path.dirname(base)
    if not os.path.isdir(base):
        if base == folder:
            raise InputError(
                f"{folder}: the {what} is an existing file, not a folder; pass the path of a folder"
            )
        raise InputError(f"{folder}: cannot create the {what}: {base} is a file, not a folder")
    if base != folder:
        if not os.access(base, os.W_OK | os.X_OK):
            raise InputError(f"{folder}: cannot create the {what}: {base} is not writable")
        return
    test = temp_path(os.path.join(folder, "write-test"))
    try:
        os.close(os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(test)
    except OSError as err:
        raise InputError(
            f"{folder}: the {what} is not writable ({err.strerror}); "
            "choose another folder or fix its permissions"
        ) from err


def _stat(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def stat_many(paths, workers=8, chunk=4096):
    """``(size, mtime_ns)`` of each of ``paths``, or ``None`` where it cannot be stat-ed:
    ``chunk`` files per task in ``workers`` threads (stat releases the GIL; a network file
    system answers several at once), for lists of millions of files.

    >>> stat_many([__file__])[0][0] > 0, stat_many(["/no/such/file"])
    (True, [None])
    """
    from concurrent.futures import ThreadPoolExecutor

    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(workers) as pool:
        return [st for part in pool.map(lambda ps: [_stat(p) for p in ps], parts) for st in part]


def _same(a, b):
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path, folder):
    return os.path.realpath(path).startswith(os.path.join(os.path.realpath(folder), ""))


def check_not_input(output, inputs, option="--output", folder=False, listed=(), what=""):
    """Raise ``InputError`` before any work when writing ``output`` would destroy an input
    of the run: when it is one of ``inputs`` (``(path, what)`` pairs, e.g. ``(list,
    "the wav list")``; the same file after links) or, with ``folder`` (a folder output
    replaced whole), contains one. A model directory is given as its files
    (:func:`~maskproxy_losses.inference.model_dir.model_inputs`): other files beside them
    are the user's.

    ``listed``: the paths of a long list (``what`` names them), compared by name first,
    so millions of entries cost one set lookup each, no file system call.
    """
    out = os.fspath(output)

    def refuse(problem):
        raise InputError(f"{out}: {problem}; choose another {option}")

    for path, kind in inputs:
        path = os.fspath(path)
        if _same(out, path):
            refuse(f"is an input of this run ({kind})")
        if folder and _inside(path, out):
            refuse(f"contains an input of this run ({kind} {path}), which it would replace")
    names = {os.path.basename(out), os.path.basename(os.path.realpath(out))}
    for path in listed:
        if os.path.basename(path) in names and _same(out, path):
            refuse(f"is an input of this run ({what} {path})")


@contextlib.contextmanager
def utf8_named(path):
    """Turn a ``UnicodeDecodeError`` while reading the text file ``path`` into an
    ``InputError`` naming its first line that is not UTF-8 (see :func:`text_lines`)."""
    try:
        yield
    except UnicodeDecodeError as err:
        bad = next((p for _, _, p in text_lines(path) if p), None)
        raise InputError(bad or f"{path}: not UTF-8 text (byte {err.start})") from None


def text_lines(path):
    r"""Yield ``(lineno, text, problem)`` for each line of the UTF-8 text file ``path``.

    A line that is not valid UTF-8 gives ``text`` None and a ``problem`` naming
    ``file:line``; other lines give ``problem`` None. A leading BOM is dropped.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "wb").write(b"a b\ncaf\xe9 x\n")
    >>> [(n, t, p is None) for n, t, p in text_lines(path)]
    [(1, 'a b\n', True), (2, None, False)]
    >>> list(text_lines(path))[1][2].split(": ", 1)[1]
    'not UTF-8 text (byte 0xe9 at column 4); save the list as UTF-8'
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = f"0x{raw[err.start]:02x}"
                yield (
                    lineno,
                    None,
                    (
                        f"{path}:{lineno}: not UTF-8 text (byte {byte} at column "
                        f"{err.start + 1}); save the list as UTF-8"
                    ),
                )
                continue
            yield lineno, text.lstrip("\ufeff") if lineno == 1 else text, None


def list_fields(path, problems):
    r"""Yield ``("file:line", fields)`` for each non-blank line of the list ``path``, split
    on whitespace; lines that are not UTF-8 go to ``problems`` (see :func:`text_lines`).

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "wb").write(b"a b\n\n  c \n")
    >>> [(where.rsplit(":", 1)[1], fields) for where, fields in list_fields(path, [])]
    [('1', ['a', 'b']), ('3', ['c'])]
    """
    for lineno, line, problem in text_lines(path):
        if problem:
            problems.append(problem)
            continue
        fields = line.split()
        if fields:
            yield f"{path}:{lineno}", fields


def read_format_json(path, fmt, what):
    """The JSON object of ``path`` whose ``"format"`` is ``fmt`` (a file the project
    writes, e.g. ``calibration.json``); ``InputError`` naming the file (and line) when it
    is not UTF-8, not JSON or not such a file (``what``: "a calibration file")."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise InputError(f'{path}: not {what} (no "format": "{fmt}")')
    return data

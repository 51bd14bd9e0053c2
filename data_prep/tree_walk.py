"""Walking an audio tree ``root/<spk>/.../<file>`` without being fooled by symbolic links.

Each top-level folder of ``root`` is a speaker's (it may itself be a link, e.g. to another
disk). Inside it, a link is followed only when it resolves inside that speaker's own
folder: a link into another speaker's folder would relabel audio, and a link anywhere
else brings in foreign files, so both are reported as problems and not read. A folder
already walked through another path (a loop, or two paths to one folder) is walked once,
a file already listed through another path is listed once (warnings); two speakers that
are one folder, or one inside the other, are a problem. Hidden entries (``.name``) are
skipped. Links are seen from the directory entries (``os.scandir``), so the walk costs no
extra system call per regular file.

Example
-------
>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> os.makedirs(f"{root}/id1/s0"); os.makedirs(f"{root}/id2/s0")
>>> for p in ("id1/s0/a.wav", "id2/s0/b.wav"):
...     open(f"{root}/{p}", "w").close()
>>> os.symlink(f"{root}/id1", f"{root}/id1/s0/loop")        # a loop: walked once
>>> os.symlink(f"{root}/id2/s0/b.wav", f"{root}/id1/s0/c.wav")  # into another speaker
>>> problems, warnings = [], []
>>> [rel for _, rel in walk_audio(root, (".wav",), problems, warnings)]
['id1/s0/a.wav', 'id2/s0/b.wav']
>>> [p.split(": ", 1)[1][:45] for p in problems]
['a symbolic link out of the speaker folder id1']
>>> [w.split(": ", 1)[1][:36] for w in warnings]
['the folder is already walked through']
"""

import os

__all__ = ["walk_audio"]


def _inside(path, folder):
    """True when the real path ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _speakers(root, exts, problems):
    """``([(name, path, real path)], [top-level audio files])`` of ``root``; speakers that
    are one folder, or one inside another, are reported and left out."""
    speakers, files = [], []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                speakers.append((entry.name, entry.path, os.path.realpath(entry.path)))
            elif entry.name.lower().endswith(exts):
                files.append(entry.path)
    owner, clash = {}, {}
    for name, _, real in speakers:
        owner.setdefault(real, name)
    for name, _, real in speakers:
        if owner[real] != name:
            clash[name] = f"is the folder of speaker {owner[real]} ({real})"
            continue
        up = os.path.dirname(real)
        while os.path.dirname(up) != up:
            if up in owner:
                clash[name] = f"lies inside the folder of speaker {owner[up]} ({up})"
                clash.setdefault(owner[up], f"holds the folder of speaker {name} ({real})")
                break
            up = os.path.dirname(up)
    for name, path, _ in speakers:
        if name in clash:
            problems.append(
                f"{path}: the speaker folder {name} {clash[name]}; a folder must hold one "
                "speaker's audio: not read"
            )
    return [s for s in speakers if s[0] not in clash], files


def walk_audio(root, exts, problems, warnings):
    """Yield ``(path, path relative to root)`` of the files under ``root`` whose names end
    with one of ``exts`` (lower case), speaker folder by speaker folder, sorted; top-level
    files (outside any speaker folder) too. Links are handled as the module says:
    problems go to ``problems`` and notes to ``warnings`` (``path: what`` strings)."""
    speakers, top_files = _speakers(root, exts, problems)
    for path in top_files:
        yield path, os.path.relpath(path, root)
    for name, top, real_top in speakers:
        seen, files, stack = {real_top}, set(), [(top, real_top)]
        while stack:
            folder, real_folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as err:
                problems.append(f"{folder}: cannot list this folder ({err.strerror})")
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                is_dir = entry.is_dir()
                if not is_dir and not entry.name.lower().endswith(exts):
                    continue
                real = (
                    os.path.realpath(entry.path)
                    if entry.is_symlink()
                    else os.path.join(real_folder, entry.name)
                )
                if entry.is_symlink() and not _inside(real, real_top):
                    problems.append(
                        f"{entry.path}: a symbolic link out of the speaker folder {name} "
                        f"(to {real}); not read: copy the audio in, or link the speaker's "
                        "whole folder"
                    )
                elif is_dir and real in seen:
                    warnings.append(
                        f"{entry.path}: the folder is already walked through another path "
                        f"({real}, a symbolic link loop or a second link); walked once"
                    )
                elif is_dir:
                    seen.add(real)
                    subfolders.append((entry.path, real))
                elif not entry.is_file():
                    problems.append(f"{entry.path}: not a readable file (a broken link?)")
                elif real in files:
                    warnings.append(
                        f"{entry.path}: the same file as {real}, already listed; listed once"
                    )
                else:
                    files.add(real)
                    yield entry.path, os.path.relpath(entry.path, root)
            stack.extend(reversed(subfolders))

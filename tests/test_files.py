"""maskproxy_losses.utils.files: umask, stale temporaries, writable folders, UTF-8 lines."""

import errno
import os
import re
import stat
import subprocess
import sys

import pytest

from maskproxy_losses.inference.model_dir import model_inputs
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import (
    atomic_dir,
    atomic_write_text,
    check_not_input,
    check_writable_dir,
    remove_stale_temps,
    temp_path,
    text_lines,
    utf8_named,
)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == mode
    assert os.listdir(tmp_path) == ["a.txt"]


def test_remove_stale_temps_only_of_dead_processes(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f".tmp-{dead.pid}-00000000-a.csv", f".old-{dead.pid}-00000000-b"]
    (tmp_path / stale[0]).write_text("half")
    (tmp_path / stale[1]).mkdir()
    mine = os.path.basename(temp_path(tmp_path / "c.csv"))
    (tmp_path / mine).write_text("being written")
    (tmp_path / "keep.csv").write_text("done")
    assert remove_stale_temps(tmp_path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted([mine, "keep.csv"])


def test_check_writable_dir(tmp_path):
    check_writable_dir(tmp_path)  # existing, writable
    check_writable_dir(tmp_path / "new" / "deeper")  # creatable
    assert os.listdir(tmp_path) == []  # nothing left behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=f"^{tmp_path / 'f'}: the output folder is an existing"):
        check_writable_dir(tmp_path / "f")
    if os.geteuid() != 0:
        os.chmod(tmp_path, 0o555)
        try:
            with pytest.raises(InputError) as info:
                check_writable_dir(tmp_path, "cache folder")
            assert str(info.value) == (
                f"{tmp_path}: the cache folder is not writable "
                f"({os.strerror(errno.EACCES)}); choose another folder "
                "or fix its permissions"
            )
        finally:
            os.chmod(tmp_path, 0o755)


def test_text_lines_names_each_undecodable_line(tmp_path):
    path = tmp_path / "l.txt"
    path.write_bytes("\ufeffa b\n".encode() + b"ok\n\x80x\n" + "é\n".encode())
    assert list(text_lines(path)) == [
        (1, "a b\n", None),
        (2, "ok\n", None),
        (3, None, f"{path}:3: not UTF-8 text (byte 0x80 at column 1); save the list as UTF-8"),
        (4, "é\n", None),
    ]


def test_a_full_disk_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    """Writes to /dev/full fail with ENOSPC, as on a full disk: the error names the file
    the user asked for (not the hidden temporary), and no temporary is left."""
    from maskproxy_losses.utils import files

    real = files.os.fdopen

    def full(fd, mode):
        os.close(fd)
        return real(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(files.os, "fdopen", full)
    target = tmp_path / "scores.txt"
    with pytest.raises(OSError) as err:
        files.atomic_write_lines(target, (f"{i}\n" for i in range(100_000)))
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_check_not_input(tmp_path):
    model, lst, wav = tmp_path / "model", tmp_path / "list.txt", tmp_path / "a.wav"
    model.mkdir()
    for path in (lst, wav):
        path.write_text("x")
    (model / "embedding_model.ckpt").write_text("x")
    inputs = [*model_inputs(model), (lst, "the wav list")]
    check_not_input(tmp_path / "out.npz", inputs, listed=[str(wav)], what="audio file")
    (model / "x.npz").write_text("x")  # the user's file beside the model: a rerun rewrites it
    check_not_input(model / "x.npz", inputs)
    (tmp_path / "link.txt").symlink_to(lst)
    cases = [
        (tmp_path / "link.txt", {}, "is an input of this run (the wav list); choose another"),
        (
            model / "embedding_model.ckpt",
            {},
            "is an input of this run (the model directory's embedding_model.ckpt)",
        ),
        (wav, {"listed": [str(wav)], "what": "audio file"}, f"(audio file {wav})"),
        (
            tmp_path,
            {"folder": True},
            "contains an input of this run (the model directory's hyperparams.yaml",
        ),
    ]
    for out, kwargs, message in cases:
        with pytest.raises(InputError, match=re.escape(f"{out}: ")) as err:
            check_not_input(out, inputs, **kwargs)
        assert message in str(err.value)


def test_atomic_dir_names_the_output_not_its_temporary(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(OSError) as err:
        with atomic_dir(out) as tmp:
            os.symlink("/dev/full", os.path.join(tmp, "weights.bin"))
            with open(os.path.join(tmp, "weights.bin"), "wb") as f:
                f.write(b"x" * 100000)
                f.flush()
    assert err.value.errno == errno.ENOSPC
    assert err.value.filename in (str(out), str(out / "weights.bin")), err.value.filename
    assert os.listdir(tmp_path) == []


def test_utf8_named_names_the_file_and_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"ID,wav\na,\xff.wav\n")
    with pytest.raises(InputError) as err:
        with utf8_named(path), open(path, encoding="utf-8") as f:
            f.read()
    assert str(err.value).startswith(f"{path}:2: not UTF-8 text (byte 0xff at column 3)")

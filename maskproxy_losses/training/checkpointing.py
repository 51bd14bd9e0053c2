"""A SpeechBrain Checkpointer whose checkpoints appear complete or not at all, and whose
recovery survives damaged ones.

SpeechBrain's ``Checkpointer`` writes a checkpoint's ``CKPT.yaml`` first and the
parameter files after it, and recovery takes any ``CKPT+*`` folder holding a
``CKPT.yaml`` for a checkpoint. A process killed between the two (``kill -9``, a
node failure) leaves a folder that recovery picks as the newest and then fails on,
so the run cannot resume. Here the meta file is written under a temporary name and
renamed into place after every parameter file is saved: an interrupted save leaves
a folder that recovery ignores, and the previous checkpoint is used.

:class:`AtomicCheckpointer` also

- checks the free space before each save (the checkpoint's tensors, measured from the
  objects it saves) and when a run starts (in :meth:`~AtomicCheckpointer.recover_if_possible`,
  before any training), so a full disk stops the run in one line naming the folder and
  the space needed, not after an epoch of work;
- turns a failed save (disk full, an I/O error) into one line naming the checkpoint
  folder, and removes that partial folder;
- recovers from the newest *intact* checkpoint: a checkpoint whose files do not load
  (truncated, corrupted, not weights-only: a pickle that would run code is refused by
  ``torch.load``) is moved aside to ``damaged+CKPT+...`` with a warning and the next one
  is tried, with nothing of the damaged one kept (the data loader's intra-epoch position
  is forgotten: the end-of-epoch load that follows would not reset it); when none
  loads, one line names the damaged file. A ``CKPT.yaml`` that is not a checkpoint's
  meta is skipped the same way.

Under DDP every process waits until the main one has renamed the meta file: each
process then lists the same checkpoints in ``save_and_keep_only`` (SpeechBrain runs one
collective per deleted checkpoint; without the wait a non-main process could miss the
new checkpoint, count other deletions and hang the run).

Example
-------
>>> import tempfile, torch
>>> model = torch.nn.Linear(2, 2)
>>> ckpt = AtomicCheckpointer(tempfile.mkdtemp(), recoverables={"model": model})
>>> sorted(p.name for p in ckpt.save_checkpoint().path.iterdir())
['CKPT.yaml', 'model.ckpt']
>>> ckpt.checkpoint_bytes() >= 6 * 4  # 2 x 2 weights and 2 biases, float32
True
"""

import logging
import os
import pathlib
import shutil

import torch
import yaml
from speechbrain.utils.checkpoints import (
    DEFAULT_LOAD_HOOKS,
    METAFNAME,
    Checkpoint,
    Checkpointer,
    get_default_hook,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from maskproxy_losses.utils.errors import InputError

__all__ = ["AtomicCheckpointer", "DamagedCheckpoint", "load_weights"]

logger = logging.getLogger(__name__)

PENDING = METAFNAME + ".pending"
DAMAGED = "damaged+"
_OVERHEAD = 64 << 10  # per saved file: headers, names, the small recoverables


class DamagedCheckpoint(Exception):
    """A checkpoint file that does not load: ``path`` and ``why``."""

    def __init__(self, path, why):
        self.path, self.why = path, why
        super().__init__(f"{path}: {why}")


def _tensor_bytes(state):
    total, stack = 0, [state]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def _why(err):
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _mb(n):
    return f"{n / 1e6:.1f} MB"


class AtomicCheckpointer(Checkpointer):
    """``speechbrain.utils.checkpoints.Checkpointer`` with an atomic, space-checked save
    and a recovery that falls back past damaged checkpoints (see the module)."""

    _saving = None

    # ------------------------------------------------------------------ saving
    def _new_checkpoint_dirpath(self):
        self._saving = super()._new_checkpoint_dirpath()
        return self._saving

    def _custom_checkpoint_dirpath(self, name):
        self._saving = super()._custom_checkpoint_dirpath(name)
        return self._saving

    def _save_checkpoint_metafile(self, fpath, meta=None, end_of_epoch=True):
        return super()._save_checkpoint_metafile(
            pathlib.Path(fpath).with_name(PENDING), meta or {}, end_of_epoch
        )

    def checkpoint_bytes(self):
        """About the bytes a checkpoint of the recoverables takes: their tensors (the
        optimiser's state included) plus a small overhead per file. Before its first step
        an optimiser has no state yet: two buffers per parameter are counted (Adam's;
        SGD's momentum needs one), so the check at the start is not too lenient."""
        total = 0
        for obj in self.recoverables.values():
            state = obj.state_dict() if callable(getattr(obj, "state_dict", None)) else None
            total += _tensor_bytes(state) + _OVERHEAD
            if isinstance(obj, torch.optim.Optimizer) and not obj.state:
                params = [p for group in obj.param_groups for p in group["params"]]
                total += 2 * _tensor_bytes(params)
        return total

    def check_space(self):
        """Raise ``InputError`` when the checkpoint folder's disk lacks the space of one
        more checkpoint (plus a tenth; main process only)."""
        if not if_main_process():
            return
        folder = self.checkpoints_dir
        folder.mkdir(parents=True, exist_ok=True)
        need, free = int(self.checkpoint_bytes() * 1.1), shutil.disk_usage(folder).free
        if free < need:
            raise InputError(
                f"{folder}: {_mb(free)} free on its disk, a checkpoint needs about "
                f"{_mb(need)}; free some space (or train into another --output_folder) and "
                "run the same command again: it resumes from the last checkpoint"
            )

    def save_checkpoint(self, *args, **kwargs):
        """Save as SpeechBrain does, then make the checkpoint visible (main process).
        Checks the free space first; a failed save removes its folder and is one line."""
        self.check_space()
        self._saving = None
        try:
            checkpoint = super().save_checkpoint(*args, **kwargs)
            if checkpoint is not None:
                os.replace(checkpoint.path / PENDING, checkpoint.path / METAFNAME)
        except Exception as err:
            folder = self._saving or self.checkpoints_dir
            if self._saving is not None and not (self._saving / METAFNAME).exists():
                shutil.rmtree(self._saving, ignore_errors=True)
            free = shutil.disk_usage(self.checkpoints_dir).free
            raise InputError(
                f"{folder}: cannot save a checkpoint ({_why(err)}; {_mb(free)} free on its "
                f"disk, about {_mb(self.checkpoint_bytes())} needed); the partial folder is "
                "removed and the previous checkpoints are kept: fix this and run the same "
                "command again to resume"
            ) from err
        ddp_barrier()  # every process sees the checkpoint before listing checkpoints
        return checkpoint

    # ---------------------------------------------------------------- recovery
    def list_checkpoints(self):
        """The checkpoints whose ``CKPT.yaml`` is a checkpoint's meta; others are skipped
        with a warning."""
        out = []
        for folder in self._list_checkpoint_dirs():
            try:
                with open(folder / METAFNAME, encoding="utf-8") as f:
                    meta = yaml.safe_load(f)
                if not isinstance(meta, dict) or not {"unixtime", "end-of-epoch"} <= set(meta):
                    raise ValueError("not a checkpoint's meta")
            except (OSError, ValueError, yaml.YAMLError) as err:
                logger.warning("ignoring %s: %s", folder / METAFNAME, _why(err))
                continue
            files = {p.stem: p for p in folder.iterdir() if p.suffix == ".ckpt"}
            out.append(Checkpoint(folder, meta, files))
        return out

    def load_checkpoint(self, checkpoint):
        """SpeechBrain's load, each file's failure raised as :class:`DamagedCheckpoint`."""
        saved = self.custom_load_hooks
        wrapped = dict(saved)
        for name, obj in self.recoverables.items():
            hook = saved.get(name) or get_default_hook(obj, DEFAULT_LOAD_HOOKS)
            if hook is not None:
                wrapped[name] = _naming_failures(hook, name)
        self.custom_load_hooks = wrapped
        try:
            super().load_checkpoint(checkpoint)
        except DamagedCheckpoint:
            raise
        except Exception as err:  # a missing parameter file, the meta's fields
            raise DamagedCheckpoint(checkpoint.path, _why(err)) from err
        finally:
            self.custom_load_hooks = saved

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Load the checkpoint SpeechBrain would pick or, when it is damaged, the next
        intact one in the same order (with a warning; the damaged one is moved aside to
        ``damaged+CKPT+...``); then check the space for the next save. One line names
        the damaged file when no checkpoint loads."""
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate)
        damaged = []
        for checkpoint in candidates:
            try:
                self.load_checkpoint(checkpoint)
            except DamagedCheckpoint as err:
                damaged.append((checkpoint.path, err))
                self._forget_partial_load()
                logger.warning(
                    "damaged checkpoint %s (%s); trying the previous one", err.path, err.why
                )
                continue
            for folder, _ in damaged:  # never picked again, nor kept as "the best"
                self._set_aside(folder)
            if damaged:
                logger.warning("resuming from %s instead", checkpoint.path)
            self.check_space()
            return checkpoint
        if damaged:
            err = damaged[0][1]
            raise InputError(
                f"{err.path}: {err.why}; none of the {len(damaged)} checkpoint(s) in "
                f"{self.checkpoints_dir} loads: restore them, or move that folder away to "
                "train from scratch (or train into a new --output_folder)"
            )
        logger.info("Would load a checkpoint here, but none found yet.")
        self.check_space()
        return None

    def _forget_partial_load(self):
        """Undo what a failed load set and the next (end-of-epoch) load would keep: a data
        loader's step to skip to. Every other recoverable is overwritten by the next load."""
        for obj in self.recoverables.values():
            if getattr(obj, "_speechbrain_recovery_skip_to", None) is not None:
                obj._speechbrain_recovery_skip_to = None

    def _set_aside(self, folder):
        if not if_main_process():
            return
        try:
            os.rename(folder, folder.with_name(DAMAGED + folder.name))
        except OSError as err:
            logger.warning("could not move %s aside (%s)", folder, _why(err))


def load_weights(path):
    """The state dict saved at ``path``, read weights-only (tensors, no pickled code);
    anything else is one ``InputError`` naming the file.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.ckpt")
    >>> _ = open(path, "wb").write(b"not a checkpoint")
    >>> try:
    ...     load_weights(path)
    ... except InputError as err:
    ...     print(str(err).split(" (")[0].endswith("not a readable weights-only checkpoint"))
    True
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, a pickle naming code
        raise InputError(f"{path}: not a readable weights-only checkpoint ({_why(err)})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: does not hold a state dict")
    return state


def _naming_failures(hook, name):
    """A load hook whose failures name the file: :class:`DamagedCheckpoint` when the file
    does not load, ``InputError`` when it loads but does not fit ``name`` (a checkpoint of
    other settings: not damage, and no reason to try older ones)."""

    def load(obj, path, *args):
        try:
            return hook(obj, path, *args)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise DamagedCheckpoint(path, _why(err)) from err
            lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise InputError(
                f"{path}: does not fit this run's {name} ({'; '.join(lines[:3])}): the "
                "folder holds a run with other settings; train into a new --output_folder"
            ) from None
        except ValueError as err:
            if "parameter group" not in str(err):  # an optimiser of other parameter groups
                raise DamagedCheckpoint(path, _why(err)) from err
            raise InputError(
                f"{path}: does not fit this run's {name} ({_why(err)}): the folder holds a "
                "run with other settings; train into a new --output_folder"
            ) from None
        except Exception as err:
            raise DamagedCheckpoint(path, _why(err)) from err

    return load

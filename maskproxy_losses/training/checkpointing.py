"""A SpeechBrain Checkpointer whose checkpoints appear complete or not at all.

SpeechBrain's ``Checkpointer`` writes a checkpoint's ``CKPT.yaml`` first and the
parameter files after it, and recovery takes any ``CKPT+*`` folder holding a
``CKPT.yaml`` for a checkpoint. A process killed between the two (``kill -9``, a
node failure) leaves a folder that recovery picks as the newest and then fails on,
so the run cannot resume. Here the meta file is written under a temporary name and
renamed into place after every parameter file is saved: an interrupted save leaves
a folder that recovery ignores, and the previous checkpoint is used.

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
"""

import os
import pathlib

from speechbrain.utils.checkpoints import METAFNAME, Checkpointer
from speechbrain.utils.distributed import ddp_barrier

__all__ = ["AtomicCheckpointer"]

PENDING = METAFNAME + ".pending"


class AtomicCheckpointer(Checkpointer):
    """``speechbrain.utils.checkpoints.Checkpointer`` with an atomic save."""

    def _save_checkpoint_metafile(self, fpath, meta=None, end_of_epoch=True):
        return super()._save_checkpoint_metafile(
            pathlib.Path(fpath).with_name(PENDING), meta or {}, end_of_epoch
        )

    def save_checkpoint(self, *args, **kwargs):
        """Save as SpeechBrain does, then make the checkpoint visible (main process)."""
        checkpoint = super().save_checkpoint(*args, **kwargs)
        if checkpoint is not None:
            os.replace(checkpoint.path / PENDING, checkpoint.path / METAFNAME)
        ddp_barrier()  # every process sees the checkpoint before listing checkpoints
        return checkpoint

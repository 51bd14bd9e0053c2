"""Opt-in per-rank training log for tests and debugging (the recipe's ``batch_trace`` hparam).

With a path prefix ``P``, rank ``R`` appends to ``P.rank<R>`` (opened, written and closed
per line, so a ``kill -9`` loses nothing already logged):

- ``batch <epoch> <step> <rank> <utt_id> ...``: every training step, before its update;
- ``valid <epoch> <rank> <dev EER> <lr used> <next lr>``: the dev EER this rank handed
  to the LR scheduler and what the scheduler made of it;

and :meth:`BatchTrace.save_state` writes ``P.rank<R>.pt``: the state dicts of the modules
after training. With ``None`` every method does nothing.

Example
-------
>>> import os, tempfile
>>> log = BatchTrace(os.path.join(tempfile.mkdtemp(), "log"), rank=0)
>>> log.batch(1, 1, ["u1", "u2"]); log.valid(1, 12.5, 0.2, 0.2)
>>> print(open(log.path).read(), end="")
batch 1 1 0 u1 u2
valid 1 0 12.5 0.2 0.2
"""

import torch

from maskproxy_losses.inference.export import unwrap

__all__ = ["BatchTrace"]


def _rank():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class BatchTrace:
    """Per-rank batch / dev-EER log and final-state dump under the prefix ``prefix``.

    Arguments
    ---------
    prefix : str or None
        Path prefix; None disables the log.
    rank : int or None
        This process's rank; taken from ``torch.distributed`` when None.
    """

    def __init__(self, prefix, rank=None):
        self.rank = _rank() if rank is None else int(rank)
        self.path = None if prefix is None else f"{prefix}.rank{self.rank}"

    def _write(self, *fields):
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(" ".join(map(str, fields)) + "\n")

    def batch(self, epoch, step, ids):
        """Log training step ``step`` of ``epoch`` and its utterance ids."""
        self._write("batch", epoch, step, self.rank, *ids)

    def valid(self, epoch, eer, lr_used, next_lr):
        """Log the dev EER given to the LR scheduler and the learning rates around it."""
        self._write("valid", epoch, self.rank, repr(eer), repr(lr_used), repr(next_lr))

    def save_state(self, modules):
        """Save ``{name: state_dict}`` of ``modules`` (DDP wrappers removed) to ``.pt``."""
        if self.path is not None:
            torch.save({k: unwrap(m).state_dict() for k, m in modules.items()}, self.path + ".pt")

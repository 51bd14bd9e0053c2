"""Training-step statistics kept on the device, read every N steps in one transfer.

A training step that reads a value back to the host (``.item()``, ``float(loss)``, an
``if`` on a tensor) waits for the device to finish everything queued so far, and the
next step cannot be queued meanwhile. :class:`StepLog` keeps each step's values (the
loss, the accuracy, ``w`` / ``b``, the size of the embeddings for the NaN guard) as one
row of a device buffer instead; :meth:`StepLog.read` copies the rows written since the
last read to the host in one transfer (with, when asked, one flag saying whether every
given parameter is finite) and returns them with their step numbers and utterance ids.
The training loop reads every ``N`` steps and before anything that must not see a
non-finite value (a checkpoint, the end of the epoch).

Example
-------
>>> log = StepLog(("loss", "acc"), every=2)
>>> log.record(1, ["u1", "u2"], loss=torch.tensor(2.0), acc=torch.tensor(0.5))
>>> log.due()
False
>>> log.record(2, ["u3", "u4"], loss=torch.tensor(float("nan")), acc=torch.tensor(1.0))
>>> rows, finite = log.read(check=[torch.ones(3)])
>>> [(r.step, r.values["loss"], r.ids) for r in rows], finite
([(1, 2.0, ['u1', 'u2']), (2, nan, ['u3', 'u4'])], True)
>>> log.read()
([], True)
"""

from typing import NamedTuple

import torch

__all__ = ["StepRow", "StepLog", "all_finite"]


class StepRow(NamedTuple):
    """One step's values as read back: ``step``, ``ids`` (the batch's utterances) and
    ``values`` (field -> float)."""

    step: int
    ids: list
    values: dict


def all_finite(tensors):
    """A device boolean: every element of ``tensors`` is finite (one fused norm, no host
    round trip; NaN and Inf both make the norm non-finite)."""
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.nn.utils.get_total_norm(tensors, error_if_nonfinite=False))


class StepLog:
    """Rows of ``fields`` (device scalars) per training step, ``every`` rows between reads.

    :meth:`record` writes a row without a host round trip; :meth:`due` says when ``every``
    rows are waiting; :meth:`read` returns them (one device-to-host transfer).
    """

    def __init__(self, fields, every=50):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.fields, self.every = tuple(fields), int(every)
        self.buffer, self.steps, self.ids = None, [], []

    def __len__(self):
        return len(self.steps)

    def record(self, step, ids, **values):
        """Write step ``step``'s ``values`` (a 0-d tensor per field) and keep its ``ids``."""
        row = torch.stack([values[f].detach().reshape(()).float() for f in self.fields])
        if self.buffer is None or self.buffer.device != row.device:
            self.buffer = torch.empty(self.every, len(self.fields), device=row.device)
        if len(self.steps) == self.every:  # nobody read: keep the newest rows only
            self.buffer = torch.roll(self.buffer, -1, 0)
            del self.steps[0], self.ids[0]
        self.buffer[len(self.steps)].copy_(row)
        self.steps.append(int(step))
        self.ids.append(list(ids) if ids is not None else [])

    def due(self):
        """Whether ``every`` rows wait to be read."""
        return len(self.steps) >= self.every

    def read(self, check=None):
        """``(rows, finite)``: the :class:`StepRow` list since the last read, and whether
        every tensor of ``check`` (e.g. the parameters) is finite (True without any),
        read in one transfer; the log is then empty."""
        parts = []
        if self.steps:
            parts.append(self.buffer[: len(self.steps)].flatten())
        if check is not None:
            flag = all_finite(check)
            parts.append(flag.to(device=parts[0].device if parts else flag.device).float().view(1))
        if not parts:
            return [], True
        flat = torch.cat(parts).tolist() if len(parts) > 1 else parts[0].tolist()
        finite = True
        if check is not None:
            finite, flat = flat[-1] == 1.0, flat[:-1]
        k = len(self.fields)
        rows = [
            StepRow(step, ids, dict(zip(self.fields, flat[i * k : (i + 1) * k])))
            for i, (step, ids) in enumerate(zip(self.steps, self.ids))
        ]
        self.steps, self.ids = [], []
        return rows, finite

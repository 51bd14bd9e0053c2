"""The ``sb.Brain`` plumbing the recipe needs, apart from the recipe's Brain: speaker-grouped
batches under DDP, and a training step that never waits for the device.

:class:`GroupedBatchBrain` overrides these hooks of SpeechBrain 1.1.2's ``Brain``
(``tests/test_brain.py`` checks that the private ones still exist with these
signatures and that SpeechBrain still calls them):

- ``_train_loader_specifics`` (private): :class:`~maskproxy_losses.data.sampler.SpeakerBatchSampler`
  splits its batches across DDP ranks itself; SpeechBrain's generic
  ``DistributedSamplerWrapper`` would pad and reshuffle them. The sharded dataset
  (:class:`~maskproxy_losses.data.shards.ShardedSpeakerBatches`) splits its shards by rank
  and learns the step to resume at through :class:`~maskproxy_losses.data.shards.EpochStart`.
- ``_wrap_distributed`` (private): SpeechBrain converts BatchNorm to SyncBatchNorm, which
  needs GPUs; on CPU the modules are wrapped in plain DDP.
- ``fit_batch`` (public): SpeechBrain's reads the loss back twice per step
  (``check_loss_isfinite`` and ``loss.detach().cpu()``). Here the step's values (those of
  :meth:`GroupedBatchBrain.step_values`) go to a device :class:`StepLog` and the device
  loss is returned.
- ``update_average`` (public): in training, reads the step log every ``log_every`` steps
  (hparam, default 50): the NaN guard (every field of ``guarded`` finite, every
  parameter and buffer finite; else ``FloatingPointError`` naming the epoch, the first
  bad step and its utterances), SpeechBrain's running loss average (the same formula, on
  the host), and a progress line in the log.
- ``_save_intra_epoch_ckpt`` (private): reads the step log first, so no checkpoint is
  written after a non-finite step; :meth:`finish_train_stage` does the same at the end of
  the epoch, before the dev pass.
- ``_save`` / ``_recover`` (the ``brain`` checkpoint file, private): beside SpeechBrain's
  step counters and running loss, the epoch's sums of the step values and the last
  values, so that a resumed epoch reports the statistics of an uninterrupted one.
- ``_should_save_intra_epoch_ckpt`` (private): under DDP, SpeechBrain broadcasts its
  decision from rank 0 at every step (a device round trip with nccl); here a
  ``ckpt_interval_steps`` decision is taken by every rank alike with no collective, and
  a ``ckpt_interval_minutes`` one is asked for every ``log_every`` steps only.
- ``_fit_valid`` (private): the dev pass runs every ``valid_every`` epochs (hparam,
  default 1) and after the last; other epochs call :meth:`on_epoch_without_validation`.
- ``_compile`` (private): with ``--compile True`` (and no ``--compile_module_keys``) the
  whole forward of :meth:`make_train_step` is compiled as one graph in ``on_fit_start``,
  instead of each module apart, with the autocast inside the graph
  (:class:`~maskproxy_losses.training.step.CompiledStep`).

Example
-------
>>> class Brain(GroupedBatchBrain):
...     def compute_forward(self, batch, stage):
...         return self.modules.lin(batch)
...     def compute_objectives(self, outputs, batch, stage):
...         return outputs.square().mean()
>>> brain = Brain({"lin": torch.nn.Linear(2, 1)}, lambda p: torch.optim.SGD(p, lr=0.1),
...               run_opts={"device": "cpu"})
>>> brain.on_fit_start()
>>> brain.step = 1
>>> loss = brain.fit_batch(torch.ones(4, 2))  # the loss stays on the device
>>> len(brain.step_log), brain.finish_train_stage()["loss"] == loss.item()
(1, True)
"""

import logging
import math
import os

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import is_distributed_initialized

from maskproxy_losses.data.sampler import SpeakerBatchSampler
from maskproxy_losses.data.shards import EpochStart, ShardedSpeakerBatches
from maskproxy_losses.training.step import CompiledStep
from maskproxy_losses.training.step_log import StepLog

__all__ = ["GroupedBatchBrain"]

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class GroupedBatchBrain(sb.Brain):
    """``sb.Brain`` that trains on speaker-grouped batches, under DDP on GPUs or CPUs,
    without a host round trip in the training step (see the module)."""

    #: step_values fields that must stay finite (checked in this order)
    guarded = ("loss",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        hparams = getattr(self, "hparams", None)
        self.log_every = int(getattr(hparams, "log_every", 50) or 50)
        self.valid_every = int(getattr(hparams, "valid_every", 1) or 1)
        if self.log_every < 1 or self.valid_every < 1:
            raise ValueError("log_every and valid_every must be >= 1")
        self.step_log, self.train_step = None, None
        self.train_sums, self.last_values, self.embedding_parts = {}, {}, []

    # ---------------------------------------------------------------- the step
    def make_train_step(self):
        """The module run by the training forward (compiled with ``--compile True``), or
        None to compile nothing; override (the recipe returns a ``SpeakerStep``)."""
        return None

    def step_values(self, batch, outputs, loss):
        """Device scalars to log for a training step (``guarded`` fields are checked)."""
        return {"loss": loss}

    def fit_batch(self, batch):
        """One training step as ``sb.Brain.fit_batch`` (gradient accumulation, scaler,
        clipping, optimiser), with no read of the loss: it goes to the step log."""
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        values = self.step_values(batch, outputs, loss.detach())
        if self.step_log is None:
            self.step_log = StepLog(tuple(values), self.log_every)
        self.step_log.record(self.step, getattr(batch, "id", None), **values)
        return loss.detach()

    def update_average(self, loss, avg_loss):
        """Training: read the step log at every ``log_every``-th step of the epoch (else
        nothing is read) and return the running average; other stages: SpeechBrain's."""
        if not self.modules.training:
            return super().update_average(loss, avg_loss)
        if self.step % self.log_every == 0:  # the same steps on every rank
            self.read_step_log()
        return self.avg_train_loss

    def read_step_log(self):
        """Read the step log: check it (``FloatingPointError`` on a non-finite value or
        parameter), add it to the running average and ``train_sums``, log progress."""
        if self.step_log is None:
            return
        checked = [p for p in self.modules.parameters()]
        checked += [b for b in self.modules.buffers() if b.is_floating_point()]
        rows, finite = self.step_log.read(check=checked)
        for row in rows:
            for field in self.guarded:
                if not math.isfinite(row.values[field]):
                    raise FloatingPointError(self._nan_message(f"the {field}", row))
            step, loss = row.step, row.values["loss"]
            self.avg_train_loss -= self.avg_train_loss / step  # sb.Brain.update_average
            self.avg_train_loss += loss / step
            for key, value in [("steps", 1.0), *row.values.items()]:
                self.train_sums[key] = self.train_sums.get(key, 0.0) + value
        if not finite:
            last = rows[-1] if rows else None
            raise FloatingPointError(self._nan_message("the parameters", last))
        if rows:
            self.last_values = rows[-1].values
            extra = ", ".join(f"{k} {v:.4g}" for k, v in self.last_values.items() if k != "loss")
            logger.info(
                "epoch %s step %d: loss %.4f (running average)%s",
                self._epoch(), rows[-1].step, self.avg_train_loss, f"; {extra}" if extra else "",
            )  # fmt: skip

    def _epoch(self):
        counter = getattr(getattr(self, "hparams", None), "epoch_counter", None)
        return getattr(counter, "current", "?")

    def _nan_message(self, what, row):
        where = f"at epoch {self._epoch()}"
        if row is None:
            return f"{what} became NaN/Inf {where}; lower the learning rate or check the data"
        ids = row.ids[:8] + ([f"... ({len(row.ids)} in all)"] if len(row.ids) > 8 else [])
        return (
            f"{what} became NaN/Inf {where}, step {row.step} (the first bad step found; "
            f"its utterances: {' '.join(map(str, ids))}); lower the learning rate or check "
            "the data"
        )

    def finish_train_stage(self, mean=(), last=()):
        """End of a training stage: read the step log (so no non-finite weights reach the
        dev pass) and return the stage's statistics: ``loss`` (the running average), the
        mean over the steps of each ``mean`` field and the last value of each ``last``
        field (NaN when none was logged)."""
        self.read_step_log()
        sums, self.train_sums = self.train_sums, {}
        steps = max(sums.get("steps", 0), 1)
        stats = {"loss": self.avg_train_loss}
        stats.update({k: sums.get(k, math.nan) / steps for k in mean})
        stats.update({k: self.last_values.get(k, math.nan) for k in last})
        return stats

    # ---------------------------------------------------------------- embedding passes
    def keep_embeddings(self, wavs, embeddings):
        """Keep a dev / test batch's embeddings (float32) on the device until the pass ends."""
        self.embedding_parts.append((list(wavs), embeddings.detach().float()))

    def take_embeddings(self):
        """``{absolute wav path: embedding}`` of the pass so far, copied to the host at once
        (one device round trip per pass, not one per batch)."""
        parts, self.embedding_parts = self.embedding_parts, []
        wavs = [os.path.abspath(w) for names, _ in parts for w in names]
        return dict(zip(wavs, torch.cat([e for _, e in parts]).cpu() if parts else []))

    # ---------------------------------------------------------------- checkpoints
    @mark_as_saver
    def _save(self, path):
        state = {
            "step": self.step,
            "avg_train_loss": self.avg_train_loss,
            "optimizer_step": self.optimizer_step,
            "train_sums": dict(self.train_sums),
            "last_values": dict(self.last_values),
        }
        with open(path, "w", encoding="utf-8") as f:
            f.write(yaml.dump(state))

    @mark_as_loader
    def _recover(self, path, end_of_epoch):
        sb.Brain._recover(self, path, end_of_epoch)  # the step counters, the running loss
        with open(path, encoding="utf-8") as f:
            state = yaml.safe_load(f)
        self.train_sums = dict(state.get("train_sums") or {})  # {} in older checkpoints
        self.last_values = dict(state.get("last_values") or {})

    def _save_intra_epoch_ckpt(self):
        self.read_step_log()  # never a checkpoint after a non-finite step
        super()._save_intra_epoch_ckpt()

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        if not is_distributed_initialized():
            return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)
        if self.checkpointer is None:
            return False
        if self.ckpt_interval_steps > 0:  # the same step count on every rank
            return steps_since_ckpt >= self.ckpt_interval_steps
        if self.ckpt_interval_minutes <= 0 or steps_since_ckpt % self.log_every:
            return False
        return super()._should_save_intra_epoch_ckpt(last_ckpt_time, steps_since_ckpt)

    # ---------------------------------------------------------------- epochs
    def _fit_valid(self, valid_set, epoch, enable):
        limit = getattr(getattr(self.hparams, "epoch_counter", None), "limit", None)
        if valid_set is None or epoch % self.valid_every == 0 or epoch == limit:
            return super()._fit_valid(valid_set, epoch, enable)
        self.on_epoch_without_validation(epoch)

    def on_epoch_without_validation(self, epoch):
        """Called after the training stage of an epoch that has no dev pass
        (``valid_every``); override to log and checkpoint."""

    # ---------------------------------------------------------------- compile
    def _compile(self):
        if self.compile and self.compile_module_keys is None:
            return  # the whole training forward is compiled in on_fit_start
        super()._compile()

    def on_fit_start(self):
        super().on_fit_start()
        self.train_step = self.make_train_step()
        if self.train_step is not None and self.compile and self.compile_module_keys is None:
            self.train_step = CompiledStep(  # the autocast inside the graph
                self.train_step,
                torch.device(self.device).type,
                mode=self.compile_mode,
                fullgraph=self.compile_using_fullgraph,
                dynamic=True if self.compile_using_dynamic_shape_tracing else None,
            )
            logger.info("training forward compiled with torch.compile (%s)", self.compile_mode)

    # ---------------------------------------------------------------- DDP
    def _train_loader_specifics(self, dataset, loader_kwargs):
        if isinstance(dataset, ShardedSpeakerBatches):  # it splits its shards by rank itself;
            self.train_sampler = EpochStart(dataset, lambda: self.step)  # and needs the step
            return loader_kwargs
        sampler = loader_kwargs.get("batch_sampler")
        if isinstance(getattr(sampler, "sampler", None), SpeakerBatchSampler):
            self.train_sampler = sampler
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    def _wrap_distributed(self):
        if self.distributed_launch and str(self.device).startswith("cpu"):
            for name, module in self.modules.items():
                if any(p.requires_grad for p in module.parameters()):
                    self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                        module, find_unused_parameters=self.find_unused_parameters
                    )
            return
        super()._wrap_distributed()

"""Learning-rate (and AAM margin) schedules of the baselines' reference recipes.

Both classes plug into the recipe as its ``lr_scheduler``: the Brain calls
``lr_scheduler([optimizer], epoch, dev_eer)`` after every epoch and sets the learning rate
it returns (the call signature of SpeechBrain's ``ReduceLROnPlateau``), and both are
checkpointed with the run.

- :class:`EpochScheduler`: a torch scheduler stepped after each epoch; with torch's
  ``StepLR`` (``lr * gamma ** (epoch // step_size)``) it is the ``steplr`` scheduler of
  voxceleb_trainer (Chung et al. 2020; ``--lr 0.001 --lr_decay 0.95``, decay every
  ``test_interval`` = 10 epochs).
- :func:`run_final_lr`: the final lr of a run of any length from a reference schedule's
  lr decay: the reference's decay *per epoch*, but at least ``min_decay`` (20x, chosen on
  the built-in corpus's dev split) and at most the reference's total, so that a short run
  is neither a long run squeezed (WeSpeaker's 2000x in 4 epochs leaves AAM at chance)
  nor left undecayed.
- :class:`WarmupExponentialLR`: set before every optimiser step; an exponential decay
  from ``lr`` to ``final_lr`` over the whole run, times a linear warm-up from zero and a
  batch-size factor ``lr_scale`` (WeSpeaker's ``ExponentialDecrease`` with
  ``warm_from_zero: True``; its ``scale_ratio`` is the global batch size / 64), and
  optionally the AAM margin ramp of WeSpeaker's ``MarginScheduler`` (read by
  :class:`~maskproxy_losses.losses.AAMSoftmaxLoss` through ``margin_schedule``). It
  needs the number of optimiser steps per epoch and of DDP processes
  (:meth:`WarmupExponentialLR.set_epoch_length`, done by the recipe: ``lr_scale`` is one
  process's batch / 64, times the processes it is the global batch / 64, as WeSpeaker's
  ``scale_ratio``; epoch counts stay epochs whatever the steps per epoch) and the
  optimiser (:func:`scheduled_optimizer` attaches it).

Example
-------
>>> import torch
>>> sched = WarmupExponentialLR(lr=0.1, final_lr=0.001, n_epochs=2, warmup_epochs=0.5)
>>> sched.set_epoch_length(10)
>>> opt = scheduled_optimizer([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, sched)
>>> opt.param_groups[0]["lr"]        # step 0 of a warm-up from zero
0.0
>>> for _ in range(20):
...     opt.step()
>>> round(opt.param_groups[0]["lr"], 6)   # step 20 of 20: the final lr
0.001
"""

import json
import math
import warnings

import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks

__all__ = ["EpochScheduler", "WarmupExponentialLR", "run_final_lr", "scheduled_optimizer"]


def _lr(optimizer):
    return optimizer.param_groups[0]["lr"]


def run_final_lr(lr, reference_final_lr, reference_epochs, n_epochs, min_decay=20.0):
    """The final lr of an ``n_epochs`` run whose reference decays from ``lr`` to
    ``reference_final_lr`` over ``reference_epochs``: ``lr / D`` with the decay

    ``D = clamp(R ** (n_epochs / reference_epochs), min(min_decay, R), R)``, ``R = lr /
    reference_final_lr``,

    i.e. the reference's per-epoch rate, at least ``min_decay`` and at most ``R``. For
    WeSpeaker's AAM schedule (0.1 -> 5e-5 over 150 epochs, R = 2000): 20x up to 59
    epochs (0.005: the built-in corpus's dev choice at 30 epochs), 2000x from 150.

    >>> [round(run_final_lr(0.1, 5e-5, 150, e), 6) for e in (4, 30, 100, 150, 500)]
    [0.005, 0.005, 0.00063, 5e-05, 5e-05]
    """
    total = float(lr) / float(reference_final_lr)
    if total < 1 or n_epochs <= 0 or reference_epochs <= 0:
        raise ValueError("need lr >= reference_final_lr and positive epoch counts")
    per_epoch = total ** (float(n_epochs) / float(reference_epochs))
    return float(lr) / min(total, max(min(float(min_decay), total), per_epoch))


@register_checkpoint_hooks
class EpochScheduler:
    """A torch learning-rate scheduler (``torch.optim.lr_scheduler.StepLR`` for
    voxceleb_trainer's step decay) behind the recipe's epoch-scheduler call.

    ``scheduler`` is the scheduler class, ``kwargs`` its arguments (without the
    optimiser). The torch scheduler is made on the first call, with the recipe's
    optimiser, and stepped once per epoch; its state is checkpointed with the run.

    >>> import torch
    >>> opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    >>> sched = EpochScheduler(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    >>> [sched([opt], epoch, 10.0)[1] for epoch in (1, 2, 3, 4)]
    [0.001, 0.0005, 0.0005, 0.00025]
    """

    def __init__(self, scheduler, **kwargs):
        self.make, self.kwargs = scheduler, kwargs
        self.scheduler, self._state = None, None

    def __call__(self, optimizers, epoch, metric=None):
        """``(lr used in epoch, lr for the next one)``; the scheduler has set the latter."""
        if self.scheduler is None:
            self.scheduler = self.make(optimizers[0], **self.kwargs)
            if self._state is not None:
                self.scheduler.load_state_dict(self._state)
        old = _lr(optimizers[0])
        with warnings.catch_warnings():  # made after an epoch of optimiser steps: torch's
            # check cannot see the steps taken before the scheduler existed
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.scheduler.step()
        return old, _lr(optimizers[0])

    @mark_as_saver
    def _save(self, path):
        state = self._state if self.scheduler is None else self.scheduler.state_dict()
        torch.save(state, path)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        self._state = torch.load(path, weights_only=True)
        if self.scheduler is not None and self._state is not None:
            self.scheduler.load_state_dict(self._state)


@register_checkpoint_hooks
class WarmupExponentialLR:
    """Per-step lr ``c(t) * lr * (final_lr / lr) ** (t / T)`` and an optional margin ramp.

    ``t`` counts optimiser steps from 0, ``T = n_epochs * epoch_length``, and ``c(t) =
    s * t / W`` during the warm-up (``t < W = warmup_epochs * epoch_length``), else ``s =
    lr_scale * world_size`` (both from :meth:`set_epoch_length`). The margin is
    ``initial_margin`` before step ``margin_start_epoch * epoch_length``, ``final_margin``
    from step ``margin_end_epoch * epoch_length`` on, and in between rises as ``initial +
    (final - initial) * (1 - 0.001 ** r)`` (``r`` the share of the ramp done; WeSpeaker's
    ``increase_type: exp``). Epoch values may be fractional; the margin is None when
    ``final_margin`` is None.
    """

    def __init__(
        self,
        lr,
        final_lr,
        n_epochs,
        warmup_epochs=0.0,
        lr_scale=1.0,
        final_margin=None,
        initial_margin=0.0,
        margin_start_epoch=0.0,
        margin_end_epoch=0.0,
    ):
        if lr <= 0 or final_lr <= 0 or n_epochs <= 0:
            raise ValueError("lr, final_lr and n_epochs must be positive")
        if margin_end_epoch < margin_start_epoch:
            raise ValueError("margin_end_epoch must not come before margin_start_epoch")
        self.lr, self.final_lr, self.n_epochs = float(lr), float(final_lr), float(n_epochs)
        self.warmup_epochs, self.lr_scale = float(warmup_epochs), float(lr_scale)
        self.final_margin, self.initial_margin = final_margin, float(initial_margin)
        self.margin_start, self.margin_end = float(margin_start_epoch), float(margin_end_epoch)
        self.epoch_length, self.world_size = None, 1
        self.step = 0

    def set_epoch_length(self, steps, world_size=1):
        """Optimiser steps per epoch (per process under DDP) and the number of processes,
        which multiplies ``lr_scale`` (a per-process batch / 64 becomes the global one's).

        >>> sched = WarmupExponentialLR(lr=0.1, final_lr=0.01, n_epochs=1, lr_scale=0.5)
        >>> sched.set_epoch_length(10, world_size=4)
        >>> sched.lr_at(0), round(sched.lr_at(10), 6)
        (0.2, 0.02)
        """
        self.epoch_length = max(int(steps), 1)
        self.world_size = max(int(world_size), 1)

    def _steps(self, epochs):
        if self.epoch_length is None:
            raise RuntimeError("WarmupExponentialLR: call set_epoch_length first")
        return epochs * self.epoch_length

    def lr_at(self, step):
        """The learning rate of optimiser step ``step`` (0-based)."""
        total, warmup = self._steps(self.n_epochs), self._steps(self.warmup_epochs)
        coeff = self.lr_scale * self.world_size * (step / warmup if step < warmup else 1.0)
        decay = math.log(self.final_lr / self.lr)
        return coeff * self.lr * math.exp(min(step / total, 1.0) * decay)

    def margin_at(self, step):
        """The AAM margin at optimiser step ``step`` (None: no margin schedule)."""
        if self.final_margin is None:
            return None
        start, end = self._steps(self.margin_start), self._steps(self.margin_end)
        if step >= end:
            return float(self.final_margin)
        if step < start:
            return self.initial_margin
        ratio = 1.0 - math.exp((step - start) / (end - start) * math.log(1e-3 / (1.0 + 1e-6)))
        return self.initial_margin + (self.final_margin - self.initial_margin) * ratio

    def margin(self):
        """The margin for the coming step (what the AAM loss reads)."""
        return self.margin_at(self.step)

    def attach(self, optimizer):
        """Set the lr of the coming step now and after every ``optimizer.step()``."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)

        def after_step(opt, args, kwargs):
            self.step += 1
            for group in opt.param_groups:
                group["lr"] = self.lr_at(self.step)

        optimizer.register_step_post_hook(after_step)
        return optimizer

    def __call__(self, optimizers, epoch, metric=None):
        """The per-epoch call: the lr stays as the steps set it."""
        return _lr(optimizers[0]), _lr(optimizers[0])

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"step": self.step}, f)

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        with open(path, encoding="utf-8") as f:
            self.step = int(json.load(f)["step"])


def scheduled_optimizer(params, optimizer, schedule):
    """``optimizer(params)`` with ``schedule`` attached when it sets the lr per step.

    Use as the recipe's ``opt_class`` (``!name:`` with ``optimizer: !name:torch.optim.SGD``
    and ``schedule: !ref <lr_scheduler>``)."""
    opt = optimizer(params)
    return schedule.attach(opt) if hasattr(schedule, "attach") else opt

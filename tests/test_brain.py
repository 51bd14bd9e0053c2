"""The SpeechBrain hooks that training.brain overrides still exist and are called."""

import inspect

import speechbrain as sb

from maskproxy_losses.training.brain import GroupedBatchBrain

PRIVATE = (
    "_train_loader_specifics",
    "_wrap_distributed",
    "_save_intra_epoch_ckpt",
    "_should_save_intra_epoch_ckpt",
    "_fit_valid",
    "_compile",
)
PUBLIC = ("fit_batch", "update_average", "on_fit_start")


def test_overridden_hooks_exist_with_the_same_signatures():
    for name in PRIVATE + PUBLIC:
        assert name in vars(sb.Brain), f"speechbrain.Brain no longer has {name}"
        ours = inspect.signature(getattr(GroupedBatchBrain, name))
        assert inspect.signature(getattr(sb.Brain, name)) == ours, name


def test_speechbrain_still_calls_them():
    source = inspect.getsource(sb.Brain)
    for call in (
        "self._train_loader_specifics(dataset, loader_kwargs)",
        "self._wrap_distributed()",
        "self._save_intra_epoch_ckpt()",
        "self._should_save_intra_epoch_ckpt(",
        "self._fit_valid(valid_set=valid_set, epoch=epoch, enable=enable)",
        "self._compile()",
        "loss = self.fit_batch(batch)",
        "self.avg_train_loss = self.update_average(",
        "self.on_fit_start()",
    ):
        assert call in source, call


def test_the_pieces_fit_batch_relies_on_are_still_there():
    """``GroupedBatchBrain.fit_batch`` re-implements ``sb.Brain.fit_batch`` without its two
    reads of the loss: it uses these attributes and methods of SpeechBrain's Brain."""
    for name in ("on_fit_batch_start", "on_fit_batch_end", "no_sync", "optimizers_step"):
        assert callable(getattr(sb.Brain, name)), name
    fit_batch = inspect.getsource(sb.Brain.fit_batch)
    for piece in ("grad_accumulation_factor", "training_ctx", "self.scaler.scale("):
        assert piece in fit_batch, piece
    # what ours leaves out (and reads back from the device)
    assert "self.check_loss_isfinite(" in fit_batch and "loss.detach().cpu()" in fit_batch

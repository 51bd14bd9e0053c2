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
    "_save",
    "_recover",
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


def test_the_brain_checkpoint_file_is_ours_and_holds_speechbrains_fields(tmp_path):
    """The ``brain`` recoverable saves SpeechBrain's fields (its ``_recover`` reads them)
    and the epoch's sums; the checkpointer picks our hooks for a subclass."""
    import torch
    from speechbrain.utils.checkpoints import (
        DEFAULT_LOAD_HOOKS,
        DEFAULT_SAVE_HOOKS,
        get_default_hook,
    )

    class Brain(GroupedBatchBrain):
        pass

    brain = Brain({"lin": torch.nn.Linear(1, 1)}, run_opts={"device": "cpu"})
    assert get_default_hook(brain, DEFAULT_LOAD_HOOKS) is GroupedBatchBrain._recover
    assert get_default_hook(brain, DEFAULT_SAVE_HOOKS).__qualname__ == "GroupedBatchBrain._save"
    brain.step, brain.avg_train_loss, brain.optimizer_step = 4, 0.5, 2
    brain.train_sums, brain.last_values = {"steps": 4.0, "acc": 1.5}, {"acc": 0.25}
    GroupedBatchBrain._save(brain, tmp_path / "brain.ckpt")
    other = Brain({"lin": torch.nn.Linear(1, 1)}, run_opts={"device": "cpu"})
    GroupedBatchBrain._recover(other, tmp_path / "brain.ckpt", False)
    assert (other.step, other.avg_train_loss, other.optimizer_step) == (4, 0.5, 2)
    assert other.train_sums == brain.train_sums and other.last_values == brain.last_values
    for field in ("step", "avg_train_loss", "optimizer_step"):
        assert f'"{field}"' in inspect.getsource(sb.Brain._recover), field

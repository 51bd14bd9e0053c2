"""The private SpeechBrain hooks that training.brain overrides still exist and are called."""

import inspect

import speechbrain as sb

from maskproxy_losses.training.brain import GroupedBatchBrain


def test_overridden_private_hooks_exist_with_the_same_signatures():
    for name in ("_train_loader_specifics", "_wrap_distributed"):
        assert name in vars(sb.Brain), f"speechbrain.Brain no longer has {name}"
        ours = inspect.signature(getattr(GroupedBatchBrain, name))
        assert inspect.signature(getattr(sb.Brain, name)) == ours, name


def test_speechbrain_still_calls_them():
    source = inspect.getsource(sb.Brain)
    assert "self._train_loader_specifics(dataset, loader_kwargs)" in source
    assert "self._wrap_distributed()" in source

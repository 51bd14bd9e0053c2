"""An interrupted checkpoint save never hides the previous checkpoint."""

import pytest
import torch

from maskproxy_losses.training.checkpointing import AtomicCheckpointer


def test_interrupted_save_is_ignored_by_recovery(tmp_path):
    model = torch.nn.Linear(3, 3)
    ckpt = AtomicCheckpointer(
        tmp_path, recoverables={"model": model, "other": torch.nn.Linear(1, 1)}
    )
    with torch.no_grad():
        model.weight.fill_(1.0)
    good = ckpt.save_checkpoint(meta={"n": 1})

    def crash(obj, path):
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        model.weight.fill_(2.0)
    ckpt.custom_save_hooks["other"] = crash  # dies after model.ckpt, before the rest
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(meta={"n": 2})
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2  # the broken folder is there ...
    del ckpt.custom_save_hooks["other"]
    with torch.no_grad():
        model.weight.fill_(3.0)
    recovered = ckpt.recover_if_possible()  # ... but recovery takes the complete one
    assert recovered.path == good.path and recovered.meta["n"] == 1
    assert torch.all(model.weight == 1.0)

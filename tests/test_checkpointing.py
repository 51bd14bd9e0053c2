"""An interrupted checkpoint save never hides the previous checkpoint; a damaged one is
passed over; a full disk is one line and leaves no partial checkpoint."""

import os
import pickle

import pytest
import torch

from maskproxy_losses.training import checkpointing
from maskproxy_losses.training.checkpointing import AtomicCheckpointer, load_weights
from maskproxy_losses.utils.errors import InputError


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


# ------------------------------------------------- damaged checkpoints, a full disk


def _three_checkpoints(tmp_path):
    """Checkpoints 1, 2, 3 (model weights 1.0, 2.0, 3.0; newest = 3)."""
    model = torch.nn.Linear(3, 3)
    ckpt = AtomicCheckpointer(tmp_path / "save", recoverables={"model": model})
    saved = []
    for n in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(float(n))
        saved.append(ckpt.save_checkpoint(meta={"n": n, "EER": 10.0 * n}))
    return model, ckpt, saved


class _Boom:
    def __reduce__(self):  # a pickle that would run code when loaded
        return (os.system, ("touch pwned",))


def test_recovery_falls_back_past_damaged_checkpoints(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, ckpt, saved = _three_checkpoints(tmp_path)
    newest = saved[2].paramfiles["model"]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    middle = saved[1].paramfiles["model"]
    middle.write_bytes(pickle.dumps({"weight": _Boom()}))  # not weights-only
    got = ckpt.recover_if_possible()
    assert got.meta["n"] == 1 and torch.all(model.weight == 1.0)
    assert not (tmp_path / "pwned").exists()
    assert "damaged checkpoint" in caplog.text and "resuming from" in caplog.text
    assert "Weights only load failed" in caplog.text or "weights_only" in caplog.text
    # the damaged ones are moved aside: never picked again, never kept as "the best"
    names = sorted(p.name for p in (tmp_path / "save").iterdir())
    assert sum(n.startswith("damaged+CKPT+") for n in names) == 2
    assert [c.meta["n"] for c in ckpt.list_checkpoints()] == [1]
    # by dev EER (the final evaluation) the same fallback applies
    assert ckpt.recover_if_possible(min_key="EER").meta["n"] == 1


def test_no_intact_checkpoint_is_one_line_naming_the_file(tmp_path):
    _, ckpt, saved = _three_checkpoints(tmp_path)
    for checkpoint in saved:
        checkpoint.paramfiles["model"].write_bytes(b"")
    with pytest.raises(InputError) as err:
        ckpt.recover_if_possible()
    assert str(err.value).startswith(f"{saved[2].paramfiles['model']}: ")
    assert "none of the 3 checkpoint(s)" in str(err.value) and "\n" not in str(err.value)
    assert len(list((tmp_path / "save").glob("CKPT+*"))) == 3  # nothing moved: all damaged


def test_a_damaged_meta_file_is_skipped(tmp_path, caplog):
    _, ckpt, saved = _three_checkpoints(tmp_path)
    (saved[2].path / "CKPT.yaml").write_text("{{{ not yaml")
    (saved[1].path / "CKPT.yaml").write_text("- a list\n")
    assert ckpt.recover_if_possible().meta["n"] == 1
    assert caplog.text.count("ignoring") >= 2


def test_a_checkpoint_of_other_settings_is_refused_not_set_aside(tmp_path):
    _, _, saved = _three_checkpoints(tmp_path)
    other = AtomicCheckpointer(tmp_path / "save", recoverables={"model": torch.nn.Linear(3, 4)})
    with pytest.raises(InputError, match="does not fit this run's model .*size mismatch"):
        other.recover_if_possible()
    assert len(other.list_checkpoints()) == 3


def test_an_optimiser_of_other_parameter_groups_is_refused_not_set_aside(tmp_path):
    model = torch.nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    AtomicCheckpointer(tmp_path, recoverables={"optimizer": opt}).save_checkpoint()
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    other = AtomicCheckpointer(tmp_path, recoverables={"optimizer": torch.optim.SGD(groups, 0.1)})
    with pytest.raises(InputError, match="does not fit this run's optimizer .*parameter groups"):
        other.recover_if_possible()
    assert len(other.list_checkpoints()) == 1


def test_disk_full_during_a_save_names_the_folder_and_leaves_no_partial(tmp_path):
    model, ckpt, saved = _three_checkpoints(tmp_path)

    def to_a_full_disk(obj, path):  # a real ENOSPC: /dev/full
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)
            f.flush()

    ckpt.custom_save_hooks["model"] = to_a_full_disk
    with pytest.raises(InputError) as err:
        ckpt.save_checkpoint(meta={"n": 4})
    message = str(err.value)
    assert message.startswith(str(tmp_path / "save" / "CKPT+")) and "No space left" in message
    assert "MB free on its disk, about 0.1 MB needed" in message
    assert len(list((tmp_path / "save").glob("CKPT+*"))) == 3  # the partial one is gone
    del ckpt.custom_save_hooks["model"]
    assert ckpt.recover_if_possible().meta["n"] == 3


def test_free_space_is_checked_before_a_save_and_at_start(tmp_path, monkeypatch):
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights
    ckpt = AtomicCheckpointer(tmp_path / "save", recoverables={"model": model})
    assert 4_000_000 <= ckpt.checkpoint_bytes() < 4_200_000
    real = checkpointing.shutil.disk_usage

    def small(path):
        return real(path)._replace(free=3_000_000)

    monkeypatch.setattr(checkpointing.shutil, "disk_usage", small)
    for call in (ckpt.recover_if_possible, ckpt.save_checkpoint):
        with pytest.raises(InputError, match=r"save: 3.0 MB free on its disk, a checkpoint needs"):
            call()
    assert not list((tmp_path / "save").iterdir())  # nothing written


def test_load_weights_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "x.ckpt"
    path.write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(InputError, match="not a readable weights-only checkpoint") as err:
        load_weights(path)
    assert "\n" not in str(err.value) and not (tmp_path / "pwned").exists()


def test_an_optimiser_before_its_first_step_is_counted_with_its_future_state(tmp_path):
    model = torch.nn.Linear(1000, 1000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = AtomicCheckpointer(tmp_path, recoverables={"model": model, "optimizer": opt})
    weights = 1001 * 1000 * 4
    assert 3 * weights <= ckpt.checkpoint_bytes() < 3 * weights + 200_000  # + 2 buffers
    model(torch.ones(1, 1000)).sum().backward()
    opt.step()  # now the momentum buffers exist: counted as they are
    assert 2 * weights <= ckpt.checkpoint_bytes() < 2 * weights + 200_000


def test_the_speechbrain_checkpointer_pieces_relied_on_are_still_there():
    """AtomicCheckpointer overrides or uses these private parts of SpeechBrain 1.1.2's
    Checkpointer; a SpeechBrain release that renames them must fail here, not in a run."""
    import inspect

    from speechbrain.utils.checkpoints import Checkpointer

    for name, params in {
        "_new_checkpoint_dirpath": ["self"],
        "_custom_checkpoint_dirpath": ["self", "name"],
        "_save_checkpoint_metafile": ["self", "fpath", "meta_to_include", "end_of_epoch"],
        "_list_checkpoint_dirs": ["self"],
        "_call_load_hooks": ["self", "checkpoint"],
    }.items():
        assert name in vars(Checkpointer), f"speechbrain's Checkpointer has no {name}"
        assert list(inspect.signature(getattr(Checkpointer, name)).parameters) == params, name
    save = inspect.getsource(Checkpointer.save_checkpoint)
    assert "self._new_checkpoint_dirpath()" in save
    assert "self._custom_checkpoint_dirpath(name)" in save
    assert "self.custom_load_hooks[name](obj, loadpath, end_of_epoch)" in inspect.getsource(
        Checkpointer._call_load_hooks
    )


# ------------------------------------- a damaged intra-epoch checkpoint, under a Brain
def _toy_fit(save, seen, stop_at=None, stats=None, log_every=1):
    """Fit a tiny ``GroupedBatchBrain`` for 2 epochs of 6 steps (12 items, batches of 2; an
    intra-epoch checkpoint every 2 steps, an end-of-epoch one after each dev pass) into
    ``save``; record ``(epoch, first item)`` per step in ``seen`` and each epoch's training
    statistics (loss, mean ``acc``, last ``w``) in ``stats``; KeyboardInterrupt at
    ``stop_at`` ``(epoch, step)``. The state dict of the model after training."""
    import speechbrain as sb
    from speechbrain.utils.epoch_loop import EpochCounter

    from maskproxy_losses.training.brain import GroupedBatchBrain

    class Toy(GroupedBatchBrain):
        def compute_forward(self, batch, stage):
            if stage == sb.Stage.TRAIN:
                seen.append((self.hparams.counter.current, int(batch[0, 0])))
                if stop_at == seen[-1][0:1] + (self.step,):
                    raise KeyboardInterrupt
            return self.modules.lin(batch)

        def compute_objectives(self, outputs, batch, stage):
            return outputs.square().mean()

        def step_values(self, batch, outputs, loss):
            return {"loss": loss, "acc": batch[0, 0].clone(), "w": batch[1, 0].clone()}

        def on_stage_end(self, stage, loss, epoch=None):
            if stage == sb.Stage.TRAIN and stats is not None:
                stats.append(self.finish_train_stage(mean=("acc",), last=("w",)))
            if stage == sb.Stage.VALID:
                self.checkpointer.save_and_keep_only(num_to_keep=1, ckpt_predicate=_end)

    torch.manual_seed(0)
    lin, counter = torch.nn.Linear(2, 1), EpochCounter(2)
    ckpt = AtomicCheckpointer(save, recoverables={"lin": lin, "counter": counter})
    brain = Toy(
        {"lin": lin},
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        hparams={"counter": counter, "log_every": log_every},
        run_opts={"device": "cpu", "ckpt_interval_steps": 2, "noprogressbar": True},
        checkpointer=ckpt,
    )
    data = [torch.full((2,), float(i)) for i in range(12)]
    brain.fit(counter, data, data[:2], train_loader_kwargs={"batch_size": 2})
    return {k: v.clone() for k, v in lin.state_dict().items()}


def _end(checkpoint):
    return checkpoint.meta["end-of-epoch"]


def _meta(folder):
    import types

    import yaml

    return types.SimpleNamespace(meta=yaml.safe_load((folder / "CKPT.yaml").read_text()))


def test_a_damaged_intra_epoch_checkpoint_resumes_the_whole_epoch(tmp_path, caplog):
    """Killed at epoch 2 step 5 (intra-epoch checkpoint of step 4); its optimizer file
    (loaded after the data loader's) damaged: the resume trains all 6 steps of epoch 2, as
    a clean resume from epoch 1's checkpoint does, to the same weights."""
    import shutil

    seen = []
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(tmp_path / "run", seen, stop_at=(2, 5))
    (intra,) = [p for p in (tmp_path / "run").glob("CKPT+*") if not _end(_meta(p))]
    shutil.copytree(tmp_path / "run", tmp_path / "clean")
    shutil.rmtree(tmp_path / "clean" / intra.name)
    optimizer = intra / "optimizer.ckpt"
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    clean, damaged = [], []
    want = _toy_fit(tmp_path / "clean", clean)
    got = _toy_fit(tmp_path / "run", damaged)
    assert "damaged checkpoint" in caplog.text and "resuming from" in caplog.text
    assert damaged == clean == [(2, 2 * i) for i in range(6)]  # every step of epoch 2
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_resumed_epoch_logs_the_statistics_of_an_uninterrupted_one(tmp_path, log_every):
    """Interrupted at epoch 2 step 5 and resumed from its step-4 checkpoint: epoch 2's
    loss average and mean accuracy (sums over the whole epoch) are the uninterrupted
    run's."""
    want, got = [], []
    _toy_fit(tmp_path / "full", [], stats=want, log_every=log_every)
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(tmp_path / "run", [], stop_at=(2, 5), stats=got, log_every=log_every)
    _toy_fit(tmp_path / "run", [], stats=got, log_every=log_every)
    assert want[1]["acc"] == 5.0 and want[1]["w"] == 11.0  # items 0, 2, ..., 10; 11
    assert got == want

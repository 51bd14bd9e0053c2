"""The training step never waits for the device: no host read inside a step, reads only
every ``log_every`` steps and before checkpoints / the end of an epoch; the NaN guard
still stops the run at the first bad step; the step compiles with no graph break."""

import math
import weakref

import pytest
import speechbrain as sb
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)
from torch.overrides import TorchFunctionMode

from maskproxy_losses import ResNetSE34L, build_loss
from maskproxy_losses.data.crops import SeededCrops
from maskproxy_losses.losses.grouping import speaker_layout
from maskproxy_losses.models.frontend import DeviceFbank
from maskproxy_losses.training.brain import GroupedBatchBrain
from maskproxy_losses.training.step import SpeakerStep

# Tensor methods that copy a value to the host (a GPU waits for its queue to drain).
READS = {
    "item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
    "__format__", "__repr__", "__array__",
}  # fmt: skip


class DeviceReads(TorchFunctionMode):
    """Records every host read of a "device" tensor, with where it happened.

    On a CPU every tensor is a host tensor, so the device is simulated: a tensor is on
    the device when it is a module parameter or buffer, when a training step (``fit_batch``)
    made it, or when it was computed from such a tensor. A read is a call of one of
    ``READS`` on such a tensor. (``.to(device)`` is not counted: on a CPU machine a move to
    the host cannot be told from a move to the run's device, which is the host.)
    """

    def __init__(self):
        super().__init__()
        self.ids, self.events, self.where, self.stage = {}, [], "other", None
        self.brain = None

    def mark(self, tensor):
        key = id(tensor)
        if isinstance(tensor, torch.Tensor) and key not in self.ids:
            self.ids[key] = weakref.ref(tensor, lambda _, key=key: self.ids.pop(key, None))

    def _tensors(self, value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from self._tensors(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from self._tensors(v)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs = list(self._tensors(args)) + list(self._tensors(kwargs))
        on_device = any(id(t) in self.ids for t in inputs)
        if on_device and name in READS:
            step = self.brain.step if self.brain is not None else None
            self.events.append((self.stage, step, self.where, name))
        out = func(*args, **kwargs)
        if on_device or self.where == "fit_batch":
            for t in self._tensors(out):
                self.mark(t)
        return out


def _label(monkeypatch, mode, cls, method, where):
    real = getattr(cls, method)

    def wrapped(self, *args, **kwargs):
        mode.brain, outer = self, mode.where
        if mode.where == "other":
            mode.where = where
        if where == "fit_batch":
            for t in list(self.modules.parameters()) + list(self.modules.buffers()):
                mode.mark(t)
        try:
            return real(self, *args, **kwargs)
        finally:
            mode.where = outer

    monkeypatch.setattr(cls, method, wrapped)


def _stage(monkeypatch, mode):
    real = recipe.SpeakerBrain.on_stage_start

    def wrapped(self, stage, epoch=None):
        mode.stage = (stage, epoch)
        return real(self, stage, epoch)

    monkeypatch.setattr(recipe.SpeakerBrain, "on_stage_start", wrapped)


def test_training_steps_read_the_device_only_every_log_every_steps(
    corpus, tmp_path, recipe_args, monkeypatch
):
    """Two epochs of 4 steps with ``log_every`` 3 and an intra-epoch checkpoint every 2
    steps: nothing is read inside a step; ``update_average`` reads once (one ``tolist``)
    at steps 3 of each epoch; the other reads come right before a checkpoint or at the
    end of the epoch."""
    mode = DeviceReads()
    for method, where in [
        ("fit_batch", "fit_batch"),
        ("update_average", "update_average"),
        ("_save_intra_epoch_ckpt", "checkpoint"),
        ("finish_train_stage", "stage_end"),
    ]:
        _label(monkeypatch, mode, GroupedBatchBrain, method, where)
    _stage(monkeypatch, mode)
    argv = recipe_args(
        corpus, tmp_path / "run", number_of_epochs=2, log_every=3, ckpt_interval_steps=2
    )
    with mode:
        brain = recipe.train(argv)
    # (epoch, step, where, what) of every read while training
    reads = [(e[0][1], *e[1:]) for e in mode.events if e[0] and e[0][0] == sb.Stage.TRAIN]
    assert not [r for r in reads if r[2] in ("fit_batch", "other")], reads
    assert [r for r in reads if r[2] == "update_average"] == [
        (1, 3, "update_average", "tolist"),
        (2, 3, "update_average", "tolist"),
    ]
    others = {r[:3] for r in reads if r[2] != "update_average"}
    assert others == {
        (epoch, step, where)
        for epoch in (1, 2)
        for step, where in [(2, "checkpoint"), (4, "checkpoint"), (4, "stage_end")]
    }
    assert brain.train_stats["loss"] > 0 and 0 <= brain.train_stats["acc"] <= 1


def test_running_average_is_speechbrains(corpus, tmp_path, recipe_args, monkeypatch):
    """The loss average read every ``log_every`` steps is SpeechBrain's running average of
    the step losses, computed independently here from the losses the steps returned."""
    losses, real = [], GroupedBatchBrain.fit_batch

    def spy(self, batch):
        loss = real(self, batch)
        losses.append((self.hparams.epoch_counter.current, self.step, float(loss)))
        return loss

    monkeypatch.setattr(GroupedBatchBrain, "fit_batch", spy)
    brain = recipe.train(recipe_args(corpus, tmp_path / "run", number_of_epochs=1, log_every=3))
    avg = 0.0
    for _, step, loss in losses:
        avg = avg - avg / step + loss / step
    assert len(losses) == 4 and brain.train_stats["loss"] == pytest.approx(avg, rel=1e-12)


def test_nan_stops_at_the_first_bad_step_with_its_utterances(
    corpus, tmp_path, recipe_args, monkeypatch
):
    """A NaN crop in step 2 of epoch 1, read only at the end of the epoch (``log_every``
    100): the error names epoch 1, step 2 and the batch's utterances; the intra-epoch
    checkpoint of step 1 is the only one and is finite, and no dev pass ran."""
    real, seen = SeededCrops.__getitem__, {}

    def poisoned(self, key):
        item = real(self, key)
        seen.setdefault(key, len(seen))
        if seen[key] == 6:  # the first crop of the second batch (3 speakers x 2)
            item["sig"] = item["sig"].clone()
            item["sig"][100] = math.nan
        return item

    monkeypatch.setattr(SeededCrops, "__getitem__", poisoned)
    monkeypatch.setattr(recipe, "score_trials", lambda *a: pytest.fail("a dev pass ran"))
    logged = []
    monkeypatch.setattr(
        recipe.BatchTrace, "batch", lambda self, epoch, step, ids: logged.append((step, ids))
    )
    with pytest.raises(FloatingPointError) as err:
        recipe.train(recipe_args(corpus, tmp_path / "nan", log_every=100, ckpt_interval_steps=1))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("the embeddings became NaN/Inf at epoch 1, step 2 (")
    step2 = dict(logged)[2]
    assert f"its utterances: {' '.join(step2)});" in message
    ckpts = list((tmp_path / "nan" / "save").glob("CKPT+*"))
    assert len(ckpts) == 1 and "step: 1" in (ckpts[0] / "brain.ckpt").read_text()
    state = torch.load(ckpts[0] / "embedding_model.ckpt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "model").exists()


def _step(name, n_classes=6):
    return SpeakerStep(
        DeviceFbank(n_mels=40),
        sb.processing.features.InputNormalization(norm_type="sentence", std_norm=True),
        ResNetSE34L(channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1), emb_dim=16),
        build_loss(name, n_classes=n_classes, emb_dim=16),
    )


@pytest.mark.parametrize("precision", [None, torch.bfloat16])
@pytest.mark.parametrize("name", ["mp_balance", "mmp", "ap", "aam"])
def test_the_step_compiles_with_no_graph_break(name, precision):
    """front end + normalisation + encoder + loss is one graph (what ``--compile True``
    compiles), in float32 and under bfloat16 autocast."""
    torch.manual_seed(0)
    labels = torch.tensor([4, 4, 1, 1, 3, 3])
    wavs = torch.randn(6, 3440)
    with torch.autocast("cpu", dtype=precision or torch.float32, enabled=precision is not None):
        out = torch._dynamo.explain(_step(name))(wavs, None, labels, speaker_layout(labels))
    assert out.graph_break_count == 0, out.break_reasons
    assert out.graph_count == 1


def test_compiled_step_trains_under_bf16_autocast(monkeypatch):
    """``--compile True`` with ``precision: bf16`` (what ``auto`` picks on a CPU with
    native bfloat16): the brain's compiled step runs forward and backward (it failed in
    ``index_add_`` of the MP loss's backward) and gives the eager loss within 1e-3
    (relative) and the eager gradients within 5 % of their largest value. Compiled with
    the ``aot_eager`` backend: the autograd tracing that failed, without inductor's
    minutes of code generation on a CPU."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))

    class Brain(GroupedBatchBrain):
        def make_train_step(self):
            return self.modules.step

    torch.manual_seed(0)
    step = _step("mp_balance")  # its MaskedProxyLSE backward is where index_add_ failed
    brain = Brain(
        {"step": step}, lambda p: torch.optim.SGD(p, lr=0.1),
        run_opts={"device": "cpu", "compile": True, "precision": "bf16"},
    )  # fmt: skip
    brain.on_fit_start()
    labels = torch.tensor([4, 4, 1, 1, 3, 3])
    wavs = torch.randn(6, 3440)

    def run(fn):
        step.zero_grad(set_to_none=True)
        with brain.training_ctx:  # bf16 autocast
            _, loss = fn(wavs, None, labels, speaker_layout(labels))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in step.named_parameters()}

    eager_loss, eager_grads = run(step)
    try:
        loss, grads = run(brain.train_step)
    finally:  # dynamo keys its cache by code: a later compile would see a "recompile" and
        torch._dynamo.reset()  # trace the wav length symbolically (inductor then fails)
    assert loss == pytest.approx(eager_loss.item(), rel=1e-3)
    for key, grad in eager_grads.items():
        assert grads[key].dtype == grad.dtype == torch.float32, key
        torch.testing.assert_close(grads[key], grad, rtol=0, atol=0.05 * grad.abs().max().item())


def test_device_fbank_is_speechbrains_fbank():
    from speechbrain.lobes.features import Fbank

    wavs = torch.rand(3, 8000) * 2 - 1
    fast = DeviceFbank(n_mels=40)
    assert torch.equal(fast(wavs), Fbank(n_mels=40)(wavs))  # the same bits
    assert set(fast.state_dict()) == set(Fbank(n_mels=40).state_dict())
    assert {n for n, _ in fast.named_buffers()} >= {"fbank_matrix", "compute_STFT.window"}
    with pytest.raises(ValueError, match="fixed filterbank"):
        DeviceFbank(deltas=True)


def test_device_fbank_power_spectrum_op_budget():
    """Op budget of the front end (its cost is most of the recipe's fixed per-step work
    on a CPU, docs/results.md): the power spectrum is two ``square`` (``aten::pow``)
    and one in-place ``add_``, without ``spectral_magnitude``'s ``pow(1)`` and its sum
    over an axis of 2."""
    from torch.profiler import profile

    fbank = DeviceFbank(n_mels=40)
    with profile() as prof:
        fbank(torch.rand(2, 8000) * 2 - 1)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::pow") == 2 and calls.get("aten::add_") == 1
    assert "aten::sum" not in calls


@pytest.mark.slow
def test_compiled_step_gives_the_eager_loss(corpus, tmp_path, recipe_args, capsys):
    """``--compile True`` (torch.compile of the whole step, inductor on the CPU): one epoch
    of a reduced encoder from the same seed logs the eager run's training loss and
    accuracy within 1e-5 (relative; measured 3e-7), and both runs end with close weights
    (measured: 4e-5 of the largest weight)."""
    torch._dynamo.reset()  # no earlier compile of the step's code in this process
    small = (
        "!new:maskproxy_losses.ResNetSE34L "
        "{channels: [8, 8, 8, 8], blocks: [1, 1, 1, 1], emb_dim: 64}"
    )
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile{compiled}"
        argv = recipe_args(corpus, out, embedding_model=small, precision="fp32")
        brain = recipe.train(argv + ["--compile", str(compiled)])
        assert (brain.train_step is not None) and (
            type(brain.train_step).__name__ == ("CompiledStep" if compiled else "SpeakerStep")
        )
        runs[compiled] = brain.train_stats, torch.load(out / "model" / "embedding_model.ckpt")
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    assert comp["loss"] == pytest.approx(eager["loss"], rel=1e-5)  # measured 3e-7
    assert comp["acc"] == pytest.approx(eager["acc"], abs=1e-6)
    for key, value in w_eager.items():
        if value.is_floating_point():
            torch.testing.assert_close(w_comp[key], value, rtol=1e-3, atol=1e-4)

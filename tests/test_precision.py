"""The ``auto`` precision choice, explicit values, and the inference autocast helper."""

import pytest
import torch
from speechbrain.utils.run_opts import RunOptions

from maskproxy_losses.utils import precision as P
from maskproxy_losses.utils.errors import InputError

pytestmark = pytest.mark.precision  # also run as if the CPU had / lacked native bf16

ZEN2_FLAGS = {"fpu", "sse2", "avx", "avx2", "fma", "sha_ni"}
ZEN4_FLAGS = ZEN2_FLAGS | {"avx512f", "avx512_bf16", "avx512_vnni"}
SPR_FLAGS = ZEN2_FLAGS | {"avx512f", "amx_tile", "amx_bf16", "amx_int8"}


def _cpu(monkeypatch, flags):
    monkeypatch.delenv(P.CPU_BF16_ENV, raising=False)  # the flags decide, not the test pass
    monkeypatch.setattr(P, "read_cpu_flags", lambda: flags)


@pytest.mark.parametrize("flags, flag", [(ZEN4_FLAGS, "avx512_bf16"), (SPR_FLAGS, "amx_bf16")])
def test_auto_picks_bf16_on_cpu_with_native_bf16(monkeypatch, flags, flag):
    _cpu(monkeypatch, flags)
    assert P.native_bf16("cpu") is True
    precision, reason = P.resolve_precision("auto", "cpu")
    assert precision == "bf16"
    assert reason.startswith("auto: CPU has ") and flag in reason and "bfloat16" in reason


def test_auto_picks_fp32_on_cpu_without_native_bf16(monkeypatch):
    _cpu(monkeypatch, ZEN2_FLAGS)
    assert P.native_bf16("cpu") is False
    precision, reason = P.resolve_precision("auto", torch.device("cpu"))
    assert precision == "fp32"
    assert reason == (
        "auto: CPU lacks native bfloat16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo): float32"
    )


def test_auto_is_fp32_when_cpu_flags_are_unknown(monkeypatch):
    _cpu(monkeypatch, None)  # not Linux
    precision, reason = P.resolve_precision(None, "cpu")
    assert precision == "fp32" and "unknown" in reason


def test_read_cpu_flags_parses_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    flags = P.read_cpu_flags(str(info))
    if flags is None:  # not Linux: the reader reports nothing by design
        pytest.skip("read_cpu_flags reads /proc/cpuinfo on Linux only")
    assert flags == {"fpu", "avx2", "avx512_bf16"}
    assert P.read_cpu_flags(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("value", ["fp32", "bf16", "fp16", "BF16 "])
def test_explicit_values_pass_through(monkeypatch, value):
    for flags in (ZEN2_FLAGS, ZEN4_FLAGS):
        _cpu(monkeypatch, flags)
        precision, reason = P.resolve_precision(value, "cpu")
        assert precision == value.strip().lower()
        assert reason == f"requested: {precision}"


@pytest.mark.parametrize("value", ["float32", "fp64", "", "bfloat16"])
def test_unknown_value_is_an_error(value):
    with pytest.raises(ValueError, match="unknown precision .*auto, fp32, bf16, fp16"):
        P.resolve_precision(value, "cpu")


@pytest.mark.parametrize("value, native", [("1", True), ("0", False)])
def test_environment_variable_overrides_the_cpu_flags(monkeypatch, value, native):
    for flags in (ZEN2_FLAGS, ZEN4_FLAGS, None):
        _cpu(monkeypatch, flags)
        monkeypatch.setenv(P.CPU_BF16_ENV, value)
        assert P.native_bf16("cpu") is native
        precision, reason = P.resolve_precision("auto", "cpu")
        assert precision == ("bf16" if native else "fp32")
        assert f"as set by MASKPROXY_CPU_BF16={value}" in reason
        assert P.resolve_precision("fp32", "cpu")[0] == "fp32"  # explicit values still win
    assert P.resolve_precision("auto", "meta")[0] == "fp32"  # only the CPU answer is forced


def test_environment_variable_unset_or_empty_reads_the_flags(monkeypatch):
    _cpu(monkeypatch, ZEN4_FLAGS)
    monkeypatch.setenv(P.CPU_BF16_ENV, "")
    assert P.resolve_precision("auto", "cpu")[0] == "bf16"
    monkeypatch.setenv(P.CPU_BF16_ENV, "yes")
    with pytest.raises(InputError, match=r"MASKPROXY_CPU_BF16='yes': expected 1, 0 or unset"):
        P.resolve_precision("auto", "cpu")


def test_other_devices_get_fp32():
    assert P.resolve_precision("auto", "meta")[0] == "fp32"


def test_autocast_for_bf16_on_cpu_really_casts():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with P.autocast_for("bf16", "cpu"):
        out = a @ b
        lin = torch.nn.functional.linear(a, b.t())
    assert out.dtype == torch.bfloat16 and lin.dtype == torch.bfloat16
    expected = a.bfloat16().float() @ b.bfloat16().float()
    assert torch.allclose(out.float(), expected, rtol=1e-2, atol=1e-2)
    assert (a @ b).dtype == torch.float32  # autocast ends with the block


def test_autocast_for_fp32_leaves_float32_alone():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with P.autocast_for("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        out = a @ b
    assert out.dtype == torch.float32
    assert torch.equal(out, a @ b)


def test_autocast_for_auto_follows_the_cpu(monkeypatch):
    a = torch.randn(2, 2)
    _cpu(monkeypatch, ZEN4_FLAGS)
    with P.autocast_for("auto", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    _cpu(monkeypatch, ZEN2_FLAGS)
    with P.autocast_for("auto", "cpu"):
        assert (a @ a).dtype == torch.float32


def test_resolve_run_precision_auto_from_hparams(monkeypatch):
    _cpu(monkeypatch, ZEN4_FLAGS)
    opts, reason = P.resolve_run_precision({"precision": "auto"}, RunOptions(), device="cpu")
    assert opts.precision == "bf16" and "precision" in opts.overridden_args
    assert reason.startswith("auto: CPU has avx512_bf16")
    _cpu(monkeypatch, ZEN2_FLAGS)
    opts, _ = P.resolve_run_precision({}, RunOptions(device="cpu"))  # no key: auto
    assert opts.precision == "fp32"


def test_resolve_run_precision_command_line_wins(monkeypatch):
    _cpu(monkeypatch, ZEN4_FLAGS)
    given = RunOptions(precision="fp32", overridden_args={"precision"})
    opts, reason = P.resolve_run_precision({"precision": "auto"}, given, device="cpu")
    assert opts.precision == "fp32" and reason == "requested: fp32"
    # Brain takes a command-line value over hparams: the resolved one is what it uses
    assert "precision" in opts.overridden_args and given.overridden_args == {"precision"}


def test_resolve_run_precision_eval_key_and_device_from_run_opts(monkeypatch):
    _cpu(monkeypatch, ZEN4_FLAGS)
    opts, _ = P.resolve_run_precision(
        {"eval_precision": "auto"}, {"device": "cpu"}, key="eval_precision"
    )
    assert opts.eval_precision == "bf16" and opts.precision == "fp32"


def test_brain_uses_the_resolved_precision(monkeypatch):
    import speechbrain as sb

    _cpu(monkeypatch, ZEN4_FLAGS)
    hparams = {"precision": "auto"}
    opts, _ = P.resolve_run_precision(hparams, RunOptions(device="cpu"))
    brain = sb.Brain(modules={"lin": torch.nn.Linear(2, 2)}, hparams=hparams, run_opts=opts)
    assert brain.precision == "bf16"
    with brain.training_ctx:
        assert brain.modules.lin(torch.ones(1, 2)).dtype == torch.bfloat16


def _gpu(monkeypatch, native=True):
    real = P._bf16_support

    def support(device):
        if torch.device(device).type == "cuda":
            return native, f"GPU H100 {'supports' if native else 'lacks'} native bfloat16"
        return real(device)

    monkeypatch.setattr(P, "_bf16_support", support)


def test_gpu_auto_is_float32_unless_bf16_is_measured_faster(monkeypatch):
    _gpu(monkeypatch)
    assert P.resolve_precision("auto", "cuda:0") == (
        "fp32",
        "auto: GPU H100 supports native bfloat16, bfloat16 not measured faster here: float32",
    )
    calls = []

    def measure(answer):
        calls.append(answer)
        return answer, f"measured: {answer}"

    assert P.resolve_precision("auto", "cuda:0", lambda: measure("bf16"))[0] == "bf16"
    precision, why = P.resolve_precision("auto", "cuda", lambda: measure("fp32"))
    assert precision == "fp32" and why.endswith("measured: fp32") and calls == ["bf16", "fp32"]
    assert P.resolve_precision("bf16", "cuda:0", lambda: measure("fp32"))[0] == "bf16"
    _gpu(monkeypatch, native=False)
    assert P.resolve_precision("auto", "cuda:0", lambda: measure("bf16"))[0] == "fp32"
    assert len(calls) == 2  # no measurement without native bfloat16 (or when asked)


def test_the_probe_picks_bf16_only_when_clearly_faster():
    from maskproxy_losses.training.precision_probe import choose

    assert choose({"fp32": 1313.0, "bf16": 1112.0})[0] == "fp32"  # the H100 at 40 / batch
    assert choose({"fp32": 100.0, "bf16": 104.0})[0] == "fp32"  # within the 5 % margin
    precision, why = choose({"fp32": 100.0, "bf16": 106.0})
    assert precision == "bf16" and why.startswith("measured 100 utt/s in float32 (TF32), 106")


def test_the_probe_measures_once_and_keeps_its_choice(monkeypatch, tmp_path):
    """The choice is saved with the GPU, batch shape and torch version, reused while they
    match (a resumed run keeps its precision), measured again when they change; under
    DDP nothing is measured."""
    import json

    from maskproxy_losses import ResNetSE34L
    from maskproxy_losses.training import precision_probe as probe

    timed = []

    def fake_time_step(model, shape, device, precision, steps, warmup):
        timed.append((tuple(shape), precision))
        return {"fp32": 100.0, "bf16": 150.0}[precision]

    monkeypatch.setattr(probe, "time_step", fake_time_step)
    monkeypatch.setattr(probe, "_gpu_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    hparams = {
        "embedding_model": ResNetSE34L(channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1)),
        "speakers_per_batch": 200, "utts_per_speaker": 2, "crop_frames": 350, "n_mels": 40,
        "save_folder": str(tmp_path / "save"),
    }  # fmt: skip
    assert probe.gpu_precision_probe(hparams, "cuda:0")()[0] == "bf16"
    assert timed == [((400, 352, 40), "fp32"), ((400, 352, 40), "bf16")]
    saved = json.loads((tmp_path / "save" / probe.PROBE_FILE).read_text())
    assert saved["rates"] == {"fp32": 100.0, "bf16": 150.0} and saved["shape"] == [400, 352, 40]
    precision, why = probe.gpu_precision_probe(hparams, "cuda:0")()
    assert precision == "bf16" and "saved in" in why and len(timed) == 2
    hparams["utts_per_speaker"] = [2, 3]  # another batch shape: measured again
    assert probe.gpu_precision_probe(hparams, "cuda:0")()[0] == "bf16" and len(timed) == 4
    monkeypatch.setenv("WORLD_SIZE", "2")
    hparams["crop_frames"] = 200
    assert probe.gpu_precision_probe(hparams, "cuda:0")() == (
        "fp32",
        "not measured under DDP (no saved choice): float32",
    )
    assert len(timed) == 4


def test_the_probe_times_real_training_steps_on_the_cpu():
    from maskproxy_losses import ResNetSE34L
    from maskproxy_losses.training.precision_probe import time_step

    model = ResNetSE34L(channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1), emb_dim=8)
    before = [p.detach().clone() for p in model.parameters()]
    assert time_step(model, (4, 60, 40), "cpu", "bf16", steps=2, warmup=1) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # trained

"""Tests for the ONNX export of model directories (maskproxy_losses.inference.onnx_export).

Two exports are made once per module (about 10-20 s each on 2 CPU cores): a freshly
initialised, shallow ResNetSE34L with the SpeechBrain "fbank" front end, and the
authors' checkpoint fixture converted with the "authors" front end. Both are
compared with SpeechBrain's ``EncoderClassifier.encode_batch`` on several lengths
and batch sizes; the fixture also with the authors' own embeddings.
"""

import contextlib
import errno
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from maskproxy_losses.cli import main as cli_main  # noqa: E402
from maskproxy_losses.inference import onnx_export as eo  # noqa: E402
from maskproxy_losses.inference.authors_checkpoint import convert_checkpoint  # noqa: E402
from maskproxy_losses.inference.export import export_model  # noqa: E402
from maskproxy_losses.inference.onnx_export import export_onnx, relative_error  # noqa: E402
from maskproxy_losses.inference.onnx_runtime import OnnxEmbedder  # noqa: E402
from maskproxy_losses.models.resnetse34l import ResNetSE34L  # noqa: E402
from maskproxy_losses.utils.errors import InputError  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CKPT = FIXTURES / "resnetse34l_original_layout.model"
EXPECTED = FIXTURES / "resnetse34l_original_layout_expected.npz"
# (samples, batch size): 800 samples (the shortest input the project embeds), 0.5 s,
# 1.3 s and 3 s, each length once, batch sizes 1 and 3 both used (kept small for time).
CASES = ((800, 3), (8000, 1), (20800, 3), (48000, 1))
TOL = 1e-4  # relative, ONNX vs PyTorch
FIXTURE_TOL = 1e-3  # relative, vs the authors' embeddings (as tests/test_convert.py)


def _encoder_classifier(model_dir, savedir):
    from speechbrain.inference.speaker import EncoderClassifier

    return EncoderClassifier.from_hparams(source=str(model_dir), savedir=str(savedir))


def _cli(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = cli_main(["export-onnx", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _no_temps(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def fbank_export(tmp_path_factory):
    """(model dir, onnx path, EncoderClassifier) of a fresh shallow ResNetSE34L, fbank."""
    root = tmp_path_factory.mktemp("fbank")
    torch.manual_seed(0)
    model = ResNetSE34L(n_mels=40, blocks=(1, 1, 1, 1), emb_dim=64).eval()
    # Move the batch-norm statistics off (0, 1) so that they matter in the graph.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model_dir = export_model(root / "model", model, frontend="fbank", n_mels=40)
    onnx_path = root / "out" / "model.onnx"
    onnx_path.parent.mkdir()
    onnx_path.write_text("an older file")  # replaced through the CLI's --overwrite
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["export-onnx", str(model_dir), str(onnx_path), "--overwrite"]) == 0
    assert f"wrote {onnx_path}" in printed.getvalue()
    return model_dir, onnx_path, _encoder_classifier(model_dir, root / "save")


@pytest.fixture(scope="module")
def authors_export(tmp_path_factory):
    """(model dir, onnx path, EncoderClassifier) of the converted authors' checkpoint."""
    if not CKPT.is_file():
        pytest.skip(f"fixture checkpoint not found: {CKPT}")
    root = tmp_path_factory.mktemp("authors")
    model_dir = convert_checkpoint(CKPT, root / "model")
    onnx_path = export_onnx(model_dir, root / "model.onnx")
    assert onnx_path == (root / "model.onnx").absolute() and onnx_path.is_file()
    return model_dir, onnx_path, _encoder_classifier(model_dir, root / "save")


def _waveforms(batch, samples, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, samples, generator=gen) * 2 - 1) * 0.5


def _check_parity(onnx_path, classifier):
    """ONNX vs encode_batch on every (samples, batch size) of CASES."""
    session = OnnxEmbedder(onnx_path, threads=2)
    worst = 0.0
    for seed, (samples, batch) in enumerate(CASES):
        wavs = _waveforms(batch, samples, seed)
        ref = classifier.encode_batch(wavs)
        assert ref.shape[:2] == (batch, 1)
        got = session(wavs.numpy())
        assert got.shape == (batch, ref.shape[-1]) and got.dtype == np.float32
        whole, per_row = relative_error(got, ref.squeeze(1).numpy())
        assert per_row < TOL, (samples, batch, whole, per_row)
        worst = max(worst, per_row)
    print(f"ONNX vs encode_batch: worst per-row relative error {worst:.3g}")
    return worst


def test_fbank_frontend_parity(fbank_export):
    model_dir, onnx_path, classifier = fbank_export
    import onnx

    graph = onnx.load(str(onnx_path)).graph  # replaced the older file, a valid model
    assert [i.name for i in graph.input] == ["wavs"]
    assert [o.name for o in graph.output] == ["embeddings"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)
    assert _no_temps(onnx_path.parent) == []
    _check_parity(onnx_path, classifier)
    # A 1-D waveform is one utterance; rows are independent of the batch they are in.
    session = OnnxEmbedder(onnx_path)
    wavs = _waveforms(3, 16000, seed=99).numpy()
    one = session(wavs[1])
    assert one.shape == (1, 64)
    assert relative_error(one, session(wavs)[1:2])[1] < TOL


def test_authors_frontend_parity(authors_export):
    _, onnx_path, classifier = authors_export
    _check_parity(onnx_path, classifier)


def test_authors_fixture_embeddings(authors_export):
    if not EXPECTED.is_file():
        pytest.skip(f"fixture embeddings not found: {EXPECTED}")
    expected = dict(np.load(EXPECTED))
    session = OnnxEmbedder(authors_export[1])
    worst = 0.0
    for name in ("a", "b"):
        wav = expected[f"wav_{name}"].astype(np.float32) / 32768.0
        got, ref = session(wav[None]), expected[f"emb_{name}"]
        assert got.shape == ref.shape == (1, 512)
        worst = max(worst, relative_error(got, ref)[1])
    print(f"ONNX vs the authors' embeddings: max relative error {worst:.3g}")
    assert worst < FIXTURE_TOL


def test_onnx_embedder_rejects_bad_shapes(fbank_export):
    session = OnnxEmbedder(fbank_export[1])
    with pytest.raises(InputError, match="at least 800 samples"):
        session(np.zeros((2, 799), np.float32))
    with pytest.raises(InputError, match=r"\[batch, samples\]"):
        session(np.zeros((2, 1, 16000), np.float32))


# --- bad input: one `error:` line, exit code 2, nothing written ----------------------


def test_cli_missing_model_dir(tmp_path, capsys):
    missing = tmp_path / "no_such_model"
    code, out, err = _cli([str(missing), str(tmp_path / "x.onnx")], capsys)
    assert code == 2 and err.startswith("error:") and str(missing) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_output_exists(fbank_export, tmp_path, capsys):
    out_path = tmp_path / "model.onnx"
    out_path.write_text("keep me")
    code, _, err = _cli([str(fbank_export[0]), str(out_path)], capsys)
    assert code == 2 and err.startswith("error:") and "--overwrite" in err
    assert str(out_path) in err and out_path.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _copy_model(model_dir, dest, ckpt_bytes=None, with_yaml=True):
    dest.mkdir()
    if with_yaml:
        (dest / "hyperparams.yaml").write_text((model_dir / "hyperparams.yaml").read_text())
    data = (model_dir / "embedding_model.ckpt").read_bytes() if ckpt_bytes is None else ckpt_bytes
    (dest / "embedding_model.ckpt").write_bytes(data)
    return dest


def test_bad_model_dirs(fbank_export, tmp_path, capsys):
    model_dir = fbank_export[0]
    good = (model_dir / "embedding_model.ckpt").read_bytes()
    other = tmp_path / "other.ckpt"
    torch.save(ResNetSE34L(emb_dim=32).state_dict(), other)
    cases = {
        "no_yaml": (
            _copy_model(model_dir, tmp_path / "no_yaml", with_yaml=False),
            "not a model directory (no hyperparams.yaml)",
        ),
        "corrupt": (
            _copy_model(model_dir, tmp_path / "corrupt", good[: len(good) // 2]),
            "not a readable weights-only checkpoint",
        ),
        "mismatch": (
            _copy_model(model_dir, tmp_path / "mismatch", other.read_bytes()),
            "does not fit the model",
        ),
    }
    outs = tmp_path / "outs"
    outs.mkdir()
    for name, (folder, message) in cases.items():
        code, _, err = _cli([str(folder), str(outs / f"{name}.onnx")], capsys)
        assert code == 2 and err.startswith("error:") and message in err, (name, err)
        assert str(folder) in err and "Traceback" not in err
    assert list(outs.iterdir()) == []


def test_unwritable_output_folder(fbank_export, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = _cli([str(fbank_export[0]), str(blocker / "model.onnx")], capsys)
    assert code == 2 and err.startswith("error:") and str(blocker) in err
    with pytest.raises(InputError, match="is a directory"):
        export_onnx(fbank_export[0], tmp_path)


def test_missing_onnx_packages(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    code, _, err = _cli([str(tmp_path), str(tmp_path / "x.onnx")], capsys)
    assert code == 2 and "onnxscript" in err
    assert "pip install onnx onnxscript onnxruntime" in err and "pip install '.[onnx]'" in err


def test_failed_export_leaves_nothing(fbank_export, tmp_path, monkeypatch):
    def half_written(model, args, f, **kwargs):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(eo.torch.onnx, "export", half_written)
    with pytest.raises(
        InputError, match="the ONNX exporter failed .RuntimeError: exporter crashed"
    ):
        export_onnx(fbank_export[0], tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_help(capsys):
    code, out, _ = _cli(["--help"], capsys)
    assert code == 0
    for word in ("MODEL_DIR", "OUT.onnx", "--overwrite", "encode_batch", "pip install"):
        assert word in out


@pytest.mark.parametrize("frontend", ["fbank", "authors"])
def test_conv_stft_swap_keeps_features(frontend):
    from maskproxy_losses.models.frontend import build_frontend

    compute, norm = build_frontend(frontend)
    swapped = eo._swap_stft(compute)
    assert sum(isinstance(m, eo.ConvSTFT) for m in swapped.modules()) == 1
    assert not any(isinstance(m, eo.ConvSTFT) for m in compute.modules())  # a copy
    wavs = _waveforms(2, 12345, seed=5)
    ref, got = norm(compute(wavs), torch.ones(2)), norm(swapped(wavs), torch.ones(2))
    assert got.shape == ref.shape
    assert relative_error(got.numpy(), ref.numpy())[1] < TOL


def test_metadata_and_named_axes(fbank_export):
    """The file carries the model card, the calibration-free facts and named dynamic axes."""
    import json

    import onnx

    from maskproxy_losses import __version__
    from maskproxy_losses.inference.model_card import read_model_card

    model_dir, onnx_path, classifier = fbank_export
    graph = onnx.load(str(onnx_path)).graph
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert dims == {"wavs": ["batch", "samples"], "embeddings": ["batch", 64]}
    meta = OnnxEmbedder(onnx_path).metadata
    assert json.loads(meta["model_card"]) == read_model_card(model_dir)
    dim = classifier.encode_batch(_waveforms(1, 8000, 0)).shape[-1]
    assert (meta["sample_rate"], meta["embedding_dim"], meta["frontend"]) == (
        "16000",
        str(dim),
        "fbank",
    )
    assert meta["encoder"] == "maskproxy_losses.models.resnetse34l.ResNetSE34L"
    assert meta["package_version"] == __version__ and meta["license"] == "Apache-2.0"
    assert "calibration" not in meta  # the directory has none


def test_metadata_of_a_directory_without_card_or_with_calibration(tmp_path):
    import json
    import shutil

    from maskproxy_losses.scoring.calibration import Calibration

    old = tmp_path / "v0_1"
    shutil.copytree(FIXTURES / "model_dir_v0_1", old)  # exported before model cards
    Calibration(scale=3.0, offset=-1.0).save(old / "calibration.json")
    meta = OnnxEmbedder(export_onnx(old, tmp_path / "old.onnx")).metadata
    card = json.loads(meta["model_card"])
    assert card["source"] == {"how": "no model card"} and card["model"]["encoder"] == "ResNetSE34L"
    assert json.loads(meta["calibration"])["scale"] == 3.0
    assert meta["embedding_dim"] == str(card["model"]["embedding_dim"])


def test_output_inside_the_model_directory_is_refused(fbank_export, capsys):
    model_dir = Path(fbank_export[0])
    ckpt = model_dir / "embedding_model.ckpt"
    before = ckpt.read_bytes()
    code, _, err = _cli([model_dir, ckpt, "--overwrite"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {ckpt}: is an input of this run (the model directory's {ckpt.name})" in err
    assert ckpt.read_bytes() == before and _no_temps(model_dir) == []


def test_a_full_disk_is_a_disk_error_not_an_opset_problem(fbank_export, tmp_path, monkeypatch):
    def full(model, args, f, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eo.torch.onnx, "export", full)
    with pytest.raises(OSError) as err:
        export_onnx(fbank_export[0], tmp_path / "model.onnx")
    assert err.value.errno == errno.ENOSPC and "--opset" not in str(err.value)
    assert err.value.filename == str(tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []

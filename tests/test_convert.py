"""Tests for the front ends, export_model and the authors'-checkpoint converter."""

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES  # noqa: E402  (copies of the shared authors' fixtures)

from maskproxy_losses.cli import main as cli_main
from maskproxy_losses.inference.authors_checkpoint import convert_checkpoint
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models import frontend
from maskproxy_losses.models.frontend import InstanceNorm, build_frontend
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.errors import InputError

CKPT = FIXTURES / "resnetse34l_original_layout.model"
EXPECTED = FIXTURES / "resnetse34l_original_layout_expected.npz"
REPO = Path(__file__).resolve().parents[1]


def _load_sb(cls_name, source, savedir):
    from speechbrain.inference import speaker

    return getattr(speaker, cls_name).from_hparams(source=str(source), savedir=str(savedir))


@pytest.fixture(scope="module")
def authors_state():
    if not CKPT.is_file():
        pytest.skip(f"fixture checkpoint not found: {CKPT}")
    return torch.load(CKPT, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def expected():
    if not EXPECTED.is_file():
        pytest.skip(f"fixture embeddings not found: {EXPECTED}")
    return dict(np.load(EXPECTED))


@pytest.fixture(scope="module")
def converted(tmp_path_factory, authors_state):
    return convert_checkpoint(CKPT, tmp_path_factory.mktemp("conv") / "model")


def _save(tmp_path, state, name="bad.model"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _assert_nothing_written(out):
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- front end -------------------------------------------------------------------


def test_instance_norm_matches_torch_and_respects_lengths():
    feats = torch.randn(2, 90, 40) * 3 + 1
    ref = torch.nn.InstanceNorm1d(40)(feats.transpose(1, 2)).transpose(1, 2)
    norm = InstanceNorm()
    torch.testing.assert_close(norm(feats, torch.ones(2)), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm(feats), ref, rtol=1e-5, atol=1e-5)
    padded = torch.cat([feats[:1, :60], torch.full((1, 30, 40), 100.0)], dim=1)
    out = norm(torch.cat([padded, feats[1:]]), torch.tensor([60 / 90, 1.0]))
    torch.testing.assert_close(out[0, :60], norm(feats[:1, :60])[0], rtol=1e-5, atol=1e-5)
    assert out[0, 60:].abs().max() == 0


def test_frontend_doctest():
    assert doctest.testmod(frontend, raise_on_error=False).failed == 0


def test_authors_frontend_scale_and_shape():
    compute, _ = build_frontend("authors", 40)
    wav = torch.rand(1, 40000) * 2 - 1
    feats = compute(wav)
    assert feats.shape == (1, 251, 40) and feats.dtype == torch.float32
    # Scaling by 32768 shifts log-power by log(32768**2).
    unscaled = (compute.melspec(wav) + 1e-6).log().transpose(1, 2)
    loud = feats[unscaled > 0]
    torch.testing.assert_close(
        loud - unscaled[unscaled > 0],
        torch.full_like(loud, 2 * np.log(32768.0)),
        rtol=1e-4,
        atol=1e-3,
    )
    with pytest.raises(ValueError, match="front end"):
        build_frontend("nope")


# --- conversion of the authors' checkpoint ---------------------------------------


def test_fixture_embeddings_through_encoder_classifier(converted, expected, tmp_path, monkeypatch):
    assert sorted(p.name for p in converted.iterdir()) == [
        "README.md",
        "embedding_model.ckpt",
        "hyperparams.yaml",
    ]
    monkeypatch.chdir(tmp_path)  # load through a relative source from another cwd
    enc = _load_sb("EncoderClassifier", os.path.relpath(converted, tmp_path), "save")
    worst_abs = worst_rel = 0.0
    for name in ("a", "b"):
        wav = torch.from_numpy(expected[f"wav_{name}"].astype(np.float32)) / 32768.0
        emb = enc.encode_batch(wav).squeeze(1)
        ref = torch.from_numpy(expected[f"emb_{name}"])
        assert emb.shape == ref.shape == (1, 512)
        err = (emb - ref).abs().max().item()
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / ref.abs().max().item())
    print(f"fixture embedding error: max abs {worst_abs:.3g}, max rel {worst_rel:.3g}")
    assert worst_rel < 1e-3


def test_converted_model_card_says_where_it_comes_from(converted, authors_state):
    import hashlib

    from maskproxy_losses.inference.model_card import read_model_card

    card = read_model_card(converted)
    assert card["source"]["checkpoint"] == CKPT.name
    assert card["source"]["checkpoint_sha256"] == hashlib.sha256(CKPT.read_bytes()).hexdigest()
    proxies = next(v for k, v in authors_state.items() if k.endswith("__L__.proxies"))
    assert card["training"]["data"]["speakers"] == proxies.shape[0]
    assert card["model"]["frontend"] == "authors" and card["model"]["embedding_dim"] == 512
    n_params = sum(
        v.numel()
        for k, v in authors_state.items()
        if ".__S__." in f".{k}"
        and "torchfb" not in k
        and "num_batches" not in k
        and "running_" not in k
    )
    assert card["model"]["parameters"] == n_params
    assert card["evaluation"] == {} and "Not evaluated" in (converted / "README.md").read_text()


def test_verify_files(converted, expected, tmp_path):
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], expected[f"wav_{name}"], 16000, subtype="PCM_16")
    verifier = _load_sb("SpeakerRecognition", converted, tmp_path / "save")
    score, decision = verifier.verify_files(str(paths[0]), str(paths[1]))
    ref = torch.nn.functional.cosine_similarity(
        torch.from_numpy(expected["emb_a"]), torch.from_numpy(expected["emb_b"])
    )
    assert score.shape == (1,) and decision.dtype == torch.bool
    torch.testing.assert_close(score, ref, rtol=1e-4, atol=1e-4)


def test_module_prefix_is_stripped(authors_state, converted, tmp_path):
    path = _save(tmp_path, {f"module.{k}": v for k, v in authors_state.items()})
    out = convert_checkpoint(path, tmp_path / "out")
    a = torch.load(out / "embedding_model.ckpt", weights_only=True)
    b = torch.load(converted / "embedding_model.ckpt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith(("__", "torchfb")) for k in a)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("__S__.layer3.2.bn1.running_var"),
            "missing keys (1): layer3.2.bn1.running_var",
        ),
        (
            lambda s: s.update({"__S__.extra.weight": torch.zeros(3)}),
            "unexpected keys (1): extra.weight",
        ),
        (
            lambda s: s.update({"__S__.layer1.0.conv1.weight": torch.zeros(16, 16, 5, 5)}),
            "mis-shaped keys (1): layer1.0.conv1.weight [16, 16, 5, 5] (model: [16, 16, 3, 3])",
        ),
        (lambda s: s.update({"stray": torch.zeros(1)}), "unexpected keys (1): stray"),
    ],
    ids=["missing", "unexpected", "shape", "unprefixed"],
)
def test_mismatched_checkpoint(authors_state, tmp_path, edit, message):
    state = dict(authors_state)
    edit(state)
    path = _save(tmp_path, state)
    with pytest.raises(InputError) as info:
        convert_checkpoint(path, tmp_path / "out")
    assert isinstance(info.value, ValueError)
    assert message in str(info.value) and str(path) in str(info.value)
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("kind", ["garbage", "list", "no_model_keys", "absent"])
def test_not_a_checkpoint(tmp_path, kind):
    path = tmp_path / "x.model"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    elif kind == "no_model_keys":
        torch.save({"__L__.w": torch.zeros(1)}, path)
    with pytest.raises(InputError, match=re.escape(str(path))):
        convert_checkpoint(path, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_existing_output_dir(converted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="overwrite"):
        convert_checkpoint(CKPT, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    convert_checkpoint(CKPT, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "embedding_model.ckpt",
        "hyperparams.yaml",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_checkpoint(CKPT, empty)  # an empty directory is not "in use"
    assert (empty / "hyperparams.yaml").is_file()


@pytest.mark.parametrize("overwrite", [False, True])
def test_no_half_written_dir_on_failure(tmp_path, monkeypatch, overwrite):
    import maskproxy_losses.inference.export as export

    out = tmp_path / "out"
    if overwrite:
        out.mkdir()
        (out / "old.txt").write_text("old")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "load_hyperpyyaml", broken)  # fails after files are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(out, ResNetSE34L(), overwrite=overwrite)
    if overwrite:
        assert [p.name for p in out.iterdir()] == ["old.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    else:
        _assert_nothing_written(out)


def test_cli(authors_state, tmp_path, capsys):
    assert cli_main(["convert", str(CKPT), str(tmp_path / "ok")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["convert", str(CKPT), str(tmp_path / "ok")]) == 2
    assert "error:" in capsys.readouterr().err

    state = dict(authors_state)
    del state["__S__.fc.bias"]
    bad = _save(tmp_path, state)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "maskproxy_losses", "convert", str(bad), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "missing keys (1): fc.bias" in proc.stderr and "Traceback" not in proc.stderr
    _assert_nothing_written(tmp_path / "out")


def test_cli_help():
    proc = subprocess.run(
        [sys.executable, "-m", "maskproxy_losses", "convert", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "CHECKPOINT" in proc.stdout and "--overwrite" in proc.stdout


# --- export with the training front end --------------------------------------------


def test_export_fbank_preset_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = ResNetSE34L(n_mels=80, emb_dim=192).eval()
    out = export_model(tmp_path / "fbank", model, frontend="fbank", n_mels=80)
    text = (out / "hyperparams.yaml").read_text()
    assert "!new:speechbrain.lobes.features.Fbank" in text and "sentence" in text
    enc = _load_sb("EncoderClassifier", out, tmp_path / "save")
    wav = torch.rand(2, 16000) * 0.2 - 0.1
    lens = torch.tensor([1.0, 0.75])
    compute, norm = build_frontend("fbank", 80)
    with torch.no_grad():
        ref = model(norm(compute(wav), lens), lens)
    torch.testing.assert_close(enc.encode_batch(wav, lens), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(FileExistsError):
        export_model(out, model, frontend="fbank", n_mels=80)
    with pytest.raises(ValueError, match="mels"):
        export_model(tmp_path / "x", model, frontend="fbank", n_mels=40)
    with pytest.raises(TypeError, match="init_kwargs"):
        export_model(tmp_path / "y", torch.nn.Linear(2, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fbank", "save"]


def test_leftovers_of_a_killed_conversion_are_removed(tmp_path):
    # what a conversion killed with -9 leaves: a hidden temporary directory named after
    # its (now dead) process; a live process's temporary must stay
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-{dead.pid}-0123abcd-out"
    stale.mkdir()
    (stale / "embedding_model.ckpt").write_bytes(b"x" * 1000)
    live = tmp_path / f".tmp-{os.getpid()}-89abcdef-other"
    live.mkdir()
    assert cli_main(["convert", str(CKPT), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]


def test_overwrite_refuses_an_output_dir_holding_the_checkpoint(tmp_path, cli):
    folder = tmp_path / "dir"
    folder.mkdir()
    ckpt = folder / "authors.model"
    ckpt.write_bytes(CKPT.read_bytes())
    code, _, err = cli("convert", ckpt, folder, "--overwrite")
    assert code == 2 and err.count("\n") == 1, err
    assert f"error: {folder}: contains an input of this run (the checkpoint {ckpt})" in err
    assert ckpt.read_bytes() == CKPT.read_bytes() and os.listdir(folder) == ["authors.model"]


def test_a_full_disk_is_one_error_naming_the_output(tmp_path):
    """A file-size limit makes the checkpoint's write fail as a full disk would (torch.save
    to a file used to turn it into a RuntimeError naming nothing)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100000, 100000))\n"
        "from maskproxy_losses.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", code, "convert", str(CKPT), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {out}") and "File too large" in proc.stderr
    assert proc.stderr.count("\n") == 1 and ".tmp-" not in proc.stderr
    assert os.listdir(tmp_path) == []

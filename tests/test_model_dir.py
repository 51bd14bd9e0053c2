"""Loading model directories: the yaml check against code, and clear errors for bad files."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES  # noqa: E402

from maskproxy_losses.inference.export import export_model
from maskproxy_losses.inference.model_dir import check_hparams, load_encoder
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.errors import InputError

OLD_DIR = FIXTURES / "model_dir_v0_1"  # written by the export of release 0.1, before the re-layout
NEW_DIR = FIXTURES / "model_dir_v0_2"  # the same weights written by the 0.2 export


@pytest.mark.parametrize("folder", [OLD_DIR, NEW_DIR])
def test_directories_from_before_and_after_the_relayout_embed_the_same(folder, tmp_path):
    """0.1 named ``maskproxy_losses.encoder.ResNetSE34L``, 0.2 the new home; both load
    (safely, and through SpeechBrain's own EncoderClassifier) and give 0.1's embedding."""
    from speechbrain.inference.speaker import EncoderClassifier

    home = "encoder" if folder == OLD_DIR else "models.resnetse34l"
    assert f"!new:maskproxy_losses.{home}.ResNetSE34L" in (folder / "hyperparams.yaml").read_text()
    want = np.load(FIXTURES / "model_dir_v0_1_expected.npz")
    wav = torch.from_numpy(want["wav"])[None]
    for encoder in (
        load_encoder(folder),
        EncoderClassifier.from_hparams(source=str(folder), savedir=str(tmp_path / "sb")),
    ):
        emb = encoder.encode_batch(wav).reshape(-1).numpy()
        np.testing.assert_allclose(emb, want["emb"], rtol=1e-5, atol=1e-6)


def test_a_new_export_names_the_new_homes(tmp_path):
    model = ResNetSE34L(channels=(4, 4, 8, 8), blocks=(1, 1, 1, 1), emb_dim=16)
    text = (
        export_model(tmp_path / "m", model, frontend="authors") / "hyperparams.yaml"
    ).read_text()
    assert "!new:maskproxy_losses.models.resnetse34l.ResNetSE34L" in text
    assert "!new:maskproxy_losses.models.frontend.AuthorsFbank" in text
    assert "maskproxy_losses.encoder" not in text and "maskproxy_losses.frontend" not in text


@pytest.fixture()
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(4, 4, 8, 8), blocks=(1, 1, 1, 1), emb_dim=16).eval()
    return export_model(tmp_path / "model", model), model


def test_loads_the_exported_weights(model_dir):
    path, model = model_dir
    encoder = load_encoder(path)
    for name, value in model.state_dict().items():
        assert torch.equal(encoder.mods.embedding_model.state_dict()[name], value), name


def test_code_in_hyperparams_is_refused_unless_trusted(model_dir, tmp_path):
    path, _ = model_dir
    marker = tmp_path / "ran"
    yaml_path = path / "hyperparams.yaml"
    yaml_path.write_text(yaml_path.read_text() + f"\nboom: !apply:os.system ['touch {marker}']\n")
    with pytest.raises(InputError) as err:
        load_encoder(path)
    line = len(yaml_path.read_text().splitlines())
    assert f"{yaml_path}:{line}: !apply:os.system" in str(err.value)
    assert "refusing to load it" in str(err.value) and not marker.exists()
    load_encoder(path, trust=True)  # the user's explicit choice: the yaml runs
    assert marker.exists()


@pytest.mark.parametrize(
    "tag",
    ["!name:builtins.eval", "!new:collections.OrderedDict", "!module:os", "!include:other.yaml"],
)
def test_every_other_tag_is_refused(model_dir, tag):
    path, _ = model_dir
    (path / "hyperparams.yaml").write_text(f"x: {tag}\n")
    with pytest.raises(InputError, match=tag):
        check_hparams(path)


def _expect(path, *parts):
    with pytest.raises(InputError) as err:
        load_encoder(path)
    for part in parts:
        assert part in str(err.value)
    assert "sb_model" not in str(err.value) and "/tmp/tmp" not in str(err.value)


def test_bad_checkpoints_name_the_users_path(model_dir):
    path, _ = model_dir
    ckpt = path / "embedding_model.ckpt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])  # truncated
    _expect(path, f"{ckpt}: not a readable weights-only checkpoint")
    ckpt.write_bytes(b"\x00garbage" * 100)  # corrupted
    _expect(path, f"{ckpt}: not a readable weights-only checkpoint")
    other = ResNetSE34L(channels=(4, 4, 8, 16), blocks=(1, 1, 1, 1), emb_dim=16)
    torch.save(other.state_dict(), ckpt)  # mis-shaped
    _expect(path, f"{ckpt}: does not fit the model in hyperparams.yaml", "size mismatch")
    ckpt.unlink()
    _expect(path, f"{ckpt}: checkpoint not found")
    (path / "hyperparams.yaml").unlink()
    _expect(path, f"{path}: not a model directory (no hyperparams.yaml)")
    shutil.rmtree(path)
    _expect(path, f"{path}: model directory not found")


def test_verification_cli_refuses_an_untrusted_directory(model_dir, tmp_path):
    path, _ = model_dir
    yaml_path = path / "hyperparams.yaml"
    yaml_path.write_text(yaml_path.read_text() + "\nboom: !apply:print ['hello']\n")
    script = (
        Path(__file__).resolve().parents[1]
        / "recipes/VoxCeleb/MaskProxy/speaker_verification_cosine.py"
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(script.parent / "hparams/verification.yaml"),
            "--pretrained_path",
            str(path),
            "--output_folder",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: 2 problem(s) in the input:\n  {yaml_path}: names code")
    assert "Traceback" not in proc.stderr and "hello" not in proc.stdout


@pytest.mark.parametrize(
    "extra",
    [
        # HyperPyYAML re-parses a value in parentheses as a tuple with PyYAML's unsafe loader
        'x: (!!python/object/apply:os.system ["touch {marker}"])',
        "x: \"(!!python/object/apply:os.system ['touch {marker}'])\"",
        # ... also when the value is assembled by a !ref interpolation
        'a: "(!!python/object/apply:os.system"\nb: \'["touch {marker}"])\'\nc: !ref <a> <b>',
        "c: !ref <embedding_model.__class__>",  # attribute access
        "b: !ref <n_mels> ** <n_mels> ** <n_mels>",  # arithmetic that never ends
    ],
)
def test_plain_values_and_refs_never_run_code(model_dir, tmp_path, extra):
    path, model = model_dir
    marker = tmp_path / "ran"
    yaml_path = path / "hyperparams.yaml"
    yaml_path.write_text(yaml_path.read_text() + "\n" + extra.format(marker=marker) + "\n")
    try:
        encoder = load_encoder(path)
    except InputError as err:
        assert "only a whole <key> is accepted" in str(err)
    else:  # the value stays an inert string and the model is the exported one
        assert torch.equal(encoder.mods.embedding_model.fc.weight, model.fc.weight)
    assert not marker.exists()


def test_yaml_anchors_and_aliases_are_refused_before_they_expand(model_dir):
    """A 'billion laughs' file: 9 levels of 10 aliases each would build 10**9 list items
    (the old loader spent 45 s and 3 GB before a MemoryError); it is refused from the event
    stream, as is a single alias and an oversized file."""
    path, _ = model_dir
    yaml_path = path / "hyperparams.yaml"
    exported = yaml_path.read_text()
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    yaml_path.write_text(exported + "\n".join(lines) + "\n")
    first = len(exported.splitlines()) + 1
    with pytest.raises(InputError) as err:
        load_encoder(path)
    assert str(err.value).startswith(
        f"{yaml_path}:{first}: YAML anchor &a0: anchors and aliases are refused"
    )
    assert str(err.value).endswith("; 100 in this file")  # 10 anchors, 90 aliases
    yaml_path.write_text(exported + "n_mels2: *x\n")  # an alias alone (undefined, too)
    with pytest.raises(InputError, match=r"hyperparams.yaml:\d+: YAML alias \*x"):
        check_hparams(path)
    yaml_path.write_text(exported + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(InputError, match="more than the 1048576 a model directory's"):
        check_hparams(path)
    yaml_path.write_text(exported)
    load_encoder(path)  # the export itself has neither


def test_non_finite_weights_are_refused(model_dir):
    path, model = model_dir
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    torch.save(state, path / "embedding_model.ckpt")
    _expect(path, f"{path / 'embedding_model.ckpt'}: 1 weight tensor(s) hold NaN/Inf ({key})")

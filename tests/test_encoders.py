"""The encoders (ResNetSE34L, ResNet34, ECAPA-TDNN) and the recipe's encoder choice:
published sizes, SpeechBrain's ECAPA unchanged, padding, no host reads in the forward
pass, and the encoder yamls spliced into every loss yaml (issue 26)."""

import json
import math
import statistics

import pytest
import torch
from conftest import RECIPE
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN as SpeechBrainECAPA
from speechbrain.utils.seed import seed_everything

from maskproxy_losses.models.ecapa_tdnn import ECAPA_TDNN
from maskproxy_losses.models.frontend import build_frontend
from maskproxy_losses.models.resnet34 import ResNet34
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.training.hparams import compose_recipe, load_recipe_hparams, recipe_copy
from maskproxy_losses.utils.errors import InputError

HPARAMS = RECIPE / "hparams"
LOSSES = ("mp", "mmp", "mp_balance", "mmp_balance", "ap", "aam")
ENCODERS = {"resnetse34l": ResNetSE34L, "resnet34": ResNet34, "ecapa_tdnn": ECAPA_TDNN}


def _small(name):
    """A new encoder ``name`` of reduced width (40 mels, 16-dim embeddings)."""
    if name == "resnetse34l":
        return ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16)
    if name == "resnet34":
        return ResNet34(n_mels=40, channels=(4, 8, 8, 16), emb_dim=16)
    return ECAPA_TDNN(40, lin_neurons=16, channels=(32, 32, 32, 32, 96))


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _randomise_batch_norm(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)


def test_resnet34_is_the_published_network():
    # He et al.'s basic-block ResNet34 at 32-64-128-256 channels on 80 mels (WeSpeaker's
    # "ResNet34", 6.63 M parameters), counted layer by layer.
    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    channels, blocks, n_mels, emb = (32, 64, 128, 256), (3, 4, 6, 3), 80, 256
    want = conv(1, 32, 3) + bn(32)
    cin = 32
    for c, nb, stride in zip(channels, blocks, (1, 2, 2, 2)):
        want += conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
        if stride != 1 or cin != c:
            want += conv(cin, c, 1) + bn(c)
        want += (nb - 1) * (conv(c, c, 3) + bn(c) + conv(c, c, 3) + bn(c))
        cin = c
    stats = 2 * channels[-1] * math.ceil(n_mels / 8)  # mean + std of 256 x 10 rows
    want += stats * emb + emb
    model = ResNet34()
    assert _n_params(model) == want
    assert round(want / 1e6, 2) == 6.63
    assert model.fc.in_features == 5120 and model.init_kwargs["emb_dim"] == 256
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


def test_ecapa_is_speechbrains_network_and_exports_as_it():
    # Defaults: SpeechBrain's VoxCeleb recipe (train_ecapa_tdnn.yaml), about 20.8 M.
    ours = ECAPA_TDNN().eval()
    theirs = SpeechBrainECAPA(
        input_size=80,
        channels=[1024, 1024, 1024, 1024, 3072],
        kernel_sizes=[5, 3, 3, 3, 1],
        dilations=[1, 2, 3, 4, 1],
        groups=[1, 1, 1, 1, 1],
        attention_channels=128,
        lin_neurons=192,
    )
    assert _n_params(ours) == _n_params(theirs) and round(_n_params(ours) / 1e6, 1) == 20.8
    # A small one rebuilt as SpeechBrain's class from the recorded arguments is the same
    # network: same parameters, same outputs.
    torch.manual_seed(0)
    small = _small("ecapa_tdnn").eval()
    _randomise_batch_norm(small)
    rebuilt = SpeechBrainECAPA(**small.init_kwargs).eval()
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    x, lens = torch.randn(3, 90, 40), torch.tensor([1.0, 0.8, 0.5])
    with torch.no_grad():
        torch.testing.assert_close(small(x, lens), rebuilt(x, lens), rtol=0, atol=0)
    assert small.export_path == f"{SpeechBrainECAPA.__module__}.{SpeechBrainECAPA.__name__}"


@pytest.mark.parametrize("name", ["resnetse34l", "resnet34"])
def test_an_utterance_padded_in_a_batch_gets_its_embedding_alone(name):
    torch.manual_seed(1)
    model = _small(name).eval()
    _randomise_batch_norm(model)
    short, long_ = torch.randn(1, 57, 40), torch.randn(1, 100, 40)
    padded = torch.cat([short, 5 * torch.randn(1, 43, 40)], dim=1)  # padding is not zero
    with torch.no_grad():
        batch = model(torch.cat([padded, long_]), torch.tensor([0.57, 1.0]))
        alone, long_alone = model(short), model(long_)
        unmasked = model(padded)
    torch.testing.assert_close(batch[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch[1:], long_alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # the mask is what keeps it


def test_ecapa_padding_changes_an_embedding_little():
    # SpeechBrain's reflect-padded convolutions see a shorter utterance's padding near its
    # end (models/ecapa_tdnn.py); the pooling ignores it. Measured bound: cosine > 0.99.
    torch.manual_seed(2)
    model = _small("ecapa_tdnn").eval()
    _randomise_batch_norm(model)
    short = torch.randn(1, 60, 40)
    padded = torch.cat([short, torch.randn(1, 40, 40)], dim=1)
    with torch.no_grad():
        batch = model(torch.cat([padded, torch.randn(1, 100, 40)]), torch.tensor([0.6, 1.0]))
        alone = model(short)
    cosine = torch.nn.functional.cosine_similarity(batch[0], alone[0]).item()
    assert cosine > 0.99


@pytest.mark.parametrize("name", ["resnet34", "ecapa_tdnn"])
def test_the_forward_pass_reads_nothing_from_the_device(name):
    # On the meta device a tensor has no values: .item(), bool(tensor) or a branch on
    # values fails, so a pass that completes makes no host read. (ResNetSE34L's padding
    # test is the training step's, issue 25.)
    model = _small(name).to("meta").train()
    out = model(torch.empty(4, 80, 40, device="meta"), torch.empty(4, device="meta"))
    assert out.shape == (4, 1, 16) and out.device.type == "meta"


# ------------------------------------------------------------- the recipe's choice
def _load(tmp_path, loss="mp_balance", **overrides):
    text = "\n".join(f"{k}: {v}" for k, v in {"output_folder": tmp_path, **overrides}.items())
    return load_recipe_hparams(HPARAMS / f"{loss}.yaml", text)


def test_every_loss_yaml_names_an_encoder_and_the_encoder_files_are_complete():
    assert sorted(p.stem for p in (HPARAMS / "encoders").glob("*.yaml")) == sorted(ENCODERS)
    for loss in LOSSES:
        text, path = compose_recipe(HPARAMS / f"{loss}.yaml")
        assert path == HPARAMS / "encoders" / "resnetse34l.yaml", loss
        assert "embedding_model: !new:maskproxy_losses.ResNetSE34L" in text


@pytest.mark.parametrize(
    "name, n_mels, emb_dim, frontend",
    [
        ("resnetse34l", 40, 512, "fbank"),
        ("resnet34", 80, 256, "fbank_cmn"),
        ("ecapa_tdnn", 80, 192, "fbank_cmn"),
    ],
)
def test_encoder_override_builds_the_encoder_with_its_front_end(
    tmp_path, name, n_mels, emb_dim, frontend
):
    channels = {"ecapa_tdnn": "[32, 32, 32, 32, 96]", "resnet34": "[4, 8, 8, 16]"}.get(
        name, "[8, 8, 16, 16]"
    )
    hparams, overrides = _load(tmp_path, "aam", encoder=name, channels=channels)
    model = hparams["embedding_model"]
    assert type(model) is ENCODERS[name] and hparams["encoder"] == name
    assert (hparams["n_mels"], hparams["emb_dim"], hparams["frontend"]) == (
        n_mels,
        emb_dim,
        frontend,
    )
    assert model.init_kwargs["channels"] == [int(c) for c in channels.strip("[]").split(",")]
    assert model(torch.randn(2, 50, n_mels)).shape == (2, 1, emb_dim)
    # The front end the export writes (the preset) computes what the recipe trained on.
    feats, norm = build_frontend(frontend, n_mels)
    wavs, lens = torch.rand(2, 8000) * 2 - 1, torch.tensor([1.0, 0.6])
    got = hparams["mean_var_norm"](hparams["compute_features"](wavs), lens)
    torch.testing.assert_close(got, norm(feats(wavs), lens))
    # The run's folder gets the spliced recipe, which loads as it is (no second splice).
    copy = recipe_copy(HPARAMS / "aam.yaml", overrides, tmp_path)
    assert copy == str(tmp_path / f"aam.{name}.yaml")
    assert compose_recipe(copy)[1] is None
    again, _ = load_recipe_hparams(copy, f"output_folder: {tmp_path}\nchannels: {channels}")
    assert type(again["embedding_model"]) is ENCODERS[name]


def test_the_papers_encoder_is_built_as_before(tmp_path):
    # The encoder yaml is spliced where the model block was: same weights for a seed.
    hparams, _ = _load(tmp_path)
    seed_everything(1986)
    before = ResNetSE34L(n_mels=40, emb_dim=512)
    for key, value in before.state_dict().items():
        assert torch.equal(value, hparams["embedding_model"].state_dict()[key]), key


def test_bad_encoder_choices_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown encoder 'resnet50'; choose one of ecapa_tdnn"):
        _load(tmp_path, encoder="resnet50")
    with pytest.raises(InputError, match="no key chanels .* did you mean --channels"):
        _load(tmp_path, chanels="[1, 2, 3, 4]")
    # a recipe that defines an encoder key itself and splices an encoder too
    loss = tmp_path / "hparams" / "mine.yaml"
    (tmp_path / "hparams" / "encoders").mkdir(parents=True)
    (tmp_path / "hparams" / "encoders" / "tiny.yaml").write_text("emb_dim: 8\nn_mels: 4\n")
    loss.write_text("n_mels: 40\nencoder: tiny\n")
    with pytest.raises(InputError, match="defines n_mels, which the encoder file .* too"):
        compose_recipe(loss)
    # a run's copy builds its encoder itself: --encoder cannot change it
    copy = tmp_path / "copy.yaml"
    copy.write_text("encoder: tiny\nembedding_model: 1\n")
    assert compose_recipe(copy, "tiny")[1] is None
    with pytest.raises(InputError, match="builds encoder tiny itself"):
        compose_recipe(copy, "resnet34")


def test_summarize_encoders_reports_mean_and_spread_over_seeds(tmp_path):
    import summarize_encoders

    def metrics(eer, cllr, qmf_eer=None):
        m = {"EER": eer, "minDCF_0.01": 0.5, "Cllr": cllr, "minCllr": cllr - 0.1}
        if qmf_eer is not None:
            m["QMF"] = {"EER": qmf_eer, "minDCF_0.01": 0.4, "Cllr": 0.3, "minCllr": 0.2}
        return m

    for seed, eer in (("1", 10.0), ("2", 14.0)):
        for kind, value in (("cosine", metrics(eer, 0.6, eer - 1)), ("asnorm", metrics(9.0, 1))):
            folder = tmp_path / "resnet34+aam" / seed / kind
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(value))
    (tmp_path / "ecapa_tdnn+ap" / "1" / "cosine").mkdir(parents=True)  # unfinished: no row
    lines = summarize_encoders.summarize(tmp_path).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    sd = statistics.stdev([10.0, 14.0])
    assert cells[:5] == ["resnet34", "aam", "2 (1, 2)", f"12.00 ± {sd:.2f}", "0.500 ± 0.000"]
    assert cells[6] == f"11.00 ± {sd:.2f}"  # cosine + QMF
    assert cells[-3:] == ["-", "-", "- (-)"]  # no QMF in that asnorm file

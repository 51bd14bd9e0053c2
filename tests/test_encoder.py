"""Tests for maskproxy_losses.models.resnetse34l.ResNetSE34L."""

import doctest
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from maskproxy_losses.models import resnetse34l as encoder
from maskproxy_losses.models.resnetse34l import ResNetSE34L

# a copy of shared/spec/resnetse34l_state_dict_keys.txt, so a README user's tests run it
SPEC_KEYS = Path(__file__).resolve().parent / "fixtures" / "resnetse34l_state_dict_keys.txt"


def _randomise_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _randomise_bn(ResNetSE34L()).eval()


def test_shapes_and_parameter_count(model):
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"ResNetSE34L parameters: {n_params}")
    assert n_params == 1_437_078
    assert model.avgpool.kernel_size == (5, 1)
    with torch.no_grad():
        assert model(torch.randn(3, 57, 40)).shape == (3, 1, 512)
        assert model(torch.randn(2, 200, 40), torch.tensor([1.0, 0.3])).shape == (2, 1, 512)
    other = ResNetSE34L(n_mels=64, emb_dim=256).eval()
    with torch.no_grad():
        assert other(torch.randn(2, 100, 64)).shape == (2, 1, 256)
    assert other.init_kwargs["n_mels"] == 64 and other.init_kwargs["emb_dim"] == 256


def test_keys_match_authors_layout(model):
    spec = {}
    for line in SPEC_KEYS.read_text().splitlines():
        if line.startswith("__S__.") and not line.startswith("__S__.torchfb."):
            key, shape = line.split(" ", 1)
            spec[key[len("__S__.") :]] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec


def test_init_kwargs_rebuild(model):
    clone = ResNetSE34L(**model.init_kwargs)
    clone.load_state_dict(model.state_dict())


def test_se_block_order_relu_before_bn(model):
    """layer2.0 (with downsample) equals conv1->ReLU->bn1->conv2->bn2->SE->+res->ReLU."""
    block = model.layer2[0]
    assert block.downsample is not None and model.layer4[0].downsample is not None
    x = torch.relu(torch.randn(2, 16, 20, 31))
    seen = {}
    handle = block.bn1.register_forward_pre_hook(lambda m, inp: seen.update(bn1_in=inp[0].clone()))
    with torch.no_grad():
        out, _ = block(x)
        handle.remove()
        h = block.conv1(x)
        assert (h < 0).any()  # so the ReLU before bn1 has something to do
        assert seen["bn1_in"].min() >= 0 and torch.allclose(seen["bn1_in"], torch.relu(h))
        h = block.bn2(block.conv2(block.bn1(torch.relu(h))))
        gate = block.se.fc(h.mean(dim=(2, 3)))
        expected = torch.relu(h * gate[:, :, None, None] + block.downsample(x))
        # The conventional order (BN before ReLU) gives a different result.
        h2 = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        conventional = torch.relu(
            h2 * block.se.fc(h2.mean(dim=(2, 3)))[:, :, None, None] + block.downsample(x)
        )
    assert out.shape == (2, 32, 10, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, conventional, atol=1e-3)


@pytest.mark.parametrize("pooling", ["sap", "asp"])
@pytest.mark.parametrize("short", [150, 133])
def test_padding_does_not_change_embedding(pooling, short):
    torch.manual_seed(1)
    net = _randomise_bn(ResNetSE34L(pooling=pooling)).eval()
    long_x, short_x = torch.randn(1, 200, 40), torch.randn(1, short, 40)
    padded = torch.cat([short_x, 5 * torch.randn(1, 200 - short, 40)], dim=1)
    batch = torch.cat([padded, long_x])
    with torch.no_grad():
        alone = net(short_x)
        in_batch = net(batch, torch.tensor([short / 200, 1.0]))
        unmasked = net(batch)
        long_alone = net(long_x, torch.ones(1))
    torch.testing.assert_close(in_batch[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(in_batch[1:], long_alone, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmasked[:1], alone, atol=1e-3)  # the padding matters


def test_asp_option():
    net = ResNetSE34L(pooling="asp")
    assert net.fc.in_features == 256
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 1_437_078 + 128 * 512
    out = net(torch.randn(4, 120, 40))
    assert out.shape == (4, 1, 512) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="pooling"):
        ResNetSE34L(pooling="mean")


def test_training_step_backward():
    torch.manual_seed(0)
    net = ResNetSE34L().train()
    out = net(torch.randn(4, 100, 40), torch.tensor([1.0, 1.0, 0.8, 0.5]))
    F.normalize(out.squeeze(1), dim=1).sum().backward()
    assert net.conv1.weight.grad is not None and net.attention.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_doctest():
    assert doctest.testmod(encoder, raise_on_error=False).failed == 0

"""ResNet34 as the field trains it today (the r-vector layout of Zeinali et al. 2019 that
WeSpeaker's ``ResNet34`` configures: 32-64-128-256 channels, about 6.6 M parameters on
80 log-mel), written here rather than taken from SpeechBrain.

SpeechBrain's ``speechbrain.lobes.models.ResNet.ResNet`` is another network under that
name: its blocks are pre-activation with three convolutions (3x3, 3x3, 1x1) and
squeeze-excitation in the first two stages, it pools with attentive statistics and a
batch norm on the embedding, and it ignores the relative lengths, so the padding of a
batch changes an utterance's embedding. This module is the published ResNet34 instead:

- stem: 3x3 convolution (1 -> ``channels[0]``), batch norm, ReLU;
- four stages of basic blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU;
  a 1x1 convolution + BN shortcut where the shape changes), ``blocks`` = (3, 4, 6, 3),
  strides 1, 2, 2, 2 on frequency and time;
- temporal statistics pooling: mean and standard deviation over time of the
  ``channels[3] x n_mels / 8`` rows;
- one linear layer to the embedding (``emb_dim`` = 256), no batch norm after it.

Padded batches: with relative ``lengths`` the padded frames are zeroed after every
layer and left out of the statistics, so an utterance gets the same embedding (eval
mode) alone or padded in a batch. The forward pass has no data-dependent branch (no
host synchronisation).

Example
-------
>>> model = ResNet34(n_mels=40, channels=(4, 8, 8, 16), emb_dim=32).eval()
>>> feats = torch.randn(2, 120, 40)  # [batch, time, n_mels], as Fbank yields
>>> model(feats, torch.tensor([1.0, 0.5])).shape
torch.Size([2, 1, 32])
"""

import torch
from torch import nn

from maskproxy_losses.models.resnetse34l import init_conv_weights

__all__ = ["ResNet34", "BasicBlock"]


def _time_mask(lengths, n_frames, device):
    """bool ``[B, 1, 1, T]`` of the valid frames given relative ``lengths``."""
    valid = torch.round(lengths.to(device, torch.float32) * n_frames).clamp(1, n_frames)
    frames = torch.arange(n_frames, device=device)
    return (frames[None, :] < valid[:, None])[:, None, None, :]


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU (He et al. 2016), with
    padded frames kept at zero between the convolutions."""

    def __init__(self, in_channels, channels, stride=1):
        super().__init__()
        self.stride = int(stride)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, self.stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if self.stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, self.stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x, mask=None):
        """x: [B, C, F, T] with padded frames zero; returns (output, its mask)."""
        residual = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if mask is not None:
            # 3x3 / pad 1 (and the 1x1 shortcut) with time stride s: output t is valid
            # iff input s * t is.
            mask = mask[..., :: self.stride]
            out = out.masked_fill(~mask, 0.0)
        out = self.relu(self.bn2(self.conv2(out)) + residual)
        if mask is not None:
            out = out.masked_fill(~mask, 0.0)
        return out, mask


class ResNet34(nn.Module):
    """ResNet34 + temporal statistics pooling speaker encoder (see the module).

    Arguments
    ---------
    n_mels : int
        Mel bins of the input features (80 as published).
    channels : sequence of 4 ints
        Channels of the four stages (32, 64, 128, 256 as published).
    blocks : sequence of 4 ints
        Basic blocks per stage (3, 4, 6, 3: ResNet34).
    emb_dim : int
        Embedding size (256 as published).
    """

    STRIDES = (1, 2, 2, 2)

    def __init__(self, n_mels=80, channels=(32, 64, 128, 256), blocks=(3, 4, 6, 3), emb_dim=256):
        super().__init__()
        channels, blocks = [int(c) for c in channels], [int(b) for b in blocks]
        if len(channels) != 4 or len(blocks) != 4 or min(blocks) < 1:
            raise ValueError("channels and blocks need 4 entries each, blocks >= 1")
        self.init_kwargs = dict(
            n_mels=int(n_mels), channels=channels, blocks=blocks, emb_dim=int(emb_dim)
        )
        self.conv1 = nn.Conv2d(1, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch, freq = channels[0], int(n_mels)
        for i, (ch, n_blocks, stride) in enumerate(zip(channels, blocks, self.STRIDES)):
            layer = [BasicBlock(in_ch, ch, stride)]
            layer += [BasicBlock(ch, ch) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.ModuleList(layer))
            in_ch, freq = ch, (freq - 1) // stride + 1
        self.stats_dim = channels[-1] * freq
        self.fc = nn.Linear(2 * self.stats_dim, int(emb_dim))
        init_conv_weights(self)

    def forward(self, x, lengths=None):
        """x: [batch, time, n_mels]; lengths: relative lengths in [0, 1], or None when no
        utterance is padded. Returns embeddings [batch, 1, emb_dim] (not normalised)."""
        x = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        mask = None
        if lengths is not None:
            mask = _time_mask(lengths, x.shape[-1], x.device)
            x = x.masked_fill(~mask, 0.0)
        x = self.relu(self.bn1(self.conv1(x)))
        if mask is not None:
            x = x.masked_fill(~mask, 0.0)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x, mask = block(x, mask)
        x = x.flatten(1, 2)  # [B, C * F', T']
        if mask is None:
            mean = x.mean(dim=2)
            var = (x - mean[:, :, None]).pow(2).mean(dim=2)
        else:
            weight = mask[:, 0, 0, :].to(x.dtype)[:, None, :]  # [B, 1, T']
            count = weight.sum(dim=2)
            mean = (x * weight).sum(dim=2) / count
            var = ((x - mean[:, :, None]).pow(2) * weight).sum(dim=2) / count
        stats = torch.cat([mean, torch.sqrt(var + 1e-7)], dim=1)
        return self.fc(stats).unsqueeze(1)

"""ResNetSE34L ("Fast ResNet-34", Chung et al. 2020) as a SpeechBrain lobe.

Module and parameter names mirror the authors' checkpoint keys once the ``__S__.``
prefix is stripped, so converting their weights is a prefix strip (see
``maskproxy_losses.inference.authors_checkpoint``).

Padded batches: with relative ``lengths`` the padded frames are zeroed after every
layer and excluded from the squeeze-excitation averages and the attention pooling,
so an utterance gets the same embedding (eval mode) alone or padded in a batch.
"""

import torch
from torch import nn

__all__ = ["ResNetSE34L", "SEBasicBlock", "SELayer"]


def init_conv_weights(module):
    """He (fan-out) initialisation of every convolution of ``module``, batch norms at
    identity: the initialisation of the ResNets of voxceleb_trainer and WeSpeaker."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SELayer(nn.Module):
    """Squeeze-excitation: channel gates from the (masked) mean over freq x time."""

    def __init__(self, channels, reduction=8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x, mask=None):
        """x: [B, C, F, T]; mask: bool [B, 1, 1, T] of valid frames or None."""
        if mask is None:
            pooled = x.mean(dim=(2, 3))
        else:
            count = mask.sum(dim=(2, 3)) * x.shape[2]
            pooled = x.masked_fill(~mask, 0.0).sum(dim=(2, 3)) / count
        return x * self.fc(pooled)[:, :, None, None]


class SEBasicBlock(nn.Module):
    """SE basic block in the authors' order:
    conv1 -> ReLU -> bn1 -> conv2 -> bn2 -> SE -> + shortcut -> ReLU."""

    def __init__(self, in_channels, channels, stride=1, reduction=8):
        super().__init__()
        stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.se = SELayer(channels, reduction)
        self.downsample = None
        if stride != (1, 1) or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x, mask=None):
        """x: [B, C, F, T], padded frames zero; returns (output, output mask)."""
        residual = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.relu(self.conv1(x)))
        if mask is not None:
            # A 3x3/pad-1 conv with time stride s: output t is valid iff input s*t is.
            mask = mask[..., :: self.stride[1]]
            out = out.masked_fill(~mask, 0.0)
        out = self.se(self.bn2(self.conv2(out)), mask)
        out = self.relu(out + residual)
        if mask is not None:
            out = out.masked_fill(~mask, 0.0)
        return out, mask


def _conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


class ResNetSE34L(nn.Module):
    """ResNetSE34L + self-attentive pooling speaker encoder (~1.44 M parameters).

    Arguments
    ---------
    n_mels : int
        Number of mel bins of the input features.
    channels : sequence of 4 ints
        Channels of the four stages.
    blocks : sequence of 4 ints
        SE basic blocks per stage.
    emb_dim : int
        Embedding size.
    pooling : str
        "sap" (self-attentive pooling) or "asp" (attentive statistics pooling).
    se_reduction : int
        Squeeze-excitation reduction factor.

    Example
    -------
    >>> model = ResNetSE34L()
    >>> feats = torch.randn(2, 200, 40)  # [batch, time, n_mels], as Fbank yields
    >>> model(feats, torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 1, 512])
    """

    STRIDES = (1, (2, 2), (2, 2), (1, 1))

    def __init__(
        self,
        n_mels=40,
        channels=(16, 32, 64, 128),
        blocks=(3, 4, 6, 3),
        emb_dim=512,
        pooling="sap",
        se_reduction=8,
    ):
        super().__init__()
        channels, blocks = [int(c) for c in channels], [int(b) for b in blocks]
        if len(channels) != 4 or len(blocks) != 4:
            raise ValueError("channels and blocks need 4 entries each")
        if pooling not in ("sap", "asp"):
            raise ValueError(f"pooling must be 'sap' or 'asp', got {pooling!r}")
        self.init_kwargs = dict(
            n_mels=int(n_mels),
            channels=channels,
            blocks=blocks,
            emb_dim=int(emb_dim),
            pooling=pooling,
            se_reduction=int(se_reduction),
        )
        self.pooling = pooling

        self.conv1 = nn.Conv2d(1, channels[0], 7, stride=(2, 1), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch, freq = channels[0], _conv_out(n_mels, 7, 2, 3)
        for i, (ch, nb, stride) in enumerate(zip(channels, blocks, self.STRIDES)):
            layer = [SEBasicBlock(in_ch, ch, stride, se_reduction)]
            layer += [SEBasicBlock(ch, ch, 1, se_reduction) for _ in range(nb - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = ch
            s = stride if isinstance(stride, int) else stride[0]
            freq = _conv_out(freq, 3, s, 1)
        # Collapses the remaining frequency rows (5 for 40 mels).
        self.avgpool = nn.AvgPool2d((freq, 1), stride=1)

        out_ch = channels[-1]
        self.sap_linear = nn.Linear(out_ch, out_ch)
        self.attention = nn.Parameter(torch.empty(out_ch, 1))
        self.fc = nn.Linear(out_ch * (2 if pooling == "asp" else 1), emb_dim)

        nn.init.xavier_normal_(self.attention)
        init_conv_weights(self)

    def forward(self, x, lengths=None):
        """x: [batch, time, n_mels]; lengths: relative lengths in [0, 1], or None when no
        utterance is padded (faster: no masks).

        Returns embeddings [batch, 1, emb_dim] (not normalised).
        """
        x = x.transpose(1, 2).unsqueeze(1)  # [B, 1, F, T]
        mask = None
        if lengths is not None:  # no test of the values: that would wait for the device
            n_frames = x.shape[-1]
            valid = torch.round(lengths.to(x.device, torch.float32) * n_frames)
            valid = valid.clamp(1, n_frames)
            frames = torch.arange(n_frames, device=x.device)
            mask = (frames[None, :] < valid[:, None])[:, None, None, :]
            x = x.masked_fill(~mask, 0.0)

        x = self.relu(self.bn1(self.conv1(x)))
        if mask is not None:
            x = x.masked_fill(~mask, 0.0)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x, mask = block(x, mask)

        x = self.avgpool(x).squeeze(2).transpose(1, 2)  # [B, T', C]
        scores = torch.tanh(self.sap_linear(x)) @ self.attention  # [B, T', 1]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, 0, 0, :, None], float("-inf"))
        w = torch.softmax(scores, dim=1)
        mu = (x * w).sum(dim=1)
        if self.pooling == "asp":
            var = (x * x * w).sum(dim=1) - mu * mu
            mu = torch.cat([mu, var.clamp(min=1e-5).sqrt()], dim=1)
        return self.fc(mu).unsqueeze(1)

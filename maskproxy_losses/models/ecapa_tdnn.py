"""ECAPA-TDNN (Desplanques et al. 2020): SpeechBrain's ``ECAPA_TDNN``, unchanged, with the
constructor arguments recorded so that a trained model can be exported.

:class:`ECAPA_TDNN` only adds ``init_kwargs`` (read by
:func:`maskproxy_losses.inference.export.export_model`) and ``export_path``: an exported
model directory names SpeechBrain's own class, so it loads with SpeechBrain alone. The
defaults are SpeechBrain's VoxCeleb recipe (``train_ecapa_tdnn.yaml``: channels 1024 x 4
+ 3072, kernels 5-3-3-3-1, dilations 1-2-3-4-1, 128 attention channels, 192-dim
embeddings, about 20.8 M parameters) on 80 log-mel with per-utterance mean
normalisation. The call is the other encoders': features ``[N, T, F]`` and relative
lengths -> ``[N, 1, emb_dim]``.

Padded batches: SpeechBrain's convolutions pad with reflection over the whole padded
tensor, so the last frames of a shorter utterance see some of its padding; an utterance
embedded in a padded batch differs slightly from the same utterance alone
(``tests/test_encoders.py`` bounds it). The pooling and squeeze-excitation averages use
the lengths.

Example
-------
>>> model = ECAPA_TDNN(40, lin_neurons=16, channels=(32, 32, 32, 32, 96)).eval()
>>> model(torch.randn(2, 100, 40), torch.tensor([1.0, 0.7])).shape
torch.Size([2, 1, 16])
>>> model.init_kwargs["channels"], model.export_path
([32, 32, 32, 32, 96], 'speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN')
"""

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN as _SpeechBrainECAPA

from maskproxy_losses.data.length_batches import float32_lengths

__all__ = ["ECAPA_TDNN"]


class ECAPA_TDNN(_SpeechBrainECAPA):
    """SpeechBrain's ``ECAPA_TDNN`` that remembers its (plain) constructor arguments.

    Arguments are SpeechBrain's, less ``device`` and ``activation`` (ReLU), which an
    exported ``hyperparams.yaml`` cannot name as plain values.
    """

    export_path = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"

    def __init__(
        self,
        input_size=80,
        lin_neurons=192,
        channels=(1024, 1024, 1024, 1024, 3072),
        kernel_sizes=(5, 3, 3, 3, 1),
        dilations=(1, 2, 3, 4, 1),
        attention_channels=128,
        res2net_scale=8,
        se_channels=128,
        global_context=True,
        groups=(1, 1, 1, 1, 1),
        dropout=0.0,
    ):
        kwargs = dict(
            input_size=int(input_size),
            lin_neurons=int(lin_neurons),
            channels=[int(c) for c in channels],
            kernel_sizes=[int(k) for k in kernel_sizes],
            dilations=[int(d) for d in dilations],
            attention_channels=int(attention_channels),
            res2net_scale=int(res2net_scale),
            se_channels=int(se_channels),
            global_context=bool(global_context),
            groups=[int(g) for g in groups],
            dropout=float(dropout),
        )
        super().__init__(**kwargs)
        self.init_kwargs = kwargs

    def forward(self, x, lengths=None):
        """SpeechBrain's forward, with ``lengths`` in ``x``'s float type: its
        squeeze-excitation masks take the lengths' dtype, so float64 lengths (the dev
        pass's frame-exact ones) would turn the activations float64; float64 lengths become
        float32 rounded down (:func:`~maskproxy_losses.data.length_batches.float32_lengths`:
        no padded frame is kept)."""
        if lengths is not None and lengths.is_floating_point():
            dtype = torch.float32 if x.dtype == torch.float64 else x.dtype
            if lengths.dtype == torch.float64 and dtype == torch.float32:
                lengths = float32_lengths(lengths)
            lengths = lengths.to(dtype)
        return super().forward(x, lengths)

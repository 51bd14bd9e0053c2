"""The training step's model part as one module: front end -> encoder -> loss.

:class:`SpeakerStep` chains the recipe's modules (``compute_features``, ``mean_var_norm``,
``embedding_model``, ``loss_fn``) so that the whole forward is one function: with no
host round trip in it (the speaker grouping comes from the host as a
:class:`~maskproxy_losses.losses.grouping.SpeakerLayout`, a batch without padding comes
with ``lengths=None``) it compiles into one graph with no break (``torch.compile``, the
recipe's ``--compile True``, through :class:`CompiledStep`) and, eager or compiled, queues
on a GPU without waiting.

Example
-------
>>> from maskproxy_losses import ResNetSE34L, build_loss
>>> from maskproxy_losses.losses.grouping import speaker_layout
>>> from maskproxy_losses.models.frontend import DeviceFbank
>>> from speechbrain.processing.features import InputNormalization
>>> step = SpeakerStep(
...     DeviceFbank(n_mels=40),
...     InputNormalization(norm_type="sentence"),
...     ResNetSE34L(channels=(8, 8, 8, 8), blocks=(1, 1, 1, 1), emb_dim=16),
...     build_loss("mp", n_classes=5, emb_dim=16),
... )
>>> labels = torch.tensor([3, 3, 1, 1])
>>> emb, loss = step(torch.randn(4, 3200), None, labels, speaker_layout(labels))
>>> emb.shape, loss.shape
(torch.Size([4, 1, 16]), torch.Size([]))
"""

import math

import torch
from torch import nn

__all__ = ["SpeakerStep", "CompiledStep"]


class SpeakerStep(nn.Module):
    """``(wavs, lengths, labels, layout) -> (embeddings, loss)`` through the four modules
    given (held, not copied: the step shares their parameters). ``lengths`` None means
    that no utterance is padded; ``layout`` is handed to the loss."""

    def __init__(self, compute_features, mean_var_norm, embedding_model, loss_fn):
        super().__init__()
        self.compute_features, self.mean_var_norm = compute_features, mean_var_norm
        self.embedding_model, self.loss_fn = embedding_model, loss_fn

    @staticmethod
    def values(loss_fn, embeddings, loss):
        """The step's values to log (device scalars, no host round trip): ``loss``,
        ``embeddings`` (their largest size: NaN / Inf when any element is), the loss's
        ``acc`` (top-1 of its last call), ``w`` and ``b`` (NaN for a loss without them;
        read after the optimiser step, they are the updated values)."""
        nan = torch.full((), math.nan, device=loss.device)
        return {
            "loss": loss,
            "embeddings": embeddings.detach().abs().amax(),
            "acc": loss_fn.last_accuracy,
            "w": getattr(loss_fn, "w", nan),
            "b": getattr(loss_fn, "b", nan),
        }

    def forward(self, wavs, lengths, labels, layout=None):
        feats = self.compute_features(wavs)
        feats = self.mean_var_norm(feats, lengths)
        embeddings = self.embedding_model(feats, lengths)
        return embeddings, self.loss_fn(embeddings, labels, layout=layout)


class _AutocastInside(nn.Module):
    """``module`` run under the autocast ``dtype`` given (None: none), entered here."""

    def __init__(self, module, device_type):
        super().__init__()
        self.module, self.device_type = module, device_type

    def forward(self, *args, autocast_dtype=None, **kwargs):
        if autocast_dtype is None:
            return self.module(*args, **kwargs)
        with torch.autocast(self.device_type, dtype=autocast_dtype):
            return self.module(*args, **kwargs)


class CompiledStep:
    """``torch.compile(module, **compile_kwargs)``, called with the caller's autocast (on
    ``device_type``) moved inside the compiled graph.

    Compiled under an active autocast, the backward graph is traced under it too: a loss
    that computes in float32 gets bfloat16 products in its backward, and a custom
    ``autograd.Function`` fails (``index_add_(): self (BFloat16) and source (Float)``).
    Entered inside, the autocast covers the forward only, as in eager mode."""

    def __init__(self, module, device_type, **compile_kwargs):
        self.device_type = device_type
        self.compiled = torch.compile(_AutocastInside(module, device_type), **compile_kwargs)

    def __call__(self, *args, **kwargs):
        if not torch.is_autocast_enabled(self.device_type):
            return self.compiled(*args, **kwargs)
        dtype = torch.get_autocast_dtype(self.device_type)
        with torch.autocast(self.device_type, enabled=False):
            return self.compiled(*args, autocast_dtype=dtype, **kwargs)

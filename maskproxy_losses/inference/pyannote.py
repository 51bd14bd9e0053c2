"""An exported model directory as the speaker-embedding model of pyannote.audio's diarization.

pyannote.audio builds its embedding model from a name (``speechbrain/...`` hub ids,
pyannote checkpoints, NeMo / WeSpeaker names), so a local model directory cannot be
named there. :class:`PyannoteEmbedding` is the object the ``SpeakerDiarization`` pipeline
calls instead (the interface of pyannote's ``PretrainedSpeakerEmbedding`` classes):

- ``sample_rate`` (16000), ``dimension``, ``metric`` (``"cosine"``), ``min_num_samples``;
- ``to(torch.device)``;
- ``__call__(waveforms [batch, 1, samples], masks [batch, frames] or None)`` -> numpy
  ``[batch, dimension]``: each row is embedded from the samples its mask keeps (the mask
  is stretched to the samples, nearest neighbour, kept where > 0.5), alone and without
  padding; a row with fewer than ``min_num_samples`` kept samples gets NaNs, as pyannote's
  own wrappers return.

:func:`use_in_pipeline` puts it into a loaded pipeline (its ``_embedding`` and the audio
reader at the model's sample rate). pyannote.audio itself is optional
(``pip install '.[pyannote]'``); this module imports it only in :func:`use_in_pipeline`.

Example
-------
>>> import os, tempfile, torch
>>> from maskproxy_losses import ResNetSE34L, export_model
>>> _ = torch.manual_seed(0)
>>> d = export_model(os.path.join(tempfile.mkdtemp(), "m"),
...     ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=8).eval())
>>> embedding = PyannoteEmbedding(d)
>>> waveforms = torch.rand(2, 1, 16000) - 0.5
>>> masks = torch.zeros(2, 100); masks[0, :60] = 1.0; masks[1, :1] = 1.0
>>> out = embedding(waveforms, masks)
>>> out.shape, bool(torch.isnan(torch.from_numpy(out[1])).all())
((2, 8), True)
"""

import numpy as np
import torch

from maskproxy_losses.data.audio import MIN_SAMPLES, SAMPLE_RATE
from maskproxy_losses.inference.api import SpeakerEmbedder, load_model
from maskproxy_losses.utils.errors import InputError

__all__ = ["PyannoteEmbedding", "use_in_pipeline", "INSTALL_HINT"]

INSTALL_HINT = "pip install pyannote.audio  (or, in a checkout: pip install '.[pyannote]')"


class PyannoteEmbedding:
    """A model directory with the call interface pyannote.audio's pipelines use.

    ``model_dir`` is checked as everywhere (``trust=True`` skips that); ``precision``
    as for :class:`~maskproxy_losses.inference.api.SpeakerEmbedder` (default ``fp32``).
    """

    sample_rate = SAMPLE_RATE
    metric = "cosine"
    min_num_samples = MIN_SAMPLES

    def __init__(self, model_dir, device=None, trust=False, precision="fp32"):
        device = torch.device("cpu") if device is None else torch.device(device)
        self.embedder = SpeakerEmbedder(
            load_model(model_dir, str(device), trust), precision=precision
        )
        self.model_dir = self.embedder.model_dir
        self.device = device

    @property
    def dimension(self):
        return self.embedder.dimension

    def to(self, device):
        """Move the model to ``device`` (a ``torch.device``, as pyannote passes)."""
        if not isinstance(device, torch.device):
            raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
        encoder = self.embedder.model.encoder
        encoder.to(device)
        encoder.device = str(device)
        self.device = device
        return self

    def _kept(self, waveforms, masks):
        """The 1-D signal of each row: all of it, or the samples its mask keeps."""
        rows = waveforms[:, 0].detach().float().cpu()
        if masks is None:
            return list(rows)
        masks = torch.as_tensor(masks).detach().float().cpu()
        if masks.shape[0] != rows.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks for {rows.shape[0]} waveforms")
        keep = torch.nn.functional.interpolate(masks[:, None], size=rows.shape[1], mode="nearest")[
            :, 0
        ]
        return [row[k > 0.5] for row, k in zip(rows, keep)]

    def __call__(self, waveforms, masks=None):
        """Embeddings ``[batch, dimension]`` (numpy float32) of ``[batch, 1, samples]``."""
        waveforms = torch.as_tensor(waveforms)
        if waveforms.dim() != 3 or waveforms.shape[1] != 1:
            raise ValueError(f"expected waveforms [batch, 1, samples], got {list(waveforms.shape)}")
        out = np.full((waveforms.shape[0], self.dimension), np.nan, dtype=np.float32)
        for i, signal in enumerate(self._kept(waveforms, masks)):
            if signal.shape[0] >= self.min_num_samples:
                out[i] = self.embedder.embed(signal)
        return out


def use_in_pipeline(pipeline, embedding):
    """Make ``pipeline`` (a pyannote.audio ``SpeakerDiarization``) embed with ``embedding``
    (a :class:`PyannoteEmbedding` or a model directory); returns the pipeline."""
    try:
        from pyannote.audio.core.io import Audio
    except ImportError:
        raise InputError(f"pyannote.audio is not installed: {INSTALL_HINT}") from None
    if not isinstance(embedding, PyannoteEmbedding):
        embedding = PyannoteEmbedding(embedding)
    metric = getattr(getattr(pipeline, "clustering", None), "metric", "cosine")
    if metric != embedding.metric:
        raise InputError(
            f"the pipeline's clustering compares embeddings by {metric!r}; "
            f"{embedding.model_dir} embeddings are compared by cosine"
        )
    pipeline.embedding = str(embedding.model_dir)
    pipeline._embedding = embedding
    pipeline._audio = Audio(sample_rate=embedding.sample_rate, mono="downmix")
    return pipeline

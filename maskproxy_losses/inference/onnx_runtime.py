"""Run an exported ONNX model with onnxruntime alone: no torch import, for deployment.

The file comes from :func:`maskproxy_losses.inference.onnx_export.export_onnx` (or
``maskproxy export-onnx``): 16 kHz waveforms ``[batch, samples]`` in [-1, 1] in, float32
embeddings ``[batch, emb_dim]`` out.

Example (``model.onnx`` written by the export)::

    from maskproxy_losses.inference.onnx_runtime import OnnxEmbedder
    emb = OnnxEmbedder("model.onnx")(wavs)   # numpy [batch, samples] -> [batch, emb_dim]
"""

import numpy as np

from maskproxy_losses.data.audio import MIN_SAMPLES
from maskproxy_losses.utils.errors import InputError

__all__ = ["INSTALL_HINT", "OnnxEmbedder"]

INSTALL_HINT = "pip install onnx onnxscript onnxruntime  (or, in a checkout: pip install '.[onnx]')"


class OnnxEmbedder:
    """Run an exported ``.onnx`` file with onnxruntime on the CPU.

    Arguments
    ---------
    path : str or Path
        The file ``export_onnx`` wrote.
    threads : int or None
        onnxruntime intra-op threads (None: onnxruntime's default).
    spin : bool
        Let idle worker threads spin-wait (onnxruntime's default). Off here: spinning
        threads keep the cores busy after each call and slow down other work in the
        process (e.g. PyTorch) on small machines.

    Calling it with a float waveform array ``[batch, samples]`` (or ``[samples]``),
    16 kHz in [-1, 1], returns float32 embeddings ``[batch, emb_dim]``. ``metadata`` is
    the file's metadata (``{key: string}``: the model card as JSON under ``model_card``,
    ``sample_rate``, ``embedding_dim``, ``calibration``, ...; empty for older exports).
    """

    def __init__(self, path, threads=None, spin=False):
        try:
            import onnxruntime
        except ImportError:
            raise InputError(
                "running an ONNX model needs onnxruntime, which is not installed: "
                "pip install onnxruntime"
            ) from None

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, wavs):
        wavs = np.asarray(wavs, dtype=np.float32)
        if wavs.ndim == 1:
            wavs = wavs[None]
        if wavs.ndim != 2 or wavs.shape[1] < MIN_SAMPLES:
            raise InputError(
                f"expected waveforms [batch, samples] with at least {MIN_SAMPLES} samples, "
                f"got shape {list(wavs.shape)}"
            )
        return self.session.run(None, {self.input_name: np.ascontiguousarray(wavs)})[0]

"""``maskproxy export-onnx``: a model directory -> one ONNX graph (waveform -> embedding).

::

    maskproxy export-onnx MODEL_DIR model.onnx

The export is :func:`maskproxy_losses.inference.onnx_export.export_onnx`; running the file
needs only onnxruntime (:mod:`maskproxy_losses.inference.onnx_runtime`).
"""

from maskproxy_losses.cli.common import positive_int
from maskproxy_losses.inference.onnx_runtime import INSTALL_HINT

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Export a model directory ('fbank' or 'authors' front end) to one ONNX file mapping "
        "16 kHz waveforms 'wavs' float32 [batch, samples] in [-1, 1] to 'embeddings' "
        "[batch, emb_dim], the embeddings EncoderClassifier.encode_batch returns (there "
        "[batch, 1, emb_dim]). Batch and length are dynamic; every row is embedded at full "
        "length (no padding input). The file is checked with onnx.checker and against "
        "PyTorch with onnxruntime before it is renamed into place. Needs: " + INSTALL_HINT
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="the model directory")
    parser.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.onnx if it exists")
    parser.add_argument(
        "--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)"
    )
    parser.add_argument(
        "--trust-model-dir",
        action="store_true",
        help="load a hyperparams.yaml that names code the project's export never writes",
    )
    return run


def run(args):
    """Export ``args.model_dir`` to ``args.output``."""
    from maskproxy_losses.inference.onnx_export import export_onnx

    out = export_onnx(
        args.model_dir,
        args.output,
        opset=args.opset,
        overwrite=args.overwrite,
        trust=args.trust_model_dir,
    )
    print(f"wrote {out}")
    return 0

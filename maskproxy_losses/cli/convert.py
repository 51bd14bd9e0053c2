"""``maskproxy convert``: the authors' ResNetSE34L checkpoint -> a model directory.

::

    maskproxy convert voxceleb_pretrained.model exported/ [--overwrite]

The conversion is :func:`maskproxy_losses.inference.authors_checkpoint.convert_checkpoint`.
"""

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Convert the authors' ResNetSE34L checkpoint (state dict with __S__.* model and "
        "__L__.* loss keys, optionally under 'module.') into a SpeechBrain directory "
        "(hyperparams.yaml + embedding_model.ckpt) that EncoderClassifier / "
        "SpeakerRecognition.from_hparams(source=OUTPUT_DIR) load. The authors' front end "
        "(log-mel x32768 + instance norm) is used; loss weights are dropped."
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the authors' .model file")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="directory to create")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT_DIR if it exists and is not empty"
    )
    return run


def run(args):
    """Convert ``args.checkpoint`` into ``args.output_dir``."""
    from maskproxy_losses.inference.authors_checkpoint import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.output_dir, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0

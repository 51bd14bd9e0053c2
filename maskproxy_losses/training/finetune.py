"""Starting a training run from a trained model (``pretrained:`` in the recipe yamls).

``pretrained`` names either

- a model directory (``embedding_model.ckpt`` + ``hyperparams.yaml``, as the recipe
  exports to ``<output_folder>/model``): the encoder starts from its weights, the loss
  (proxies / classifier, ``w``, ``b``) starts fresh; or
- a training output folder: the encoder starts from its ``model/`` (the exported model,
  an average when the run averaged checkpoints) or, when the run has not exported yet,
  from its best checkpoint under ``save/`` (lowest dev EER). The loss starts from that
  best checkpoint's ``loss_fn.ckpt`` when its entries and shapes match the new loss
  (same loss class, same number of classes); otherwise it starts fresh and the log says
  why (another loss, speed perturbation changing the number of classes, ...).

Only weights are taken (``torch.load(weights_only=True)``; any other file is refused in
one line naming it); the optimiser, the lr
schedule and the epoch counter start anew. When the new run's own ``save/`` folder has
checkpoints (a resumed fine-tuning run), SpeechBrain's recovery loads those on top, so
a restart continues the fine-tuning instead of starting it again.
"""

import logging
from pathlib import Path

from maskproxy_losses.inference.model_dir import CKPT_FILE
from maskproxy_losses.training.checkpointing import load_weights
from maskproxy_losses.utils.errors import InputError

__all__ = ["resolve_pretrained", "load_pretrained"]

logger = logging.getLogger(__name__)


def _best_checkpoint(save_dir):
    from maskproxy_losses.training.checkpointing import AtomicCheckpointer

    if not save_dir.is_dir():
        return None
    return AtomicCheckpointer(save_dir).find_checkpoint(min_key="EER")  # damaged meta: skipped


def resolve_pretrained(path):
    """``(encoder state file, loss state file or None)`` for a model directory or a
    training output folder (see the module)."""
    root = Path(path)
    if (root / CKPT_FILE).is_file():
        return root / CKPT_FILE, None
    best = _best_checkpoint(root / "save")
    loss_file = best.paramfiles.get("loss_fn") if best is not None else None
    if (root / "model" / CKPT_FILE).is_file():
        return root / "model" / CKPT_FILE, loss_file
    if best is not None and "embedding_model" in best.paramfiles:
        return best.paramfiles["embedding_model"], loss_file
    raise InputError(
        f"{path}: pretrained is neither a model directory ({CKPT_FILE}) nor a "
        "training output folder (model/ or save/CKPT+* with a dev EER)"
    )


def _compatible(module, state):
    own = module.state_dict()
    return list(own) == list(state) and all(own[k].shape == state[k].shape for k in own)


def load_pretrained(path, embedding_model, loss_fn=None):
    """Load the weights named by ``path`` into ``embedding_model`` (strictly) and, when
    available and compatible, into ``loss_fn``. Returns ``(encoder file, loss file or
    None)``, the files actually loaded."""
    encoder_file, loss_file = resolve_pretrained(path)
    state = load_weights(encoder_file)
    try:
        embedding_model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise InputError(
            f"{encoder_file}: does not fit this recipe's embedding model "
            f"({str(err).splitlines()[0]})"
        ) from None
    logger.info("pretrained: encoder weights from %s", encoder_file)
    if loss_fn is None:
        return encoder_file, None
    if loss_file is None:
        logger.info("pretrained: no loss checkpoint in %s; the loss starts fresh", path)
        return encoder_file, None
    loss_state = load_weights(loss_file)
    if not _compatible(loss_fn, loss_state):
        logger.warning(
            "pretrained: %s does not match this loss (another loss or number of "
            "classes); the loss starts fresh",
            loss_file,
        )
        return encoder_file, None
    loss_fn.load_state_dict(loss_state)
    logger.info("pretrained: loss parameters from %s", loss_file)
    return encoder_file, loss_file

"""A warning in the training log when the training accuracy stays near chance after the
learning-rate warm-up: the run is not learning (a schedule that does not fit the run's
length, a learning rate too small or too large, broken labels), and it is better said
after an epoch than found after the last.

Chance is the top-1 accuracy of guessing among the candidates each loss's accuracy ranks:
every training class for MP, MMP and AAM-softmax (the query's own anchor or class against
all proxies / classes), the ``B`` speakers of the batch for the angular prototypical loss.

Example
-------
>>> from maskproxy_losses import build_loss
>>> loss_fn = build_loss("aam", n_classes=1000, emb_dim=8)
>>> chance_accuracy(loss_fn, speakers_per_batch=200)
0.001
>>> near_chance(0.002, 0.001), near_chance(0.02, 0.001)
(True, False)
"""

import logging

__all__ = ["NEAR_CHANCE", "LEARNED_EER", "chance_accuracy", "near_chance", "warn_if_near_chance"]

logger = logging.getLogger(__name__)

NEAR_CHANCE = 3.0  # an accuracy below this many times chance is "near chance"
LEARNED_EER = 25.0  # a dev EER (%) below half of chance (50 %): the model has learned


def chance_accuracy(loss_fn, speakers_per_batch):
    """The accuracy of a random guess for ``loss_fn``'s ``last_accuracy``."""
    n_classes = getattr(loss_fn, "n_classes", None)  # MP, MMP
    if n_classes is None and hasattr(loss_fn, "classifier"):  # AAM: its classifier's rows
        n_classes = loss_fn.classifier.weight.shape[0]
    return 1.0 / float(n_classes if n_classes else speakers_per_batch)


def near_chance(accuracy, chance, factor=NEAR_CHANCE):
    """Whether ``accuracy`` is below ``factor`` times ``chance``."""
    return float(accuracy) < factor * float(chance)


def warn_if_near_chance(loss_fn, hparams, epoch, accuracy, dev_eer=None):
    """Log a warning (and return True) when the training accuracy of ``epoch``, which ends
    after the warm-up (``hparams["warmup_epochs"]``, 0 when absent), is near chance,
    unless the epoch's ``dev_eer`` (%, when validated) is below :data:`LEARNED_EER`: then
    the embeddings rank the dev trials well whatever the classifier's accuracy (AAM with
    a margin on many speakers). ``hparams``: the recipe's dict or the Brain's namespace
    of it."""
    hparams = hparams if isinstance(hparams, dict) else vars(hparams)
    if epoch < float(hparams.get("warmup_epochs") or 0.0) + 1.0:
        return False
    if dev_eer is not None and float(dev_eer) < LEARNED_EER:
        return False
    chance = chance_accuracy(loss_fn, hparams["speakers_per_batch"])
    if not near_chance(accuracy, chance):
        return False
    logger.warning(
        "training accuracy %.2f %% after epoch %d is near chance (%.2f %%)%s: the model "
        "learns slowly or not at all. Check the learning-rate schedule for a run of %s "
        "epochs (recipe README, 'Schedules at any number of epochs'), the learning rate "
        "and the labels; AAM on many speakers needs many steps (docs/results.md).",
        100.0 * float(accuracy),
        epoch,
        100.0 * chance,
        "" if dev_eer is None else f", dev EER {float(dev_eer):.2f} %",
        hparams.get("number_of_epochs"),
    )
    return True

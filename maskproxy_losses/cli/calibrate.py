"""``maskproxy calibrate``: fit a linear score calibration on a scored trial list.

::

    maskproxy calibrate results/verification/scores.txt --model-dir MODEL_DIR

The fit is :func:`maskproxy_losses.scoring.calibration.fit_calibration`; with
``--model-dir`` the result is the directory's ``calibration.json``, which ``verify``,
``identify`` and the verification recipe then apply.
"""

import os
import sys

from maskproxy_losses.cli.common import probability
from maskproxy_losses.utils.errors import InputError
from maskproxy_losses.utils.files import check_not_input

__all__ = ["build"]


def build(name, parser):
    """Add the options to ``parser``; return ``run(args)``."""
    parser.description = (
        "Fit a linear score calibration (llr = scale * score + offset, natural-log likelihood "
        "ratio) by prior-weighted logistic regression on a scored trial list, and store it as "
        "JSON. The scores must come from the same model and scoring options (score_mode, "
        "norm) as the scores it will be applied to. Prints the fitted scale and offset, Cllr "
        "of the raw scores (read as LLRs) and of the calibrated ones, and minCllr (the best "
        "any monotonic calibration reaches)."
    )
    parser.add_argument(
        "scores",
        metavar="SCORES.txt",
        help="lines 'label score enrol test' (or 'label score'); label 1 = target, "
        "0 = non-target (the verification recipe's scores.txt)",
    )
    out = parser.add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--model-dir", metavar="DIR", help="an exported model directory: write DIR/calibration.json"
    )
    out.add_argument("--output", metavar="FILE.json", help="write the calibration here")
    parser.add_argument(
        "--prior",
        type=probability,
        default=0.5,
        help="target prior weighting the fit (default 0.5, equal weight to the two classes)",
    )
    return run


def _warnings(cal, scores, model_dir):
    """What the user should know about a calibration that fitted but is not what they want:
    a scale <= 0, or (``model_dir``) a qmf.json that takes precedence over it."""
    from maskproxy_losses.scoring.qmf import QMF_FILE, model_qmf

    if scores.min() == scores.max():
        yield f"all {scores.size} scores are {scores[0]:g}: the calibration cannot use them"
    elif cal.scale < 0:
        yield (
            f"the fitted scale is negative ({cal.scale:.6g}): target trials score lower than "
            "non-target ones; are the labels or the scores reversed?"
        )
    if model_dir is not None and model_qmf(model_dir) is not None:
        yield (
            f"{os.path.join(model_dir, QMF_FILE)} takes precedence over this calibration in "
            "verify (identify uses calibration.json); remove qmf.json to verify with it"
        )


def run(args):
    """Fit on ``args.scores`` and write the calibration."""
    from maskproxy_losses.scoring.calibration import (
        CALIBRATION_FILE,
        cllr,
        fit_calibration,
        min_cllr,
        read_scores,
    )

    if args.model_dir is not None:
        from maskproxy_losses.inference.model_dir import check_model_dir

        check_model_dir(args.model_dir)
        target = os.path.join(args.model_dir, CALIBRATION_FILE)
    else:
        target = args.output
        folder = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(folder):
            raise InputError(f"{folder}: the folder of --output does not exist")
    option = "--output" if args.model_dir is None else "--model-dir"
    check_not_input(target, [(args.scores, "the scores file")], option)
    data = read_scores(args.scores)
    cal = fit_calibration(
        data.scores, data.labels, prior=args.prior, source=os.path.abspath(args.scores)
    )
    cal.save(target)
    for line in _warnings(cal, data.scores, args.model_dir):
        print(f"warning: {line}", file=sys.stderr)
    before = cllr(data.scores, data.labels)
    after = cllr(cal(data.scores), data.labels)
    print(f"trials: {data.labels.size} ({cal.n_target} target, {cal.n_nontarget} non-target)")
    sign = "-" if cal.offset < 0 else "+"
    print(
        f"calibration: llr = {cal.scale:.6g} * score {sign} {abs(cal.offset):.6g} "
        f"(prior {cal.prior:g})"
    )
    print(
        f"Cllr: {before:.4f} raw (scores read as LLRs) -> {after:.4f} calibrated; "
        f"minCllr {min_cllr(data.scores, data.labels):.4f}"
    )
    print(f"written: {target}")
    return 0

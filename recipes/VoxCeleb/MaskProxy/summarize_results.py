#!/usr/bin/env python3
"""Summarise finished training runs as a markdown table (mean and spread over seeds).

Reads ``<results>/<loss>/<seed>/train_log.txt`` written by the training recipe: the
test EER / minDCF of the best checkpoint, the per-epoch wall time (training + dev
validation) and the training throughput (utterances/s). Rows named ``<hparams>+<variant>``
(written by ``run_all_losses.sh``: ``+avgN`` checkpoint averaging, ``+sp`` speed
perturbation, ``+ft`` a fine-tuning stage, whose epochs are the second stage's only,
``+per_speaker`` MMP's per-speaker ``l_pos``) follow their hparams file's row. With
``--dev`` the table adds the dev EERs that choices are made on (the best epoch's, which
picks the exported checkpoint, and the mean of the last 5 epochs', less noisy) and the
loss's ``w`` and ``b`` at the last epoch.

    python recipes/VoxCeleb/MaskProxy/summarize_results.py results [--dev]
"""

import argparse
import re
import statistics
import sys
from pathlib import Path

FIELD = re.compile(r"([A-Za-z_][\w.]*(?: [A-Za-z_][\w.]*)*): (-?[\d.]+(?:e[-+]\d+)?)")
ORDER = ["mp_balance", "mmp_balance", "mp", "mmp", "ap", "aam"]


def parse_log(path):
    """Return ``(test stats, [epoch stats])`` of one train_log.txt (empty if unfinished)."""
    test, epochs = {}, []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        fields = {k: float(v) for k, v in FIELD.findall(line)}
        if line.startswith("epoch:"):
            epochs.append(fields)
        elif line.startswith("Epoch loaded:"):
            test = fields
    return test, epochs


def _mean_spread(values, fmt):
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def _row_key(name):
    """Table order: the hparams files as in ORDER, each followed by its ``+variant`` rows."""
    base, _, variant = name.partition("+")
    return (ORDER.index(base) if base in ORDER else len(ORDER), base, variant)


def summarize(results, dev=False):
    """The markdown table of every ``<results>/<row>/<seed>/train_log.txt`` with a test result."""
    rows = []
    losses = sorted(
        {p.parent.parent.name for p in Path(results).glob("*/*/train_log.txt")}, key=_row_key
    )
    for loss in losses:
        eers, dcfs, epoch_s, rates, seeds = [], [], [], [], []
        dev_eers, dev_last, ws, bs = [], [], [], []
        for log in sorted(Path(results).glob(f"{loss}/*/train_log.txt")):
            test, epochs = parse_log(log)
            if "test EER" not in test:
                continue
            seeds.append(log.parent.name)
            eers.append(test["test EER"])
            dcfs.append(test["test minDCF_0.01"])
            epoch_s += [e["epoch_s"] for e in epochs if "epoch_s" in e]
            rates += [e["train utt_per_s"] for e in epochs if "train utt_per_s" in e]
            dev_curve = [e["valid EER"] for e in epochs if "valid EER" in e]
            dev_eers.append(min(dev_curve))
            dev_last.append(statistics.mean(dev_curve[-5:]))
            ws += [epochs[-1]["train w"]] if "train w" in epochs[-1] else []
            bs += [epochs[-1]["train b"]] if "train b" in epochs[-1] else []
        if seeds:
            cells = [loss, f"{len(seeds)} ({', '.join(seeds)})"]
            if dev:
                cells += [_mean_spread(dev_eers, "{:.2f}"), _mean_spread(dev_last, "{:.2f}")]
            cells += [_mean_spread(eers, "{:.2f}"), _mean_spread(dcfs, "{:.3f}")]
            if dev:
                cells += [_mean_spread(ws, "{:.2f}"), _mean_spread(bs, "{:.2f}")]
            cells += [_mean_spread(epoch_s, "{:.0f}"), _mean_spread(rates, "{:.0f}")]
            rows.append(f"| {' | '.join(cells)} |")
    head = ["hparams", "seeds", "test EER %", "minDCF(0.01)", "s / epoch", "train utt/s"]
    if dev:
        head[2:2] = ["best dev EER %", "dev EER % (last 5)"]
        head[6:6] = ["last w", "last b"]
    return "\n".join([f"| {' | '.join(head)} |", "|" + "---|" * len(head)] + rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="?", default="results", help="the recipes' output root")
    parser.add_argument(
        "--dev", action="store_true", help="add the best dev EER and the last epoch's w and b"
    )
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        sys.exit(f"error: {args.results} is not a directory")
    print(summarize(args.results, dev=args.dev))


if __name__ == "__main__":
    main()

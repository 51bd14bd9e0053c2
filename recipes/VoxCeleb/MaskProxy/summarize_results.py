#!/usr/bin/env python3
"""Summarise finished training runs as a markdown table (mean and spread over seeds).

Reads ``<results>/<loss>/<seed>/train_log.txt`` written by the training recipe: the
test EER / minDCF of the best checkpoint, the per-epoch wall time (training + dev
validation) and the training throughput (utterances/s). Rows named ``<hparams>+<variant>``
(written by ``run_all_losses.sh``: ``+avgN`` checkpoint averaging, ``+sp`` speed
perturbation, ``+ft`` a fine-tuning stage, whose epochs are the second stage's only,
``+per_speaker`` MMP's per-speaker ``l_pos``) follow their hparams file's row.

    python recipes/VoxCeleb/MaskProxy/summarize_results.py results
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


def summarize(results):
    rows = []
    losses = sorted(
        {p.parent.parent.name for p in Path(results).glob("*/*/train_log.txt")}, key=_row_key
    )
    for loss in losses:
        eers, dcfs, epoch_s, rates, seeds = [], [], [], [], []
        for log in sorted(Path(results).glob(f"{loss}/*/train_log.txt")):
            test, epochs = parse_log(log)
            if "test EER" not in test:
                continue
            seeds.append(log.parent.name)
            eers.append(test["test EER"])
            dcfs.append(test["test minDCF_0.01"])
            epoch_s += [e["epoch_s"] for e in epochs if "epoch_s" in e]
            rates += [e["train utt_per_s"] for e in epochs if "train utt_per_s" in e]
        if seeds:
            rows.append(
                f"| {loss} | {len(seeds)} ({', '.join(seeds)}) | {_mean_spread(eers, '{:.2f}')} | "
                f"{_mean_spread(dcfs, '{:.3f}')} | {_mean_spread(epoch_s, '{:.0f}')} | "
                f"{_mean_spread(rates, '{:.0f}')} |"
            )
    head = (
        "| hparams | seeds | test EER % | minDCF(0.01) | s / epoch | train utt/s |\n"
        "|---|---|---|---|---|---|"
    )
    return "\n".join([head] + rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="?", default="results", help="the recipes' output root")
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        sys.exit(f"error: {args.results} is not a directory")
    print(summarize(args.results))


if __name__ == "__main__":
    main()

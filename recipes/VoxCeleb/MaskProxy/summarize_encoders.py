#!/usr/bin/env python3
"""Summarise the encoder x loss table (``run_encoder_table.sh``) as markdown: mean and
standard deviation over seeds of each row's test results before and after the back-end.

Reads ``<results>/<encoder>+<loss>/<seed>/cosine/metrics.json`` (full-utterance cosine;
Cllr with the dev-fitted linear calibration, and the dev-fitted QMF) and
``.../asnorm/metrics.json`` (AS-norm; QMF fitted on the AS-normed dev trials). Columns:
EER %, minDCF(0.01) and Cllr (min-Cllr) of each; a row's values are ``mean ± sd`` over
its seeds (the sd is left out with one seed).

    python recipes/VoxCeleb/MaskProxy/summarize_encoders.py results/encoders
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ENCODERS = ["resnetse34l", "resnet34", "ecapa_tdnn"]
LOSSES = ["mp_balance", "mmp_balance", "aam", "ap"]
HEADER = (
    "| encoder | loss | seeds | cosine EER | minDCF | Cllr (min) | +QMF EER | +QMF Cllr (min) "
    "| AS-norm EER | minDCF | +QMF EER | +QMF minDCF | +QMF Cllr (min) |"
)


def _cell(values, digits):
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _pair(values, minima, digits=3):
    return f"{_cell(values, digits)} ({_cell(minima, digits)})"


def _values(metrics, *keys):
    """``metrics[i][keys[0]][keys[1]]...`` of every metrics dict that has it."""
    out = []
    for m in metrics:
        for k in keys:
            m = m.get(k) if isinstance(m, dict) else None
        if m is not None:
            out.append(float(m))
    return out


def read_row(folder):
    """``{seed: (cosine metrics, asnorm metrics)}`` of one row's finished seeds."""
    out = {}
    for seed in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        files = [seed / "cosine" / "metrics.json", seed / "asnorm" / "metrics.json"]
        if all(f.is_file() for f in files):
            out[seed.name] = tuple(json.loads(f.read_text(encoding="utf-8")) for f in files)
    return out


def summarize(results):
    """The markdown table of every finished row under ``results``."""
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    rows = {p.name: read_row(p) for p in Path(results).iterdir() if "+" in p.name and p.is_dir()}
    order = [f"{e}+{loss}" for e in ENCODERS for loss in LOSSES]
    for name in sorted(rows, key=lambda n: (order.index(n) if n in order else len(order), n)):
        seeds = rows[name]
        if not seeds:
            continue
        cos = [c for c, _ in seeds.values()]
        asn = [a for _, a in seeds.values()]
        get = _values
        encoder, loss = name.split("+", 1)
        lines.append(
            "| "
            + " | ".join(
                [
                    encoder,
                    loss,
                    f"{len(seeds)} ({', '.join(seeds)})",
                    _cell(get(cos, "EER"), 2),
                    _cell(get(cos, "minDCF_0.01"), 3),
                    _pair(get(cos, "Cllr"), get(cos, "minCllr")),
                    _cell(get(cos, "QMF", "EER"), 2),
                    _pair(get(cos, "QMF", "Cllr"), get(cos, "QMF", "minCllr")),
                    _cell(get(asn, "EER"), 2),
                    _cell(get(asn, "minDCF_0.01"), 3),
                    _cell(get(asn, "QMF", "EER"), 2),
                    _cell(get(asn, "QMF", "minDCF_0.01"), 3),
                    _pair(get(asn, "QMF", "Cllr"), get(asn, "QMF", "minCllr")),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the RESULTS folder of run_encoder_table.sh")
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        print(f"error: {args.results}: not a folder", file=sys.stderr)
        return 2
    print(summarize(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

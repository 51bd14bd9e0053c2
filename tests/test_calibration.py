"""Calibration: Cllr by hand, the logistic fit against a direct minimisation and the analytic
LLR of Gaussian classes, min Cllr against brute force, actual DCF against direct counts,
the JSON file, the scores reader and the command line."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from maskproxy_losses.scoring.calibration import (
    CALIBRATION_FILE,
    Calibration,
    actual_dcf,
    bayes_threshold,
    calibration_metrics,
    cllr,
    fit_calibration,
    load_model_calibration,
    min_cllr,
    pav,
    read_scores,
)
from maskproxy_losses.scoring.metrics import compute_min_dcf
from maskproxy_losses.utils.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def _gauss(rng, n_tar, n_non, mu_t=2.0, mu_n=-1.0, s_t=1.0, s_n=1.3):
    scores = np.r_[rng.normal(mu_t, s_t, n_tar), rng.normal(mu_n, s_n, n_non)]
    labels = np.r_[np.ones(n_tar, int), np.zeros(n_non, int)]
    return scores, labels


# ------------------------------------------------------------------------ Cllr
def test_cllr_hand_example():
    # targets: llr 0 -> log2(1 + 1) = 1; llr ln 3 -> log2(1 + 1/3) = 2 - log2 3
    # non-target: llr ln 3 -> log2(1 + 3) = 2
    # Cllr = 0.5 * ((1 + 2 - log2 3) / 2 + 2) = 1.75 - log2(3) / 4 = 1.35375937...
    got = cllr([0.0, math.log(3.0), math.log(3.0)], [1, 1, 0])
    assert got == pytest.approx(1.75 - math.log2(3.0) / 4, rel=1e-14)
    assert got == pytest.approx(1.353759375, abs=1e-9)


@pytest.mark.parametrize("n_tar, n_non", [(1, 1), (3, 7), (29, 1000), (12345, 5)])
def test_cllr_of_zero_llr_is_exactly_one(n_tar, n_non):
    assert cllr(np.zeros(n_tar + n_non), [1] * n_tar + [0] * n_non) == 1.0


def test_cllr_infinite_llrs_and_stability():
    # right-signed infinite LLRs cost nothing; one wrong-signed infinite LLR costs infinity
    assert cllr([np.inf, -np.inf], [1, 0]) == 0.0
    assert cllr([-np.inf, -np.inf], [1, 0]) == np.inf
    # huge LLRs: log2(1 + e^800) = 800 / ln 2 (a naive log(1 + exp) overflows)
    assert cllr([-800.0, -800.0], [1, 0]) == pytest.approx(0.5 * 800 / math.log(2))


# ------------------------------------------- fitting vs a direct minimisation
@pytest.mark.parametrize("prior, smooth", [(0.5, True), (0.01, True), (0.2, False), (0.5, False)])
def test_fit_minimises_the_prior_weighted_cross_entropy(prior, smooth):
    """The fit (scikit-learn inside) against scipy's BFGS on the objective as written in
    the docstring, computed here from scratch in raw score units (with Platt's targets
    when ``smooth``)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    scores, labels = _gauss(rng, 400, 3000)
    n_tar, n_non = labels.sum(), (1 - labels).sum()
    t_tar, t_non = ((n_tar + 1) / (n_tar + 2), 1 / (n_non + 2)) if smooth else (1.0, 0.0)
    logit_prior = math.log(prior / (1 - prior))

    def cross_entropy(e, t):  # -(t log sigmoid(e) + (1 - t) log sigmoid(-e))
        return t * np.logaddexp(0.0, -e) + (1 - t) * np.logaddexp(0.0, e)

    def objective(theta):
        e = theta[0] * scores + theta[1] + logit_prior
        tar = cross_entropy(e[labels == 1], t_tar).sum() * prior / n_tar
        non = cross_entropy(e[labels == 0], t_non).sum() * (1 - prior) / n_non
        return tar + non

    ref = minimize(objective, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
    cal = fit_calibration(scores, labels, prior=prior, smooth=smooth)
    assert cal.scale == pytest.approx(ref[0], abs=1e-4)
    assert cal.offset == pytest.approx(ref[1], abs=1e-4)
    assert (cal.prior, cal.n_target, cal.n_nontarget) == (prior, 400, 3000)


def test_fit_recovers_the_analytic_llr_of_gaussian_classes():
    # equal-variance Gaussians: llr(x) = log N(x; mu_t, s) - log N(x; mu_n, s)
    #   = (mu_t - mu_n) / s^2 * x + (mu_n^2 - mu_t^2) / (2 s^2)
    mu_t, mu_n, s, n = 1.5, -0.5, 1.2, 100_000
    true = np.array([(mu_t - mu_n) / s**2, (mu_n**2 - mu_t**2) / (2 * s**2)])
    rng = np.random.default_rng(1)
    scores, labels = _gauss(rng, n, n, mu_t, mu_n, s, s)
    cal = fit_calibration(scores, labels)  # prior 0.5, equal counts: the plain MLE
    # Tolerance: with equal counts the fit is the maximum-likelihood logistic regression,
    # whose covariance is the inverse Fisher information sum p (1 - p) [x, 1][x, 1]^T at
    # the true parameters (the model is exactly right here). Allow 5 standard errors.
    p = 1 / (1 + np.exp(-(true[0] * scores + true[1])))
    x = np.stack([scores, np.ones_like(scores)])
    se = np.sqrt(np.diag(np.linalg.inv((x * p * (1 - p)) @ x.T)))
    assert np.all(se < 0.02)  # the test is tight: a few per cent of the values
    assert abs(cal.scale - true[0]) < 5 * se[0]
    assert abs(cal.offset - true[1]) < 5 * se[1]


def test_fit_separable_data_stays_finite():
    s, y = [0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]
    for smooth in (True, False):
        cal = fit_calibration(s, y, smooth=smooth)
        assert np.isfinite([cal.scale, cal.offset]).all() and cal.scale > 0
        llr = cal(s)
        assert (llr[:2] > 0).all() and (llr[2:] < 0).all()  # threshold between the classes
    # without smoothing only the l2 term stops the scale: a weaker one lets it grow further
    hard = fit_calibration(s, y, smooth=False)
    assert fit_calibration(s, y, l2=1e-12, smooth=False).scale > hard.scale


@pytest.mark.parametrize("n", [9, 99])
def test_smoothed_fit_of_separated_trials_claims_what_their_counts_support(n):
    """n target trials all scoring 1 and n non-targets all -1: by symmetry the offset is 0
    and the optimum puts sigmoid(llr) of a target at Platt's target (n + 1) / (n + 2), so
    its LLR is exactly ln(n + 1) (by hand); hard targets push it towards infinity."""
    scores, labels = [1.0] * n + [-1.0] * n, [1] * n + [0] * n
    cal = fit_calibration(scores, labels)
    assert cal(1.0) == pytest.approx(math.log(n + 1), abs=1e-6)
    assert cal(-1.0) == pytest.approx(-math.log(n + 1), abs=1e-6)
    assert fit_calibration(scores, labels, smooth=False)(1.0) > 3 * math.log(n + 1)


@pytest.mark.parametrize(
    "scores, labels, what",
    [
        ([0.1, 0.2], [1, 1], "only one class"),
        ([0.1, np.nan], [0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in length"),
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([], [], "no trials"),
    ],
)
def test_input_errors(scores, labels, what):
    for fn in (fit_calibration, min_cllr, cllr, actual_dcf, calibration_metrics):
        with pytest.raises(ValueError, match=what):
            fn(scores, labels)
    with pytest.raises(ValueError, match="prior"):
        fit_calibration([0.1, 0.2], [0, 1], prior=1.0)


# -------------------------------------------------------------------- min Cllr
def _naive_pav(scores, labels):
    """Isotonic fit by repeated pooling of the first adjacent violating pair of blocks
    (blocks start as the groups of tied scores): slow, obviously right."""
    order = sorted(set(scores))
    blocks = [[sum(y for x, y in zip(scores, labels) if x == v), scores.count(v), [v]]
              for v in order]  # fmt: skip
    pooled = True
    while pooled:
        pooled = False
        for k in range(len(blocks) - 1):
            (s1, c1, v1), (s2, c2, v2) = blocks[k], blocks[k + 1]
            if s1 / c1 > s2 / c2:
                blocks[k : k + 2] = [[s1 + s2, c1 + c2, v1 + v2]]
                pooled = True
                break
    value = {v: s / c for s, c, vs in blocks for v in vs}
    return np.array([value[x] for x in scores])


def test_pav_matches_a_naive_pooling_with_ties():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 12, 200).astype(float)  # many ties
    labels = (rng.random(200) < scores / 14).astype(int)
    ref = _naive_pav(scores.tolist(), labels.tolist())
    np.testing.assert_allclose(pav(scores, labels), ref, atol=1e-12)


def test_pav_and_min_cllr_on_scores_one_ulp_apart():
    """Trials of a file against itself score 1.0 or 1.0000000000000002: scikit-learn's
    IsotonicRegression.predict interpolated those to NaN (a traceback in the recipe)."""
    rng = np.random.default_rng(3)
    scores = np.r_[rng.uniform(-1, 0.9, 60), np.full(5, 1.0), np.full(5, np.nextafter(1.0, 2))]
    labels = np.r_[rng.integers(0, 2, 60), [1, 1, 0, 1, 1], [1, 0, 1, 1, 1]]
    ref = _naive_pav(scores.tolist(), labels.tolist())
    np.testing.assert_allclose(pav(scores, labels), ref, atol=1e-12)
    assert np.isfinite(min_cllr(scores, labels))


def test_min_cllr_hand_example():
    # PAV of labels 0, 1, 0, 1 (scores 1 < 2 < 3 < 4) pools the middle pair: posteriors
    # 0, 1/2, 1/2, 1; the empirical prior is 1/2 so LLRs are -inf, 0, 0, +inf. Cllr:
    # targets (0 and +inf): (1 + 0) / 2; non-targets (-inf and 0): (0 + 1) / 2; -> 0.5
    assert min_cllr([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1]) == 0.5


def _brute_min_cllr(scores, labels):
    """Min over every split of the sorted trials into runs whose target fractions rise;
    each run's best LLR is log((t / N_tar) / (n / N_non)) (+-inf for one-class runs)."""
    order = np.argsort(scores)
    y = np.asarray(labels)[order]
    n_tar, n_non = y.sum(), len(y) - y.sum()
    best = np.inf
    for cuts in itertools.product([0, 1], repeat=len(y) - 1):
        edges = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(y)]
        runs = [(y[a:b].sum(), b - a - y[a:b].sum()) for a, b in zip(edges, edges[1:])]
        fracs = [t / (t + n) for t, n in runs]
        if any(f2 < f1 for f1, f2 in zip(fracs, fracs[1:])):
            continue
        cost = 0.0
        for t, n in runs:
            if t and n:
                llr = math.log((t / n_tar) / (n / n_non))
                cost += t / n_tar * math.log2(1 + math.exp(-llr))
                cost += n / n_non * math.log2(1 + math.exp(llr))
        best = min(best, 0.5 * cost)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_min_cllr_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(4, int), np.zeros(7, int)]
    scores = rng.normal(size=11) + 0.8 * labels
    assert min_cllr(scores, labels) == pytest.approx(_brute_min_cllr(scores, labels), abs=1e-12)


def test_min_cllr_orders_and_invariance():
    rng = np.random.default_rng(3)
    scores, labels = _gauss(rng, 300, 2000)
    cal = fit_calibration(scores, labels)
    bad = Calibration(scale=3 * cal.scale, offset=cal.offset + 2.0)
    lo, mid, hi = min_cllr(scores, labels), cllr(cal(scores), labels), cllr(bad(scores), labels)
    assert 0 < lo < mid < hi
    # a monotonic map of the scores does not change the best monotonic calibration
    assert min_cllr(np.exp(scores), labels) == pytest.approx(lo, abs=1e-12)
    # perfectly separated scores: every PAV block is one class, all LLRs infinite
    assert min_cllr([0.1, 0.2, 0.3, 5.0, 6.0], [0, 0, 0, 1, 1]) == 0.0


# ------------------------------------------------------------------ actual DCF
@pytest.mark.parametrize("p, c_miss, c_fa", [(0.01, 1, 1), (0.05, 1, 1), (0.3, 10, 1)])
def test_actual_dcf_is_the_direct_count(p, c_miss, c_fa):
    rng = np.random.default_rng(4)
    scores, labels = _gauss(rng, 500, 5000)
    llr = fit_calibration(scores, labels)(scores)
    thr = math.log(c_fa * (1 - p) / (c_miss * p))
    misses = sum(1 for v, y in zip(llr, labels) if y == 1 and v < thr)
    false_alarms = sum(1 for v, y in zip(llr, labels) if y == 0 and v >= thr)
    expected = (c_miss * p * misses / 500 + c_fa * (1 - p) * false_alarms / 5000) / min(
        c_miss * p, c_fa * (1 - p)
    )
    assert actual_dcf(llr, labels, p, c_miss, c_fa) == pytest.approx(expected, rel=1e-12)
    assert (
        actual_dcf(llr, labels, p, c_miss, c_fa)
        >= compute_min_dcf(scores, labels, p, c_miss, c_fa)[0] - 1e-12
    )


def test_decide_at_the_bayes_threshold():
    thr = bayes_threshold(0.01)
    assert thr == pytest.approx(math.log(99))
    assert Calibration.decide(thr, 0.01) and not Calibration.decide(np.nextafter(thr, 0), 0.01)
    cal = Calibration(scale=2.0, offset=-1.0)
    assert cal(1.5) == 2.0 and cal.decide(cal(1.5), p_target=0.5)
    assert cal.decide(cal([0.0, 1.0]), p_target=0.5).tolist() == [False, True]


def test_calibration_metrics_keys_and_values():
    rng = np.random.default_rng(5)
    scores, labels = _gauss(rng, 200, 1000)
    cal = fit_calibration(scores, labels)
    m = calibration_metrics(scores, labels, cal)
    assert list(m) == ["Cllr", "minCllr", "actDCF_0.01", "actDCF_0.05"]
    assert m["Cllr"] == cllr(cal(scores), labels)
    assert m["minCllr"] == min_cllr(scores, labels)
    assert m["actDCF_0.05"] == actual_dcf(cal(scores), labels, 0.05)
    raw = calibration_metrics(scores, labels)  # raw scores read as LLRs
    assert raw["Cllr"] == cllr(scores, labels) and raw["minCllr"] == m["minCllr"]


# ------------------------------------------------------------------- the file
def test_save_load_round_trip(tmp_path):
    cal = Calibration(
        scale=3.25,
        offset=-0.1 + 1e-17,
        prior=0.01,
        n_target=7,
        n_nontarget=90,
        source="dev/scores.txt",
        meta={"score_mode": "cosine"},
    )
    cal.save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json") == cal
    assert os.listdir(tmp_path) == ["c.json"]  # no temporary left behind
    assert load_model_calibration(tmp_path) is None
    cal.save(tmp_path / CALIBRATION_FILE)
    assert load_model_calibration(tmp_path) == cal


def test_load_malformed_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"format": "maskproxy-calibration",\n "scale": 1.0,,}')
    with pytest.raises(InputError, match=rf"{path}:2: not valid JSON"):
        Calibration.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match=rf"{path}: not a calibration file"):
        Calibration.load(path)
    good = Calibration(1.0, 0.0).to_dict()
    path.write_text(json.dumps({**good, "scale": "big", "prior": 1.5, "n_target": -1}))
    with pytest.raises(InputError) as err:
        Calibration.load(path)
    assert err.value.problems == [
        f"{path}: 'scale' must be a finite number, got 'big'",
        f"{path}: 'n_target' must be a count >= 0, got -1",
    ]
    path.write_text(json.dumps({**good, "prior": 1.5}))
    with pytest.raises(InputError, match=r"'prior' must be in \(0, 1\)"):
        Calibration.load(path)


# -------------------------------------------------------------- scores files
def test_read_scores(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("1 0.5 a.wav b.wav\n\n0 -1e-3\n1 0.25 c d\n")
    data = read_scores(path)
    assert data.scores.tolist() == [0.5, -0.001, 0.25]
    assert data.labels.tolist() == [1, 0, 1]
    assert data.pairs == [("a.wav", "b.wav"), None, ("c", "d")]


def test_read_scores_reports_every_bad_line(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("1 0.5 a b\n2 0.1 a b\n0 x a b\n1 0.2 a\n0 nan a b\n0 0.3 a b\n")
    with pytest.raises(InputError) as err:
        read_scores(path)
    assert [p.split(": ", 1)[0] for p in err.value.problems] == [
        f"{path}:2",
        f"{path}:3",
        f"{path}:4",
        f"{path}:5",
    ]
    assert "label must be 0 or 1" in err.value.problems[0]
    assert "not a number: 'x'" in err.value.problems[1]
    assert "expected 4 fields" in err.value.problems[2]
    assert "must be finite" in err.value.problems[3]
    path.write_text("1 0.5 a b\n1 0.7 a c\n")
    with pytest.raises(InputError, match="all 2 trials have label 1"):
        read_scores(path)
    path.write_text("\n")
    with pytest.raises(InputError, match="no scored trials"):
        read_scores(path)


# --------------------------------------------------------------------- the CLI
def _write_scores(path, scores, labels):
    path.write_text(
        "".join(
            f"{y} {s!r} e{i} t{i}\n"
            for i, (s, y) in enumerate(zip(scores.tolist(), labels.tolist()))
        )
    )


def test_cli_fits_and_writes(tmp_path, cli):
    rng = np.random.default_rng(6)
    scores, labels = _gauss(rng, 100, 900)
    _write_scores(tmp_path / "scores.txt", scores, labels)
    model = _model_dir(tmp_path / "model")
    code, out, _ = cli("calibrate", tmp_path / "scores.txt", "--model-dir", model, "--prior", "0.1")
    assert code == 0
    got = Calibration.load(model / CALIBRATION_FILE)
    want = fit_calibration(scores, labels, prior=0.1)
    assert (got.scale, got.offset, got.prior) == (want.scale, want.offset, 0.1)
    assert (got.n_target, got.n_nontarget) == (100, 900)
    assert got.source == str(tmp_path / "scores.txt")
    assert f"{want.scale:.6g}" in out and f"minCllr {min_cllr(scores, labels):.4f}" in out
    assert cli("calibrate", tmp_path / "scores.txt", "--output", tmp_path / "c.json")[0] == 0
    assert Calibration.load(tmp_path / "c.json").scale == fit_calibration(scores, labels).scale


@pytest.mark.parametrize(
    "content, args, message",
    [
        ("1 0.5 a b\n0 oops a b\n", ["--output", "{d}/c.json"], "scores.txt:2: score is not"),
        ("1 0.5 a b\n0 0.1 a b\n", ["--model-dir", "{d}/missing"], "model directory not found"),
        ("1 0.5 a b\n0 0.1 a b\n", ["--output", "{d}/no/c.json"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path, cli, content, args, message):
    (tmp_path / "scores.txt").write_text(content)
    argv = [str(tmp_path / "scores.txt")] + [a.format(d=tmp_path) for a in args]
    code, _, err = cli("calibrate", *argv)
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_cli_as_a_module(tmp_path):
    """The real entry point: `python -m` exits 2 with one error line, --help explains."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "maskproxy_losses", "calibrate"]
    bad = tmp_path / "scores.txt"
    bad.write_text("1 0.5 a b\n")
    proc = subprocess.run(
        cmd + [str(bad), "--output", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "all 1 trials have label 1" in proc.stderr
    assert not (tmp_path / "c.json").exists()
    help_text = subprocess.run(
        cmd + ["--help"], capture_output=True, text=True, env=env, cwd=tmp_path
    ).stdout
    assert "--model-dir" in help_text and "logistic regression" in help_text


def test_read_scores_drops_a_bom_and_names_non_utf8_lines(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_bytes(b"\xef\xbb\xbf1 0.5 a b\n0 0.25 a c\n")  # saved by Notepad
    got = read_scores(path)
    assert got.scores.tolist() == [0.5, 0.25] and got.labels.tolist() == [1, 0]
    path.write_bytes(b"1 0.5 a b\n0 0.25 caf\xe9 c\n")
    with pytest.raises(InputError, match=f"{path}:2: not UTF-8 text"):
        read_scores(path)


def _model_dir(path):
    from conftest import tiny_model_dir

    return Path(tiny_model_dir(path, 0))


def test_cli_refuses_to_overwrite_the_scores_and_a_folder_that_is_no_model(tmp_path, cli):
    scores = tmp_path / "scores.txt"
    scores.write_text("1 0.9\n1 0.8\n0 0.1\n0 0.5\n")
    code, _, err = cli("calibrate", scores, "--output", scores)
    assert (
        code == 2
        and err
        == f"error: {scores}: is an input of this run (the scores file); choose another --output\n"
    )
    assert scores.read_text() == "1 0.9\n1 0.8\n0 0.1\n0 0.5\n"
    data = tmp_path / "data"
    data.mkdir()
    code, _, err = cli("calibrate", scores, "--model-dir", data)
    assert code == 2 and err == f"error: {data}: not a model directory (no hyperparams.yaml)\n"
    assert os.listdir(data) == []


def test_cli_warns_when_qmf_json_takes_precedence(tmp_path, cli):
    from maskproxy_losses.scoring.qmf import QMF

    model = _model_dir(tmp_path / "model")
    scores = tmp_path / "scores.txt"
    scores.write_text("1 0.9\n1 0.8\n0 0.1\n0 0.5\n")
    code, _, err = cli("calibrate", scores, "--model-dir", model)
    assert code == 0 and "warning" not in err
    meta = {"score_mode": "cosine", "norm": "none"}
    QMF(["duration"], [3.0, 0.5, -0.2], -1.0, meta=meta).save(model / "qmf.json")
    code, _, err = cli("calibrate", scores, "--model-dir", model)
    assert code == 0 and (model / CALIBRATION_FILE).is_file()
    assert err == (
        f"warning: {model / 'qmf.json'} takes precedence over this calibration in verify "
        "(identify uses calibration.json); remove qmf.json to verify with it\n"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("0 0.9\n0 0.8\n1 0.1\n1 0.5\n0 0.6\n1 0.55\n", "the fitted scale is negative"),
        ("0 0.5\n1 0.5\n0 0.5\n", "all 3 scores are 0.5: the calibration cannot use them"),
    ],
)
def test_cli_warns_about_a_useless_calibration(tmp_path, cli, content, message):
    (tmp_path / "s.txt").write_text(content)
    code, _, err = cli("calibrate", tmp_path / "s.txt", "--output", tmp_path / "c.json")
    assert code == 0 and f"warning: {message}" in err


def test_cli_names_the_first_score_out_of_range(tmp_path, cli):
    (tmp_path / "s.txt").write_text("1 1\n1 1e308\n0 -1e308\n0 0.2\n")
    code, _, err = cli("calibrate", tmp_path / "s.txt", "--output", tmp_path / "c.json")
    assert code == 2 and "Traceback" not in err and "NaN" not in err
    assert f"{tmp_path / 's.txt'}:2: score 1e308 is out of range" in err
    assert not (tmp_path / "c.json").exists()

"""Quality-aware calibration (QMF, maskproxy_losses.scoring.qmf): the fit against a direct
minimisation and a generating model, the file, and its use by verify_pair, embed and the
verification recipe."""

import importlib.util
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import RECIPE
from scipy.optimize import minimize

from maskproxy_losses.scoring.calibration import Calibration, cllr, fit_calibration
from maskproxy_losses.scoring.metrics import compute_eer
from maskproxy_losses.scoring.qmf import (
    QMF,
    QMF_FILE,
    TrialQuality,
    fit_qmf,
    qmf_for,
    qmf_metrics,
    quality_columns,
)
from maskproxy_losses.utils.errors import InputError


def _trials(n=600, seed=0):
    """Target / non-target scores whose means both shift with the shorter side's log
    duration ``q``: the true LLR is linear in (score, q) (see test_fit_recovers...)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], n // 2)
    dur = rng.uniform(1.0, 10.0, size=(n, 2))
    norms = rng.uniform(5.0, 9.0, size=(n, 2))
    q = np.log(dur.min(axis=1))
    scores = q * 0.2 + labels * 0.5 + rng.normal(0.0, 0.25, n)
    return scores, labels, TrialQuality(dur, norms)


def _softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("smooth", [True, False])
def test_fit_matches_a_direct_minimisation(smooth):
    scores, labels, quality = _trials()
    prior = 0.3
    qmf = fit_qmf(scores, labels, quality, prior=prior, smooth=smooth)
    x = np.column_stack([scores, quality_columns(["duration", "norm"], quality)])
    tar, non = labels == 1, labels == 0
    t_tar, t_non = (301 / 302, 1 / 302) if smooth else (1.0, 0.0)  # Platt's, 300 + 300
    logit = math.log(prior / (1 - prior))

    def objective(theta):  # the prior-weighted cross-entropy, written out
        e = x @ theta[:-1] + theta[-1] + logit
        ce_tar = t_tar * _softplus(-e[tar]) + (1 - t_tar) * _softplus(e[tar])
        ce_non = (1 - t_non) * _softplus(e[non]) + t_non * _softplus(-e[non])
        return prior * ce_tar.mean() + (1 - prior) * ce_non.mean()

    direct = minimize(objective, np.zeros(x.shape[1] + 1), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(qmf.weights, direct.x[:-1], rtol=1e-4, atol=1e-6)
    assert qmf.offset == pytest.approx(direct.x[-1], rel=1e-4, abs=1e-6)
    assert qmf.columns() == [
        "score",
        "log_min_duration",
        "log_max_duration",
        "min_norm",
        "max_norm",
    ]
    assert (qmf.n_target, qmf.n_nontarget, qmf.prior) == (300, 300, prior)


def test_fit_recovers_the_generating_llr_and_beats_linear_calibration():
    # score | target ~ N(0.2 q + 0.5, s^2), score | non-target ~ N(0.2 q, s^2): the LLR is
    # (0.5 score - 0.1 q - 0.125) / s^2 with q = log(shorter duration); the longer side
    # and the norms carry nothing.
    scores, labels, quality = _trials(n=40000, seed=1)
    qmf = fit_qmf(scores, labels, quality)
    s2 = 0.25**2
    want = np.array([0.5 / s2, -0.1 / s2, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(qmf.weights, want, atol=0.06 * want[0])
    assert qmf.offset == pytest.approx(-0.125 / s2, abs=0.06 * want[0])
    linear = fit_calibration(scores, labels)
    assert cllr(qmf(scores, quality), labels) < cllr(linear(scores), labels) - 0.05
    # swapping the trials' two sides changes nothing
    swapped = TrialQuality(quality.durations[:, ::-1], quality.norms[:, ::-1])
    np.testing.assert_allclose(qmf(scores, swapped), qmf(scores, quality))


def test_metrics_of_the_llrs():
    scores, labels, quality = _trials()
    qmf = fit_qmf(scores, labels, quality, features=("duration",))
    m = qmf_metrics(scores, labels, quality, qmf)
    llr = qmf(scores, quality)
    assert m["EER"] == pytest.approx(compute_eer(llr, labels)[0] * 100)
    assert m["Cllr"] == pytest.approx(cllr(llr, labels))
    assert m["minCllr"] <= m["Cllr"]
    with pytest.raises(ValueError, match="needs the trials' norms"):
        fit_qmf(scores, labels, TrialQuality(quality.durations, None), features=("norm",))


def test_file_round_trip_and_bad_files(tmp_path):
    qmf = QMF(["duration"], [3.0, 0.5, -0.2], -1.0, meta={"score_mode": "cosine", "norm": "none"})
    path = tmp_path / QMF_FILE
    qmf.save(path)
    assert QMF.load(path) == qmf
    assert json.loads(path.read_text())["columns"] == qmf.columns()
    data = json.loads(path.read_text())
    data["weights"] = [1.0]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=f"{path}: 'weights' must be 3 finite numbers"):
        QMF.load(path)
    path.write_text("{\n  nope")
    with pytest.raises(InputError, match=f"{path}:2: not valid JSON"):
        QMF.load(path)
    path.write_text('{"format": "maskproxy-calibration"}')
    with pytest.raises(InputError, match="not a QMF file"):
        QMF.load(path)


def test_which_qmf_applies(tmp_path):
    QMF(["duration"], [1.0, 0.0, 0.0], 0.0, meta={"score_mode": "cosine", "norm": "none"}).save(
        tmp_path / QMF_FILE
    )
    assert qmf_for(tmp_path, "cosine", "none")[1] == str(tmp_path / QMF_FILE)
    assert qmf_for(tmp_path, "cosine", "asnorm") == (None, None)  # fitted on other scores
    assert qmf_for(tmp_path, "cosine", "none", "none") == (None, None)
    other = tmp_path / "other.json"
    QMF(["norm"], [1.0, 0.0, 0.0], 0.0).save(other)
    assert qmf_for(tmp_path, "ten_crop", "asnorm", str(other))[0].features == ["norm"]


# ------------------------------------------------------------ where it is applied
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small exported model with a hand-written qmf.json and calibration.json, two wavs."""
    from maskproxy_losses import ResNet34, export_model

    root = tmp_path_factory.mktemp("qmf_model")
    torch.manual_seed(0)
    net = ResNet34(n_mels=80, channels=(4, 8, 8, 16), emb_dim=16).eval()
    model_dir = export_model(root / "model", net, frontend="fbank_cmn", n_mels=80)
    qmf = QMF(["duration", "norm"], [4.0, 0.7, -0.3, 0.05, -0.02], -2.0)
    qmf.meta = {"score_mode": "cosine", "norm": "none"}
    qmf.save(model_dir / QMF_FILE)
    Calibration(scale=10.0, offset=-5.0).save(model_dir / "calibration.json")
    rng = np.random.default_rng(0)
    wavs = [root / "a.wav", root / "b.wav"]
    for path, n in zip(wavs, (24000, 9000)):
        sf.write(path, rng.uniform(-0.5, 0.5, n), 16000)
    return model_dir, qmf, wavs


def _alone(model_dir, wav):
    """The raw embedding of one file by SpeechBrain's own EncoderClassifier."""
    from speechbrain.inference.speaker import EncoderClassifier

    savedir = model_dir.parent / "speechbrain_save"
    encoder = EncoderClassifier.from_hparams(source=str(model_dir), savedir=str(savedir))
    signal = torch.from_numpy(sf.read(wav, dtype="float32")[0])[None]
    return encoder.encode_batch(signal).reshape(-1).numpy().astype(np.float64)


def test_verify_pair_uses_the_model_directorys_qmf(model):
    from maskproxy_losses.inference.api import verify_pair

    model_dir, qmf, wavs = model
    e1, e2 = (_alone(model_dir, w) for w in wavs)
    score = e1 @ e2 / np.linalg.norm(e1) / np.linalg.norm(e2)
    d1, d2 = 24000 / 16000, 9000 / 16000
    n1, n2 = np.linalg.norm(e1), np.linalg.norm(e2)
    want = (
        4.0 * score
        + 0.7 * math.log(min(d1, d2))
        - 0.3 * math.log(max(d1, d2))
        + 0.05 * min(n1, n2)
        - 0.02 * max(n1, n2)
        - 2.0
    )
    result = verify_pair(model_dir, *wavs, precision="fp32")
    assert result.score == pytest.approx(score, abs=1e-5)
    assert result.llr == pytest.approx(want, abs=1e-4) and result.calibrated_with == "qmf"
    assert result.accept == (result.llr >= result.threshold)
    linear = verify_pair(model_dir, *wavs, precision="fp32", qmf=None)  # calibration.json
    assert linear.calibrated_with == "linear"
    assert linear.llr == pytest.approx(10.0 * linear.score - 5.0)
    from maskproxy_losses.inference.api import Verifier

    verifier = Verifier(model_dir, precision="fp32")  # the object API decides the same way
    same = verifier.verify(*wavs)
    assert same.llr == pytest.approx(want, abs=1e-4) and same.calibrated_with == "qmf"
    waveforms = [sf.read(w, dtype="float32")[0] for w in wavs]  # durations from the samples
    assert verifier.verify(*waveforms).llr == pytest.approx(want, abs=1e-4)
    assert Verifier(model_dir, precision="fp32", qmf=None).verify(*wavs).llr == pytest.approx(
        linear.llr
    )


def test_embed_writes_the_quality_measures(model, tmp_path, cli):
    model_dir, _, wavs = model
    code, out, err = cli(
        "embed", model_dir, "--dir", wavs[0].parent, "--output", tmp_path / "e.npz",
        "--no-cache", "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    with np.load(tmp_path / "e.npz") as z:
        assert z["durations"].tolist() == [1.5, 9000 / 16000]
        np.testing.assert_allclose(z["norms"], np.linalg.norm(z["embeddings"], axis=1))
        np.testing.assert_allclose(z["embeddings"][1], _alone(model_dir, wavs[1]), rtol=1e-4)


def test_verification_recipe_applies_and_fits_qmf(model, tmp_path):
    from data_prep.demo_corpus import generate_corpus
    from maskproxy_losses.inference.model_dir import load_encoder

    spec = importlib.util.spec_from_file_location("sv", RECIPE / "speaker_verification_cosine.py")
    sv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sv)
    model_dir, qmf, _ = model
    corpus = tmp_path / "corpus"
    generate_corpus(
        corpus, train_speakers=3, test_speakers=4, utterances=5, min_duration=1.0,
        max_duration=2.0, num_workers=1, n_trials=40,
    )  # fmt: skip
    base = [
        str(RECIPE / "hparams" / "verification.yaml"), "--pretrained_path", str(model_dir),
        "--data_folder", str(corpus), "--cache_dir", str(tmp_path / "cache"), "--device", "cpu",
        "--precision", "fp32", "--batch_seconds", "0",  # one file at a time, as below
    ]  # fmt: skip
    metrics = sv.verify(base + ["--output_folder", str(tmp_path / "cos")])
    assert metrics["options"]["qmf"] == str(model_dir / QMF_FILE)
    # the QMF LLRs from raw scores, soundfile durations and the encoder's own embeddings
    rows = [line.split() for line in (tmp_path / "cos" / "scores.txt").read_text().splitlines()]
    labels, scores = np.array([int(r[0]) for r in rows]), np.array([float(r[1]) for r in rows])
    root = corpus / "manifests"
    encoder = load_encoder(model_dir)
    emb, dur = {}, {}
    for r in rows:
        for rel in r[2:]:
            path = (root / rel).resolve()
            signal, rate = sf.read(path, dtype="float32")
            dur[rel] = len(signal) / rate
            emb[rel] = encoder.encode_batch(torch.from_numpy(signal)[None]).reshape(-1).numpy()
    quality = TrialQuality(
        np.array([[dur[r[2]], dur[r[3]]] for r in rows]),
        np.array([[np.linalg.norm(emb[r[2]]), np.linalg.norm(emb[r[3]])] for r in rows]),
    )
    want = qmf_metrics(scores, labels, quality, qmf)
    for key in ("EER", "minDCF_0.01", "Cllr", "minCllr"):
        assert metrics["QMF"][key] == pytest.approx(want[key], rel=1e-4, abs=1e-4), key
    # with AS-norm the model directory's QMF (fitted on cosine scores) does not apply; one
    # fitted on the dev trials scored the same way does
    out = tmp_path / "asnorm"
    asnorm = ["--norm", "asnorm", "--cohort_top_n", "3", "--output_folder", str(out)]
    assert "QMF" not in sv.verify(base + asnorm)
    fit = ["--qmf_fit_trials", str(root / "dev_trials.txt"), "--qmf_features", "[duration]"]
    metrics = sv.verify(base + asnorm + fit)
    fitted = QMF.load(out / QMF_FILE)
    assert fitted.meta == {"score_mode": "cosine", "norm": "asnorm"}
    assert fitted.features == ["duration"] and fitted.source == str(
        (root / "dev_trials.txt").resolve()
    )
    assert metrics["options"]["qmf"] == str(out / QMF_FILE) and "QMF" in metrics

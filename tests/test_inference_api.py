"""The object API (SpeakerEmbedder, Verifier), SpeechBrain's SpeakerRecognition with the
model's calibration, and the per-user embedding cache."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from maskproxy_losses.inference import api
from maskproxy_losses.inference.api import EnrolledSpeakers, Verifier, verify_pair
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.scoring.calibration import Calibration
from maskproxy_losses.utils.errors import InputError

# llr = 40 * cosine - 38: a pair is accepted at p_target 0.01 from a cosine of
# (log(99) + 38) / 40 = 1.0649, i.e. never; SpeechBrain's fixed 0.25 accepts nearly all.
CAL = Calibration(scale=40.0, offset=-38.0, n_target=5, n_nontarget=50, source="test")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval()
    extra = {"calibration.json": json.dumps(CAL.to_dict())}
    return export_model(tmp_path_factory.mktemp("api") / "model", model, extra_files=extra)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("api_wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(d / f"{i}.wav")
        sf.write(paths[-1], rng.uniform(-0.4, 0.4, 12000 + 2000 * i), 16000, subtype="FLOAT")
    return paths


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_verifier_loads_once_and_decides_with_the_calibration(model_dir, wavs, monkeypatch, capsys):
    loads = []
    real = api.load_encoder
    monkeypatch.setattr(api, "load_encoder", lambda *a, **k: loads.append(a) or real(*a, **k))
    embedded = []
    real_embed = api.embed_files
    monkeypatch.setattr(
        api,
        "embed_files",
        lambda m, paths, **k: embedded.extend(paths) or real_embed(m, paths, **k),
    )
    verifier = Verifier(model_dir, precision="fp32")
    emb = [verifier.embed(p) for p in wavs]
    results = [verifier.verify(wavs[0], w) for w in wavs[1:]]
    assert len(loads) == 1
    assert sorted(embedded) == sorted(map(str, wavs))  # each file embedded once, then kept
    assert capsys.readouterr().err == ""  # no progress bar for a handful of files
    for w, e, r in zip(wavs[1:], emb[1:], results):
        assert r.score == pytest.approx(_cos(emb[0], e), abs=1e-6)
        assert r.llr == pytest.approx(40.0 * r.score - 38.0, abs=1e-9)
        assert r.threshold == pytest.approx(math.log(99)) and r.accept is (r.llr >= r.threshold)
        same = verify_pair(model_dir, wavs[0], w, precision="fp32")  # the function agrees
        assert (same.score, same.llr, same.accept) == pytest.approx((r.score, r.llr, r.accept))
    assert verifier.verify(wavs[0], wavs[0]).score == pytest.approx(1.0, abs=1e-6)
    uncalibrated = Verifier(model_dir, calibration=None, precision="fp32")
    assert uncalibrated.verify(wavs[0], wavs[1]).llr is None
    with pytest.raises(InputError, match="p_target"):
        Verifier(model_dir, p_target=1.5)


def test_enrol_and_identify_rank_by_cosine_to_the_speaker_means(model_dir, wavs, tmp_path, cli):
    verifier = Verifier(model_dir, precision="fp32")
    speakers = verifier.enrol({"ann": wavs[:2], "bob": wavs[2:3]})
    assert isinstance(speakers, EnrolledSpeakers) and speakers.ids == ["ann", "bob"]
    emb = [verifier.embed(p) for p in wavs]
    ann = (emb[0] / np.linalg.norm(emb[0]) + emb[1] / np.linalg.norm(emb[1])) / 2
    np.testing.assert_allclose(speakers.models[0], ann, rtol=1e-5, atol=1e-6)
    matches = verifier.identify(wavs[3], speakers, top_k=2)
    want = sorted([("ann", _cos(emb[3], ann)), ("bob", _cos(emb[3], emb[2]))], key=lambda m: -m[1])
    assert [(m.speaker, m.rank) for m in matches] == [(want[0][0], 1), (want[1][0], 2)]
    assert matches[0].score == pytest.approx(want[0][1], abs=1e-6)
    assert matches[0].llr == pytest.approx(40.0 * matches[0].score - 38.0)
    # A speakers file written by `maskproxy enrol` with this model works the same.
    enrol = tmp_path / "enrol.txt"
    enrol.write_text(f"ann {wavs[0]}\nann {wavs[1]}\nbob {wavs[2]}\n")
    code, _, err = cli(
        "enrol", model_dir, "--speakers", enrol, "--output", tmp_path / "s.npz",
        "--no-cache", "--precision", "fp32", "--batch-seconds", "0",  # each file alone
    )  # fmt: skip
    assert code == 0, err
    from_file = verifier.identify(wavs[3], tmp_path / "s.npz", top_k=2)
    assert [m.speaker for m in from_file] == [m.speaker for m in matches]
    assert [m.score for m in from_file] == pytest.approx([m.score for m in matches], abs=1e-6)


def test_calibrated_speaker_recognition_uses_calibration_json(model_dir, wavs, tmp_path):
    from speechbrain.inference.speaker import SpeakerRecognition

    from maskproxy_losses.inference.speechbrain_interface import CalibratedSpeakerRecognition

    plain = SpeakerRecognition.from_hparams(source=str(model_dir), savedir=str(tmp_path / "p"))
    calibrated = CalibratedSpeakerRecognition.from_hparams(
        source=str(model_dir), savedir=str(tmp_path / "c")
    )
    score, plain_decision = plain.verify_files(str(wavs[0]), str(wavs[1]))
    cal_score, decision = calibrated.verify_files(str(wavs[0]), str(wavs[1]))
    assert float(cal_score) == pytest.approx(float(score), abs=1e-6)
    # A random model scores different signals close to 1: SpeechBrain's 0.25 accepts, the
    # calibration (llr = 40 cosine - 38, accept from llr 4.595) does not.
    assert bool(plain_decision) and float(score) > 0.25 and not bool(decision)
    assert calibrated.cosine_threshold(0.01) == pytest.approx((math.log(99) + 38) / 40)
    lenient = 1.0 - 1e-9  # p_target near 1: threshold log((1 - p) / p) far below 0
    _, accept = calibrated.verify_files(str(wavs[0]), str(wavs[1]), p_target=lenient)
    assert bool(accept) is (40.0 * float(score) - 38.0 >= math.log(1e-9 / lenient))
    _, fixed = calibrated.verify_files(str(wavs[0]), str(wavs[1]), threshold=0.25)
    assert bool(fixed) == bool(plain_decision)  # an explicit threshold: SpeechBrain's rule
    bare = export_model(tmp_path / "bare", ResNetSE34L(blocks=(1, 1, 1, 1), emb_dim=8).eval())
    with pytest.raises(ValueError, match="no usable calibration.json"):
        CalibratedSpeakerRecognition.from_hparams(source=str(bare), savedir=str(tmp_path / "b"))


def test_embedding_cache_defaults_to_the_per_user_folder(
    model_dir, wavs, tmp_path, monkeypatch, cli
):
    from maskproxy_losses.inference.embedding import default_cache_dir

    monkeypatch.delenv("MASKPROXY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "maskproxy" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "maskproxy" / "embeddings"
    monkeypatch.setenv("MASKPROXY_CACHE_DIR", str(tmp_path / "mine"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = cli("embed", model_dir, wavs[0], "--output", "e.npz")
    assert code == 2  # embed takes --wav-list / --dir, not WAV arguments
    (work / "w.txt").write_text(f"{wavs[0]}\n")
    code, out, err = cli("embed", model_dir, "--wav-list", "w.txt", "--output", "e.npz")
    assert code == 0, err
    assert str(tmp_path / "mine") in out and list((tmp_path / "mine").rglob("shard-*.npz"))
    assert sorted(p.name for p in work.iterdir()) == ["e.npz", "w.txt"]  # no ./results

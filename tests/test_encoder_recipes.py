"""Every encoder through every deployment path (issue 26): a 1-epoch run with each Masked
Proxy loss exports a model directory that SpeechBrain's EncoderClassifier loads offline,
that loads without ``--trust``, that ONNX reproduces and that the verification recipe
scores (with its QMF); for the new encoders also checkpoint averaging, fine-tuning,
``embed`` / ``enrol`` / ``identify`` / ``verify`` and ten-crop AS-norm verification.
Reduced widths (``--channels``) keep each run to seconds."""

import importlib.util
import json

import numpy as np
import pytest
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)
from conftest import RECIPE

from maskproxy_losses.data.audio import read_wav
from maskproxy_losses.inference.model_dir import HPARAMS_FILE, check_hparams, load_encoder

pytest.importorskip("onnxruntime")

CHANNELS = {  # reduced widths
    "resnetse34l": "[8,8,16,16]",
    "resnet34": "[4,8,8,16]",
    "ecapa_tdnn": "[32,32,32,32,96]",
}
EXPORTED_AS = {
    "resnetse34l": "maskproxy_losses.models.resnetse34l.ResNetSE34L",
    "resnet34": "maskproxy_losses.models.resnet34.ResNet34",
    "ecapa_tdnn": "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
}
FAST = {("resnet34", "mp_balance"), ("ecapa_tdnn", "mmp_balance")}
CASES = [
    pytest.param(e, loss, marks=() if (e, loss) in FAST else pytest.mark.slow)
    for e in CHANNELS
    for loss in ("mp", "mmp", "mp_balance", "mmp_balance")
]


def _verification():
    spec = importlib.util.spec_from_file_location(
        "speaker_verification_cosine", RECIPE / "speaker_verification_cosine.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _verify_argv(model_dir, corpus, out, *extra):
    return [
        str(RECIPE / "hparams" / "verification.yaml"),
        "--pretrained_path", str(model_dir), "--data_folder", str(corpus),
        "--output_folder", str(out), "--cache_dir", str(out / "cache"), "--device", "cpu",
        "--precision", "fp32", *extra,
    ]  # fmt: skip


def _train(recipe_args, corpus, out, encoder, loss="mp_balance", **overrides):
    return recipe.train(
        recipe_args(
            corpus, out, name=loss, encoder=encoder, channels=CHANNELS[encoder], **overrides
        )
    )


@pytest.mark.parametrize("encoder, loss", CASES)
def test_one_epoch_exports_a_model_every_path_loads(
    corpus, tmp_path, capsys, recipe_args, final_line, encoder, loss
):
    from speechbrain.inference.speaker import EncoderClassifier

    from maskproxy_losses.inference.onnx_export import export_onnx, relative_error
    from maskproxy_losses.inference.onnx_runtime import OnnxEmbedder

    _train(recipe_args, corpus, tmp_path / "run", encoder, loss)
    test_eer, _ = final_line(capsys.readouterr().out)
    model_dir = tmp_path / "run" / "model"
    assert {p.name for p in model_dir.iterdir()} >= {
        HPARAMS_FILE, "embedding_model.ckpt", "calibration.json", "qmf.json"
    }  # fmt: skip
    assert f"embedding_model: !new:{EXPORTED_AS[encoder]}" in (model_dir / HPARAMS_FILE).read_text()
    check_hparams(model_dir)  # the allow-list: loads without --trust
    ours = load_encoder(model_dir)
    theirs = EncoderClassifier.from_hparams(source=str(model_dir), savedir=str(tmp_path / "sb"))
    wavs = sorted((corpus / "wav").rglob("*.wav"))[:3]
    signals = [read_wav(w)[None] for w in wavs]
    with torch.no_grad():
        want = [theirs.encode_batch(s).reshape(-1) for s in signals]
        for s, w in zip(signals, want):
            torch.testing.assert_close(ours.encode_batch(s).reshape(-1), w, rtol=1e-5, atol=1e-5)
    # ONNX: the export's own check, then SpeechBrain's embeddings of real files
    onnx_file = export_onnx(model_dir, tmp_path / "model.onnx")
    onnx = OnnxEmbedder(onnx_file)
    for s, w in zip(signals, want):
        whole, _ = relative_error(onnx(s.numpy()), w.numpy()[None])
        assert whole <= 1e-4
    # the verification recipe scores it, with the model directory's QMF
    metrics = _verification().verify(_verify_argv(model_dir, corpus, tmp_path / "ver"))
    # the recipe's test EER, up to one trial: the two batch the files differently, which
    # moves an embedding by ~1e-5 (masked encoders; more for ECAPA's reflect-padded
    # convolutions), enough to reorder the nearly tied scores of a 1-epoch model
    one_trial = 100.0 / min(metrics["n_target"], metrics["n_nontarget"])
    assert metrics["EER"] == pytest.approx(test_eer, abs=one_trial + 0.01)
    assert metrics["options"]["qmf"] == str(model_dir / "qmf.json") and "Cllr" in metrics["QMF"]


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["resnet34", "ecapa_tdnn"])
def test_averaging_fine_tuning_and_the_tools(corpus, tmp_path, capsys, recipe_args, cli, encoder):
    first = tmp_path / "first"
    _train(recipe_args, corpus, first, encoder, number_of_epochs=2, average_checkpoints=2)
    assert "the average of 2 checkpoint(s)" in (first / "log.txt").read_text()
    # fine-tuning starts from the first run's exported (averaged) encoder
    tuned = tmp_path / "tuned"
    brain = _train(recipe_args, corpus, tuned, encoder, pretrained=first, crop_frames=90)
    start = torch.load(first / "model" / "embedding_model.ckpt")
    assert brain.modules.embedding_model.state_dict().keys() == start.keys()
    assert f"pretrained: encoder weights from {first / 'model'}" in (tuned / "log.txt").read_text()
    capsys.readouterr()
    model_dir = tuned / "model"
    # embed / enrol / identify / verify
    wavs = sorted((corpus / "wav").rglob("*.wav"))
    (tmp_path / "list.txt").write_text("".join(f"{w}\n" for w in wavs[:4]))
    code, _, err = cli(
        "embed", model_dir, "--wav-list", tmp_path / "list.txt", "--output", tmp_path / "e.npz",
        "--no-cache", "--precision", "fp32",
    )  # fmt: skip
    assert code == 0, err
    encoder_ = load_encoder(model_dir)
    with np.load(tmp_path / "e.npz") as z:
        alone = encoder_.encode_batch(read_wav(wavs[0])[None]).reshape(-1).numpy()
        cosine = alone @ z["embeddings"][0] / np.linalg.norm(alone) / z["norms"][0]
        assert cosine > 0.99  # batched (padded) vs alone: exact for ResNet34, close for ECAPA
    by_speaker = {}
    for w in wavs:
        by_speaker.setdefault(w.parent.parent.name, []).append(w)
    enrolled = sorted(by_speaker)[:3]
    speakers = "".join(f"{s} {w}\n" for s in enrolled for w in by_speaker[s][:2])
    (tmp_path / "spk.txt").write_text(speakers)
    code, _, err = cli(
        "enrol", model_dir, "--speakers", tmp_path / "spk.txt", "--output", tmp_path / "s.npz",
        "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(
        "identify", model_dir, "--speakers", tmp_path / "s.npz", wavs[0], "--no-cache",
        "--top-k", "1",
    )  # fmt: skip
    rows = [line.split("\t") for line in out.splitlines() if line.startswith(str(wavs[0]))]
    assert code == 0 and len(rows) == 1 and rows[0][2] in enrolled, out + err
    code, out, err = cli("verify", model_dir, wavs[0], wavs[1])
    assert code == 0 and "(qmf.json)" in out, out + err
    # ten-crop AS-norm verification, QMF fitted on the dev trials scored the same way
    out = tmp_path / "ver"
    dev_trials = corpus / "manifests" / "dev_trials.txt"
    extra = ["--score_mode", "ten_crop", "--num_crops", "3", "--crop_frames", "100"]
    extra += ["--norm", "asnorm", "--cohort_top_n", "3", "--qmf_fit_trials", str(dev_trials)]
    metrics = _verification().verify(_verify_argv(model_dir, corpus, out, *extra))
    assert metrics["options"]["score_mode"] == "ten_crop" and "QMF" in metrics
    assert json.loads((out / "qmf.json").read_text())["meta"]["norm"] == "asnorm"

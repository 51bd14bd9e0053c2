"""Audio as users have it: other sample rates and stereo at inference, --resample at prep.

The 44.1 kHz stereo copies are made here with scipy's polyphase resampler (not the
torchaudio resampler the package uses): the left and right channels differ (the original
plus and minus a small noise), so that mixing down has something to average.
"""

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import resample_poly

from maskproxy_losses.data.audio import probe, read_wav
from maskproxy_losses.inference.api import SpeakerEmbedder, embed_files, verify_pair
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.errors import InputError

# A 44.1 kHz stereo copy of a 16 kHz file embeds within this cosine distance (1 - cosine)
# and relative L2 distance of the original's embedding. Measured with the shallow random
# model below: 2-4e-7 and 0.9-1.2e-3 for the copies, 1.6e-4 and 0.02 between the two
# different signals (a random model maps different inputs close together; a trained one
# spreads them further).
MAX_COSINE_DISTANCE = 1e-5
MAX_RELATIVE_L2 = 0.005


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=32).eval()
    for m in model.modules():  # BatchNorm statistics off (0, 1), so that they matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return export_model(tmp_path_factory.mktemp("conv") / "model", model)


def _speech_like(seed, seconds=2.0):
    """A 16 kHz signal with harmonics and a moving pitch, below 7 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 110 + 40 * rng.random() + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    sig = sum(np.sin(k * phase) / k for k in range(1, 25) if k * f0.max() < 7000)
    sig *= 0.5 + 0.5 * np.sin(2 * np.pi * 2.5 * t) ** 2  # syllable-like envelope
    return (0.3 * sig / np.abs(sig).max() + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """``{name: path}``: 16 kHz mono originals, their 44.1 kHz stereo and 8 kHz copies."""
    d = tmp_path_factory.mktemp("wavs")
    out = {}
    for i in range(2):
        x = _speech_like(i)
        out[f"orig{i}"] = d / f"orig{i}.wav"
        sf.write(out[f"orig{i}"], x, 16000, subtype="FLOAT")
        up = resample_poly(x, 441, 160)
        noise = 0.01 * np.random.default_rng(10 + i).standard_normal(up.size)
        out[f"stereo{i}"] = d / f"stereo44k{i}.wav"
        sf.write(out[f"stereo{i}"], np.stack([up + noise, up - noise], 1), 44100, subtype="FLOAT")
    out["narrow0"] = d / "narrow8k0.wav"
    sf.write(out["narrow0"], resample_poly(_speech_like(0), 1, 2), 8000, subtype="FLOAT")
    return out


def _distances(a, b):
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return 1.0 - cos, float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_44k_stereo_copy_embeds_like_the_16k_mono_original(model_dir, wavs):
    paths = [wavs["orig0"], wavs["stereo0"], wavs["orig1"], wavs["stereo1"]]
    stats = {}
    emb = embed_files(model_dir, paths, precision="fp32", stats=stats)
    assert "resampled to 16000 Hz: 2 file(s) (2 at 44100 Hz)" in stats["note"]
    assert "mixed down to mono (channels averaged): 2 file(s)" in stats["note"]
    copies = [_distances(emb[i + 1], emb[i]) for i in (0, 2)]
    for cos_d, rel in copies:
        assert cos_d < MAX_COSINE_DISTANCE and rel < MAX_RELATIVE_L2, copies
    # A copy is 10 times closer to its original than the other signal is, on both measures.
    cos_d, rel = _distances(emb[2], emb[0])
    assert cos_d > 10 * max(c for c, _ in copies) and rel > 10 * max(r for _, r in copies)
    # The resampled waveform itself is close to the original (scipy there, torchaudio back).
    orig, back = read_wav(str(wavs["orig0"])), read_wav(str(wavs["stereo0"]), convert=True)
    assert abs(back.shape[0] - orig.shape[0]) <= 1
    n = min(back.shape[0], orig.shape[0])
    err = (back[200 : n - 200] - orig[200 : n - 200]).abs().max().item()
    assert err < 0.01, err


def test_8k_copy_is_upsampled_and_verify_pair_reads_any_rate(model_dir, wavs):
    result = verify_pair(model_dir, wavs["orig0"], wavs["stereo0"], precision="fp32")
    assert 1.0 - result.score < MAX_COSINE_DISTANCE
    narrow = verify_pair(model_dir, wavs["orig0"], wavs["narrow0"], precision="fp32")
    assert -1.0 <= narrow.score <= 1.0
    x8, _ = sf.read(wavs["narrow0"], dtype="float32")
    up = resample_poly(x8, 2, 1)  # scipy's 8 -> 16 kHz, against the package's
    got = read_wav(str(wavs["narrow0"]), convert=True).numpy()
    assert got.shape == up.shape
    assert np.abs(got[200:-200] - up[200:-200]).max() < 0.01


def test_the_option_refuses_instead(model_dir, wavs):
    with pytest.raises(InputError, match=r"sample rate 44100 Hz, expected 16000: .*stereo44k0"):
        embed_files(model_dir, [wavs["orig0"], wavs["stereo0"]], resample=False)
    with pytest.raises(InputError, match="sample rate 8000 Hz"):
        verify_pair(model_dir, wavs["orig0"], wavs["narrow0"], resample=False)
    assert probe(str(wavs["stereo0"]))[1].startswith("sample rate 44100 Hz")
    assert probe(str(wavs["stereo0"]), convert=True) == (pytest.approx(2.0, abs=1e-4), None)


def test_cli_embed_notes_the_conversion_and_no_resample_refuses(model_dir, wavs, tmp_path, cli):
    listing = tmp_path / "wavs.txt"
    listing.write_text(f"{wavs['orig0']}\n{wavs['stereo0']}\n")
    code, out, err = cli(
        "embed", model_dir, "--wav-list", listing, "--output", tmp_path / "e.npz",
        "--precision", "fp32", "--no-cache",
    )  # fmt: skip
    assert code == 0, err
    assert "note: resampled to 16000 Hz: 1 file(s) (1 at 44100 Hz); mixed down" in err
    emb = np.load(tmp_path / "e.npz")["embeddings"]
    assert _distances(emb[1], emb[0])[0] < MAX_COSINE_DISTANCE
    code, out, err = cli(
        "embed", model_dir, "--wav-list", listing, "--output", tmp_path / "f.npz",
        "--no-resample", "--no-cache",
    )  # fmt: skip
    assert code == 2 and f"error: {listing}:2: sample rate 44100 Hz" in err
    assert not (tmp_path / "f.npz").exists()


def test_object_api_embeds_waveforms_at_any_rate(model_dir, wavs):
    embedder = SpeakerEmbedder(model_dir, precision="fp32")
    x16, _ = sf.read(wavs["orig0"], dtype="float32")
    x44, _ = sf.read(wavs["stereo0"], dtype="float32")
    ref = embedder.embed(wavs["orig0"])
    np.testing.assert_allclose(embedder.embed(torch.from_numpy(x16)), ref, rtol=1e-5, atol=1e-6)
    got = embedder.embed(x44.T, sample_rate=44100)  # [channels, samples], as torchaudio loads
    assert _distances(got, ref)[0] < MAX_COSINE_DISTANCE
    with pytest.raises(InputError, match="too short to embed: 100 samples"):
        embedder.embed(np.zeros(100))


def test_cli_verify_notes_the_conversion(model_dir, wavs, cli):
    code, out, err = cli("verify", model_dir, wavs["orig0"], wavs["stereo0"], "--precision", "fp32")
    assert code == 0, err
    assert "note: resampled to 16000 Hz: 1 file(s) (1 at 44100 Hz)" in err
    assert 1.0 - float(out.split()[1]) < MAX_COSINE_DISTANCE  # "score: 0.99999... (cosine)"
    code, _, err = cli("verify", model_dir, wavs["orig0"], wavs["stereo0"], "--no-resample")
    assert code == 2 and "error: wav2: sample rate 44100 Hz" in err


def test_prepare_refuses_other_rates_unless_resample(tmp_path, wavs, cli):
    from data_prep.voxceleb import prepare_voxceleb

    root = tmp_path / "train"
    x = _speech_like(3, seconds=1.0)
    for spk in ("id1", "id2"):
        for u in range(3):
            (root / spk / "s").mkdir(parents=True, exist_ok=True)
            sf.write(root / spk / "s" / f"{u}.wav", x * (u + 1) / 4, 16000)
    odd = root / "id2" / "s" / "3.wav"
    up = resample_poly(x, 441, 160)
    sf.write(odd, np.stack([up, up], 1), 44100, subtype="FLOAT")
    with pytest.raises(InputError, match=r"sample rate 44100 Hz, expected 16000.*--resample"):
        prepare_voxceleb(tmp_path / "m1", train_root=root, dev_share=0)
    out = prepare_voxceleb(tmp_path / "m2", train_root=root, dev_share=0, resample=True)
    rows = [line.split(",") for line in open(out["train_csv"]).read().splitlines()[1:]]
    copy = next(r[2] for r in rows if r[0].endswith("--3"))
    assert copy.startswith(str(tmp_path / "m2" / "resampled_16k")) and len(rows) == 7
    info = sf.info(copy)
    assert (info.samplerate, info.channels) == (16000, 1)
    got, _ = sf.read(copy, dtype="float32")
    n = min(got.size, x.size)
    assert np.abs(got[200 : n - 200] - x[200 : n - 200]).max() < 0.01  # PCM_16 + resampling
    code, out, err = cli(
        "prepare", "--train-root", root, "--output-dir", tmp_path / "m3", "--dev-share", "0",
        "--resample",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "m3" / "resampled_16k").is_dir() and "train_csv" in out

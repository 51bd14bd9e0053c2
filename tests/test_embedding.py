"""Batched, cached embedding extraction against one-file-at-a-time encoding."""

import numpy as np
import pytest
import soundfile as sf
import torch

from maskproxy_losses.data.audio import read_wav
from maskproxy_losses.inference.embedding import Embedder, EmbeddingCache, file_key
from maskproxy_losses.inference.export import export_model
from maskproxy_losses.inference.model_dir import load_encoder
from maskproxy_losses.models.resnetse34l import ResNetSE34L
from maskproxy_losses.utils.errors import InputError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("embedding")
    torch.manual_seed(0)
    model = ResNetSE34L(channels=(8, 8, 16, 32), blocks=(1, 1, 1, 1), emb_dim=32).eval()
    model_dir = export_model(base / "model", model, frontend="fbank")
    rng = np.random.default_rng(0)
    wavs = []
    for i, seconds in enumerate((1.0, 1.7, 0.6, 2.3)):
        path = base / f"u{i}.wav"
        sf.write(path, rng.uniform(-0.5, 0.5, int(seconds * 16000)), 16000, subtype="FLOAT")
        wavs.append(str(path))
    return {"base": base, "encoder": load_encoder(model_dir), "wavs": wavs}


def _embed(setup, batch_seconds, max_seconds, folder):
    cache = EmbeddingCache(setup["base"] / folder)
    lengths = {p: read_wav(p).shape[0] for p in setup["wavs"]}
    return Embedder(setup["encoder"], cache, None, batch_seconds, max_seconds)(
        setup["wavs"], lengths
    )


def test_batched_matches_one_by_one(setup):
    one_by_one, _ = _embed(setup, 0.001, 300, "c1")  # a batch per file
    direct = np.stack(
        [
            setup["encoder"].encode_batch(read_wav(p)[None]).reshape(-1).numpy()
            for p in setup["wavs"]
        ]
    )
    np.testing.assert_allclose(one_by_one, direct, rtol=1e-5, atol=1e-6)
    # padded in one batch, relative lengths in frames: every file keeps exactly its own
    # frames (data.length_batches.frame_pad), so the embedding is the one it gets alone
    batched, _ = _embed(setup, 100, 300, "c2")
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-5)


def test_long_files_are_the_mean_of_their_chunks(setup):
    chunked, _ = _embed(setup, 100, 0.5, "c3")
    wav = read_wav(setup["wavs"][0])
    parts = torch.tensor_split(wav, int(np.ceil(wav.shape[0] / 8000)))
    want = np.mean([setup["encoder"].encode_batch(p[None]).reshape(-1).numpy() for p in parts], 0)
    np.testing.assert_allclose(chunked[0], want, rtol=1e-3, atol=1e-3)


def test_cache_hits_and_invalidation(setup):
    first, (hits, computed) = _embed(setup, 100, 300, "c4")
    assert (hits, computed) == (0, 4)
    again, (hits, computed) = _embed(setup, 100, 300, "c4")
    assert (hits, computed) == (4, 0) and np.array_equal(first, again)
    # a rewritten file has a new key (mtime / size), so it is embedded again
    path = setup["wavs"][2]
    old_key = file_key(path)
    sf.write(path, np.linspace(-0.1, 0.1, 12000), 16000, subtype="FLOAT")
    assert file_key(path) != old_key
    _, (hits, computed) = _embed(setup, 100, 300, "c4")
    assert (hits, computed) == (3, 1)


def test_bf16_extraction_has_its_own_cache_and_stays_close(setup):
    from maskproxy_losses.inference.embedding import cache_folder

    assert cache_folder("c", "f" * 64) != cache_folder("c", "f" * 64, precision="bf16")
    lengths = {p: read_wav(p).shape[0] for p in setup["wavs"]}
    fp32, _ = Embedder(setup["encoder"], EmbeddingCache(setup["base"] / "p32"), None, 0.001)(
        setup["wavs"], lengths
    )
    bf16, _ = Embedder(
        setup["encoder"], EmbeddingCache(setup["base"] / "p16"), None, 0.001, precision="bf16"
    )(setup["wavs"], lengths)
    assert not np.array_equal(fp32, bf16)  # autocast really ran in bfloat16
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() > 0.99


def _float_wav(path, values):
    sf.write(path, np.asarray(values, dtype=np.float64), 16000, subtype="FLOAT")
    return str(path)


def test_non_finite_audio_or_embedding_is_named_and_never_cached(setup, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, 16000)
    nan = x.copy()
    nan[4000] = np.nan
    # finite samples, but so large that the log-mel front end overflows to NaN
    huge = np.where(np.arange(16000) % 2, 1e20, -1e20)
    paths = [
        setup["wavs"][0],
        _float_wav(tmp_path / "nan.wav", nan),
        _float_wav(tmp_path / "huge.wav", huge),
    ]
    lengths = {p: 16000 for p in paths}
    wheres = {paths[1]: "list.txt:2", paths[2]: "list.txt:3"}
    embed = Embedder(setup["encoder"], EmbeddingCache(tmp_path / "cache"), None, 100, 300)
    with pytest.raises(InputError) as err:
        embed(paths, lengths, wheres)
    assert err.value.problems == [
        f"list.txt:2: non-finite sample (NaN/Inf) at sample 4000: {paths[1]}",
        f"list.txt:3: non-finite embedding (NaN/Inf) of {paths[2]}; check this audio file",
    ]
    # only the good file was cached (and the next run finds it there)
    cache = EmbeddingCache(tmp_path / "cache")
    assert set(cache.table) == {file_key(paths[0])}
    bad = {}  # --skip-bad: reported, NaN rows for the caller to drop
    emb, (hits, computed) = embed(paths, lengths, wheres, bad=bad)
    assert (hits, computed) == (1, 2) and sorted(bad) == sorted(paths[1:])
    assert np.isfinite(emb[0]).all() and np.isnan(emb[1:]).all()
    with pytest.raises(ValueError, match="refusing to cache a non-finite"):
        cache.put("k", np.array([np.nan], np.float32))


def test_silent_or_truncated_audio_is_named_and_never_cached(setup, tmp_path):
    silent = _float_wav(tmp_path / "silent.wav", np.zeros(16000))
    # a header that promises 1 s over 500 samples of data (a cut download)
    cut = tmp_path / "cut.wav"
    _float_wav(cut, np.random.default_rng(2).uniform(-0.5, 0.5, 16000))
    cut.write_bytes(cut.read_bytes()[: 80 + 4 * 500])
    paths = [setup["wavs"][0], silent, str(cut)]
    wheres = {silent: "list.txt:2", str(cut): "list.txt:3"}
    embed = Embedder(setup["encoder"], EmbeddingCache(tmp_path / "cache"), None, 100, 300)
    with pytest.raises(InputError) as err:
        embed(paths, {p: 16000 for p in paths}, wheres)
    assert err.value.problems[0] == f"list.txt:2: silent: every sample is 0: {silent}"
    assert err.value.problems[1].startswith("list.txt:3: too short to embed: ")
    assert set(EmbeddingCache(tmp_path / "cache").table) == {file_key(paths[0])}


def test_embeddings_are_cached_when_a_run_is_interrupted(setup, tmp_path, monkeypatch):
    embed = Embedder(setup["encoder"], EmbeddingCache(tmp_path / "cache"), None, 0.001, 300)
    real, calls = embed._embed_batch, []

    def interrupt_third_batch(paths, wheres):
        calls.append(paths)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(paths, wheres)

    monkeypatch.setattr(embed, "_embed_batch", interrupt_third_batch)
    wavs = setup["wavs"]
    with pytest.raises(KeyboardInterrupt):
        embed(wavs, {p: read_wav(p).shape[0] for p in wavs})
    done = {file_key(p) for batch in calls[:2] for p in batch}
    assert len(done) == 2 and set(EmbeddingCache(tmp_path / "cache").table) == done


def test_cached_nan_from_an_older_version_is_ignored(tmp_path):
    import io

    folder = tmp_path / "cache"
    folder.mkdir()
    buf = io.BytesIO()  # a shard as the writer made it before non-finite values were refused
    np.savez(buf, keys=np.array(["good", "bad"]), emb=np.array([[1.0, 2.0], [np.nan, 0.0]]))
    (folder / "shard-old.npz").write_bytes(buf.getvalue())
    cache = EmbeddingCache(folder)
    assert list(cache.table) == ["good"] and cache.get("bad") is None

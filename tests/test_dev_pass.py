"""The dev / test passes: only the trials' files, whole, in padded length-bucketed batches
that give the embeddings of one file at a time; ``valid_every``; the dev pass's seconds
in the train log."""

import os
import re

import numpy as np
import pytest
import soundfile as sf
import speechbrain as sb
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)

from maskproxy_losses.data.length_batches import (
    LengthBatches,
    budget_batches,
    frame_pad,
    verification_loader_options,
)
from maskproxy_losses.data.trials import read_prepared_trials
from maskproxy_losses.training.hparams import load_recipe_hparams
from maskproxy_losses.training.recipe_setup import dataio_prep, prepare_manifests


def test_batch_seconds_auto_per_device_and_bad_values_named():
    from maskproxy_losses.data.length_batches import auto_batch_seconds
    from maskproxy_losses.utils.errors import InputError

    assert auto_batch_seconds("auto", "cpu") == 100.0  # the fastest on a CPU (docs/results.md)
    assert auto_batch_seconds("auto", "cuda:1") == 400.0
    assert auto_batch_seconds("2.5", "cpu") == 2.5
    for bad in (0, -3, "many", None):
        with pytest.raises(InputError, match="batch_seconds must be auto or > 0"):
            auto_batch_seconds(bad)


def test_budget_batches_hold_the_budget_and_every_index_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, 200).tolist()
    batches = budget_batches(lengths, budget=300)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 300
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert len(budget_batches([500, 10], budget=300)) == 2  # too long: a batch of its own
    assert list(LengthBatches([16000, 32000, 8000], batch_seconds=3.0)) == [[1], [0, 2]]


def test_frame_pad_lengths_give_each_file_its_own_frames():
    """The relative lengths count STFT frames (``n // 160 + 1``): both masks in use, the
    encoder's ``round(l * T)`` and SpeechBrain's ``make_padding_mask``, keep exactly a
    file's own frames, for lengths where sample-relative lengths would be off by one."""
    from speechbrain.processing.features import make_padding_mask

    sizes = [16000, 32000, 24159, 160, 100_000, 99_999, 48_321]
    batch, lens = frame_pad([torch.zeros(n) for n in sizes])
    T = batch.shape[1] // 160 + 1
    want = [n // 160 + 1 for n in sizes]
    assert torch.round(lens.float() * T).long().tolist() == want
    assert make_padding_mask(torch.zeros(len(sizes), T, 1), lens).sum(dim=(1, 2)).tolist() == want
    # what sample-relative lengths would give: one frame off for 16000 of 32000 samples
    assert round(16000 / 100_000 * (100_000 // 160 + 1)) != 16000 // 160 + 1


def _hparams(corpus, out, **changes):
    overrides = {
        "builtin_corpus": False, "data_folder": str(corpus), "output_folder": str(out),
        "manifest_folder": str(out / "manifests"), "dev_share": 2, "emb_dim": 64,
        "speakers_per_batch": 3, **changes,
    }  # fmt: skip
    text = "\n".join(f"{k}: {v}" for k, v in overrides.items())
    hparams, _ = load_recipe_hparams(str(recipe_file()), text)
    return hparams


def recipe_file():
    from conftest import RECIPE

    return RECIPE / "hparams" / "mp_balance.yaml"


def test_dev_and_test_sets_are_the_trials_files(corpus, tmp_path):
    """With 4 dev trials, the dev set is the (at most 8) files they name, not the 12 dev
    files of the manifest; the test set is its trials' files."""
    hparams = _hparams(corpus, tmp_path, n_dev_trials=4)
    manifests = prepare_manifests(hparams)
    dev_trials = read_prepared_trials(manifests["dev_trials"], manifests["dev_csv"])
    test_trials = read_prepared_trials(manifests["trials"], manifests["test_csv"])
    _, dev, test, _, _ = dataio_prep(hparams, manifests, dev_trials, test_trials)
    _, dev_all, _, _, _ = dataio_prep(hparams, manifests)
    for data, trials in ((dev, dev_trials), (test, test_trials)):
        want = {p for t in trials for p in (t.enrol_path, t.test_path)}
        got = [os.path.abspath(data.data[i]["wav"]) for i in data.data_ids]
        assert sorted(got) == sorted(want)
    assert len(dev) < len(dev_all) == 12 and len(dev_trials) == 4
    durations = [float(dev.data[i]["duration"]) for i in dev.data_ids]
    assert durations == sorted(durations)


def _write_wavs(folder, seconds):
    rng = np.random.default_rng(1)
    paths = []
    for i, s in enumerate(seconds):
        path = folder / f"u{i}.wav"
        sf.write(str(path), rng.normal(0, 0.1, int(s * 16000)).astype(np.float32), 16000)
        paths.append(str(path))
    return paths


def test_batched_pass_gives_the_embeddings_of_one_file_at_a_time(tmp_path):
    """The recipe's dev pass (its Brain, its loader: padded length-bucketed batches of
    files of 0.5-3.7 s) gives every file the embedding it gets alone (SpeechBrain's
    ``EncoderClassifier`` route: Fbank, normalisation, encoder, one file at a time)
    within 1e-5 absolute, float32 on the CPU (measured: 4e-7 on elements up to 1.6)."""
    paths = _write_wavs(tmp_path, [0.5, 3.7, 1.01, 2.345, 1.0, 3.0, 0.77, 2.2])
    csv = tmp_path / "dev.csv"
    rows = [f"u{i},{sf.info(p).duration},{p},s" for i, p in enumerate(paths)]
    csv.write_text("ID,duration,wav,spk_id\n" + "\n".join(rows) + "\n")
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(str(csv))
    from maskproxy_losses.data.crops import full_file_item

    data.add_dynamic_item(full_file_item())
    data.set_output_keys(["id", "sig", "wav"])
    hparams = _hparams(tmp_path / "nocorpus", tmp_path)
    torch.manual_seed(0)
    modules = {k: hparams[k] for k in ("compute_features", "mean_var_norm", "embedding_model")}
    opts = {"device": "cpu", "precision": "fp32"}
    brain = recipe.SpeakerBrain(modules=modules, hparams=hparams, run_opts=opts,
                                dev_trials=[])  # fmt: skip
    options = verification_loader_options(data, {"batch_seconds": 8, "num_workers": 1})
    assert len(options["batch_sampler"]) < len(paths)  # real batches
    brain.evaluate(data, test_loader_kwargs=options)
    batched = brain.embeddings
    with torch.no_grad():
        from speechbrain.lobes.features import Fbank
        from speechbrain.processing.features import InputNormalization

        fbank, norm = Fbank(n_mels=40), InputNormalization(norm_type="sentence", std_norm=True)
        model = brain.modules.embedding_model.eval()
        for p in paths:
            wav = torch.from_numpy(sf.read(p, dtype="float32")[0]).unsqueeze(0)
            alone = model(norm(fbank(wav), torch.ones(1)), torch.ones(1)).squeeze()
            torch.testing.assert_close(batched[os.path.abspath(p)], alone, rtol=0, atol=1e-5)


def test_recipe_dev_pass_embeds_only_the_trials_files_in_batches(
    corpus, tmp_path, recipe_args, monkeypatch
):
    """A run with 4 dev trials: the dev pass after the epoch embeds exactly their files, in
    batches of several files; the train log has the dev pass's seconds beside the
    epoch's."""
    passes = []
    start, keep = recipe.SpeakerBrain.on_stage_start, recipe.SpeakerBrain.keep_embeddings

    def on_stage_start(self, stage, epoch=None):
        passes.append((stage, epoch, []))
        return start(self, stage, epoch)

    def keep_embeddings(self, wavs, embeddings):
        passes[-1][2].append(list(wavs))
        return keep(self, wavs, embeddings)

    monkeypatch.setattr(recipe.SpeakerBrain, "on_stage_start", on_stage_start)
    monkeypatch.setattr(recipe.SpeakerBrain, "keep_embeddings", keep_embeddings)
    out = tmp_path / "run"
    recipe.train(recipe_args(corpus, out, n_dev_trials=4, manifest_folder=tmp_path / "m"))
    trials = read_prepared_trials(tmp_path / "m" / "dev_trials.txt", tmp_path / "m" / "dev.csv")
    want = sorted({p for t in trials for p in (t.enrol_path, t.test_path)})
    (dev_pass,) = [batches for stage, epoch, batches in passes if stage == sb.Stage.VALID]
    assert sorted(os.path.abspath(w) for b in dev_pass for w in b) == want
    assert max(len(b) for b in dev_pass) > 1 and len(want) < 12
    log = (out / "train_log.txt").read_text()
    times = re.search(r"epoch_s: ([\d.e+-]+), dev_s: ([\d.e+-]+)", log).groups()
    epoch_s, dev_s = map(float, times)
    assert 0 < dev_s < epoch_s


def test_valid_every_skips_dev_passes_but_not_the_last(corpus, tmp_path, recipe_args, monkeypatch):
    """``valid_every 2`` over 3 epochs: dev EERs after epochs 2 and 3 (the last), none
    after epoch 1, which still ends with an end-of-epoch checkpoint (no EER) to resume
    from; the best dev-EER checkpoint is exported."""
    out, after_epoch_1 = tmp_path / "run", []
    real = recipe.SpeakerBrain.on_epoch_without_validation

    def spy(self, epoch):
        real(self, epoch)
        after_epoch_1.extend((p / "CKPT.yaml").read_text() for p in (out / "save").glob("CKPT+*"))

    monkeypatch.setattr(recipe.SpeakerBrain, "on_epoch_without_validation", spy)
    recipe.train(recipe_args(corpus, out, number_of_epochs=3, valid_every=2))
    epochs = [x for x in (out / "train_log.txt").read_text().splitlines() if x.startswith("epoch")]
    assert [("valid EER" in e, "dev_s" in e) for e in epochs] == [
        (False, False),
        (True, True),
        (True, True),
    ]
    assert re.match(r"epoch: 1, lr: [\d.e+-]+, epoch_s: [\d.e+-]+ - train loss", epochs[0])
    (meta,) = after_epoch_1
    assert "end-of-epoch: true" in meta and "EER" not in meta
    assert (out / "model" / "embedding_model.ckpt").is_file()
    kept = [(p / "CKPT.yaml").read_text() for p in (out / "save").glob("CKPT+*")]
    assert all("EER" in k for k in kept) and 1 <= len(kept) <= 2

"""Issue 16's options: the baselines' schedules, fine-tuning, checkpoint averaging and
speed perturbation, each against independently computed values."""

import math

import numpy as np
import pytest
import torch
import train_speaker_embeddings as recipe  # recipes/VoxCeleb/MaskProxy (see conftest.py)
from conftest import RECIPE

from maskproxy_losses import SpeakerBatchSampler
from maskproxy_losses.data.crops import RandomCrop
from maskproxy_losses.data.speed_perturb import SpeedCrop
from maskproxy_losses.inference.model_card import read_model_card
from maskproxy_losses.losses import AAMSoftmaxLoss
from maskproxy_losses.training.averaging import average_checkpoints
from maskproxy_losses.training.schedules import (
    EpochScheduler,
    WarmupExponentialLR,
    scheduled_optimizer,
)


# ------------------------------------------------------------------ schedules
def test_warmup_exponential_lr_per_step_and_resume(tmp_path):
    sched = WarmupExponentialLR(
        lr=0.1,
        final_lr=0.001,
        n_epochs=3,
        warmup_epochs=0.5,
        lr_scale=2.0,
        final_margin=0.2,
        initial_margin=0.0,
        margin_start_epoch=1,
        margin_end_epoch=2,
    )
    sched.set_epoch_length(4)  # 12 steps in all, warm-up over the first 2
    param = torch.nn.Parameter(torch.zeros(1))
    opt = scheduled_optimizer([param], lambda p: torch.optim.SGD(p, lr=123.0), sched)
    used, margins = [], []
    for _ in range(12):
        used.append(opt.param_groups[0]["lr"])
        margins.append(sched.margin())
        opt.step()
    # WeSpeaker's ExponentialDecrease (warm_from_zero) written out for T = 12, W = 2.
    want = [2.0 * min(t / 2, 1.0) * 0.1 * 0.01 ** (t / 12) for t in range(12)]
    assert used == pytest.approx(want, rel=1e-12)
    assert used[0] == 0.0 and opt.param_groups[0]["lr"] == pytest.approx(2 * 0.001)
    # Margin: 0 before step 4, 0.2 from step 8, 0.2 * (1 - 0.001 ** r) in between.
    ramp = [0.2 * (1 - math.exp(r / 4 * math.log(1e-3 / (1 + 1e-6)))) for r in range(4)]
    assert margins == pytest.approx([0.0] * 4 + ramp + [0.2] * 4, abs=1e-12)
    # Checkpointed: a new schedule recovers the step count.
    from speechbrain.utils.checkpoints import Checkpointer

    Checkpointer(tmp_path, {"sched": sched}).save_checkpoint()
    again = WarmupExponentialLR(lr=0.1, final_lr=0.001, n_epochs=3)
    Checkpointer(tmp_path, {"sched": again}).recover_if_possible()
    assert again.step == 12
    assert sched([opt], 3, 1.0) == (opt.param_groups[0]["lr"],) * 2  # epoch call: no change


def test_ap_step_decay_is_voxceleb_trainers_steplr_and_resumes(tmp_path):
    """ap.yaml's schedule: voxceleb_trainer's lr * 0.95 ** (epoch // 10), written out, and
    a checkpointed schedule that continues where it stopped."""
    from speechbrain.utils.checkpoints import Checkpointer

    def fresh():
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
        return opt, EpochScheduler(torch.optim.lr_scheduler.StepLR, step_size=10, gamma=0.95)

    opt, sched = fresh()
    for epoch in range(1, 16):
        opt.step()  # an epoch of training (no gradients: nothing moves)
        _, new = sched([opt], epoch, 5.0)
        assert new == pytest.approx(0.001 * 0.95 ** (epoch // 10), rel=1e-12)
    Checkpointer(tmp_path, {"sched": sched, "opt": opt}).save_checkpoint()
    opt2, again = fresh()
    Checkpointer(tmp_path, {"sched": again, "opt": opt2}).recover_if_possible()
    for epoch in range(16, 31):
        opt2.step()
        _, new = again([opt2], epoch, 5.0)
        assert new == pytest.approx(0.001 * 0.95 ** (epoch // 10), rel=1e-12)


def test_aam_margin_follows_the_schedule():
    class Fixed:
        def margin(self):
            return 0.5

    torch.manual_seed(0)
    scheduled = AAMSoftmaxLoss(5, 8, margin=0.2, scale=32.0, margin_schedule=Fixed())
    plain = AAMSoftmaxLoss(5, 8, margin=0.5, scale=32.0)
    plain.load_state_dict(scheduled.state_dict())
    emb, labels = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 4, 4])
    assert scheduled(emb, labels).item() == pytest.approx(plain(emb, labels).item(), rel=1e-6)
    assert scheduled.margin == 0.5
    scheduled.eval()  # evaluation leaves the margin alone
    scheduled.set_margin(0.1)
    scheduled(emb, labels)
    assert scheduled.margin == 0.1


# ------------------------------------------------------------------ averaging
def _bn_model(seed, tracked):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    model[1].num_batches_tracked.fill_(tracked)
    return model


def test_average_of_two_checkpoints_is_their_mean(tmp_path):
    a, b = _bn_model(1, 3), _bn_model(2, 6)
    torch.save(a.state_dict(), tmp_path / "a.ckpt")
    torch.save(b.state_dict(), tmp_path / "b.ckpt")
    avg = average_checkpoints([tmp_path / "a.ckpt", tmp_path / "b.ckpt"])
    sa, sb = a.state_dict(), b.state_dict()
    assert list(avg) == list(sa)
    for key in sa:
        if key.endswith("num_batches_tracked"):
            assert avg[key].dtype == torch.long and avg[key].item() == 4  # (3 + 6) // 2
        else:
            want = ((sa[key].double() + sb[key].double()) / 2).float()
            assert torch.equal(avg[key], want), key
    assert "1.running_var" in avg and "1.running_mean" in avg  # BatchNorm stats averaged
    model = _bn_model(3, 0)
    model.load_state_dict(avg)  # loads strictly
    torch.save(torch.nn.Linear(3, 5).state_dict(), tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="differ"):
        average_checkpoints([tmp_path / "a.ckpt", tmp_path / "c.ckpt"])


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_recipe_exports_the_average_of_its_two_checkpoints(corpus, tmp_path, recipe_args):
    out = tmp_path / "avg"
    recipe.train(recipe_args(corpus, out, number_of_epochs=2, average_checkpoints=2))
    ckpts = sorted((out / "save").glob("CKPT+*/embedding_model.ckpt"))
    assert len(ckpts) == 2
    exported = _load(out / "model" / "embedding_model.ckpt")
    first, second = _load(ckpts[0]), _load(ckpts[1])
    assert not torch.equal(first["conv1.weight"], second["conv1.weight"])
    for key, value in exported.items():
        if value.is_floating_point():
            want = ((first[key].double() + second[key].double()) / 2).to(value.dtype)
        else:
            want = (first[key] + second[key]) // 2
        assert torch.equal(value, want), key
    card = read_model_card(out / "model")
    assert card["training"]["averaged"] == "mean of 2 checkpoints (best)"
    assert "checkpoint average" in card["source"]["how"]


# ------------------------------------------------------------------ fine-tuning
def test_finetuning_starts_from_the_pretrained_weights(corpus, tmp_path, recipe_args, monkeypatch):
    stage1 = tmp_path / "stage1"
    recipe.train(recipe_args(corpus, stage1))
    # Training skipped (the recipe refuses 0 epochs): the exported model is the one the
    # run started from, untouched.
    monkeypatch.setattr(recipe.SpeakerBrain, "fit", lambda self, *args, **kwargs: None)
    stage2 = tmp_path / "stage2"
    brain = recipe.train(recipe_args(corpus, stage2, pretrained=stage1, crop_frames=80, lr=0.02))
    got, want = (
        _load(stage2 / "model" / "embedding_model.ckpt"),
        _load(stage1 / "model" / "embedding_model.ckpt"),
    )
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert read_model_card(stage2 / "model")["training"]["pretrained"] == str(stage1)
    # The loss (proxies, w, b) comes from stage 1's best checkpoint.
    best = next((stage1 / "save").glob("CKPT+*/loss_fn.ckpt"))
    loss_state = brain.modules.loss_fn.state_dict()
    for key, value in _load(best).items():
        assert torch.equal(loss_state[key].cpu(), value), key
    # From a model directory only the encoder is taken; the loss starts fresh.
    stage3 = tmp_path / "stage3"
    brain = recipe.train(recipe_args(corpus, stage3, pretrained=stage1 / "model"))
    got = _load(stage3 / "model" / "embedding_model.ckpt")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(brain.modules.loss_fn.proxies.detach().cpu(), _load(best)["proxies"])


# ------------------------------------------------------------------ speed perturbation
def _resample_reference(src, speed):
    from speechbrain.augment.time_domain import SpeedPerturb

    return SpeedPerturb(orig_freq=16000, speeds=[speed])(src.unsqueeze(0)).squeeze(0)


@pytest.mark.parametrize("speed", [90, 110])
def test_speed_crop_is_speechbrains_speed_perturbation(corpus, speed):
    path = sorted((corpus / "wav").rglob("*.wav"))[0]
    crop = SpeedCrop(60, speeds=(100, speed))
    got = crop(str(path), speed, seed=7)
    length = 60 * 160 + 240
    n_src = math.ceil(length * speed / 100) + 1
    source = RandomCrop(num_samples=n_src)(str(path), 7)  # the same seeded source samples
    want = _resample_reference(source, speed)
    assert got.shape == (length,) and want.shape[0] >= length
    torch.testing.assert_close(got, want[:length], rtol=0, atol=1e-6)


@pytest.mark.parametrize("as_new", [True, False])
def test_speed_perturbed_batches_keep_the_speaker_groups(corpus, tmp_path, as_new, recipe_args):
    from maskproxy_losses.data.crops import train_loader_options
    from maskproxy_losses.training.hparams import load_recipe_hparams
    from maskproxy_losses.training.recipe_setup import dataio_prep, prepare_manifests

    argv = recipe_args(corpus, tmp_path / "sp", speed_perturb=True, speed_as_new_speaker=as_new)
    hparams_file, _, overrides = recipe.sb.parse_arguments(argv)
    hparams, _ = load_recipe_hparams(hparams_file, overrides)
    train, _, _, sampler, n_classes = dataio_prep(hparams, prepare_manifests(hparams))
    assert n_classes == (18 if as_new else 6)
    kwargs = train_loader_options(sampler, 0, hparams["seed"])
    loader = torch.utils.data.DataLoader(train, **kwargs)
    speeds_seen = set()
    for batch in loader:
        labels = batch.spk_id_encoded.data.flatten().tolist()
        assert batch.sig.data.shape == (6, 60 * 160 + 240)
        # B = 3 distinct labels, k = 2 utterances each, consecutive.
        assert len(set(labels)) == 3 and all(labels.count(x) == 2 for x in labels)
        assert labels[0::2] == labels[1::2]
        assert all(0 <= x < n_classes for x in labels)
        assert len({x % 6 for x in labels}) == 3  # distinct speakers too
        speeds_seen |= {x // 6 for x in labels}
    assert speeds_seen == ({0, 1, 2} if as_new else {0})


def test_sampler_draws_one_speed_per_group():
    speakers = [s for s in "abcdef" for _ in range(6)]
    sampler = SpeakerBatchSampler(speakers, 3, 2, seed=4, n_speeds=3)
    n = len(speakers)
    speeds = []
    for batch in sampler:
        for group in np.reshape(batch, (3, 2)):
            assert group[0] // n == group[1] // n  # one speed per group
            assert speakers[group[0] % n] == speakers[group[1] % n]
            speeds.append(group[0] // n)
    assert set(speeds) == {0, 1, 2}


def test_recipe_runs_aam_with_speed_perturbation(corpus, tmp_path, capsys, recipe_args):
    brain = recipe.train(recipe_args(corpus, tmp_path / "aam_sp", name="aam", speed_perturb=True))
    assert "test EER" in capsys.readouterr().out
    loss_fn = brain.modules.loss_fn
    assert loss_fn.classifier.weight.shape == (18, 64)  # 6 speakers x 3 speeds
    schedule = brain.hparams.lr_scheduler
    assert schedule.step == schedule.epoch_length > 0  # 1 epoch: a schedule step per batch
    assert loss_fn.margin == pytest.approx(schedule.margin_at(schedule.step - 1))


def test_summarize_puts_variant_rows_after_their_file(tmp_path):
    import summarize_results

    line = (
        "epoch: 1, lr: 1.00e-01, epoch_s: 10.0 - train loss: 3.0, train utt_per_s: 50.0 - "
        "valid EER: 30.0\nEpoch loaded: 1 - test EER: {}, test minDCF_0.01: 5.00e-01\n"
    )
    for i, row in enumerate(["aam+sp", "mp_balance+ft", "aam", "mp_balance", "mp_balance+avg5"]):
        (tmp_path / row / "1").mkdir(parents=True)
        (tmp_path / row / "1" / "train_log.txt").write_text(line.format(10.0 + i))
    rows = [r.split(" | ")[0][2:] for r in summarize_results.summarize(tmp_path).splitlines()[2:]]
    assert rows == ["mp_balance", "mp_balance+avg5", "mp_balance+ft", "aam", "aam+sp"]


def test_aam_final_lr_keeps_wespeakers_per_epoch_decay_at_least_20x(tmp_path):
    # WeSpeaker decays 2000x over 150 epochs; a run of E epochs decays 2000 ** (E / 150)x,
    # but at least 20x (the built-in corpus's dev choice at 30 epochs) and at most 2000x.
    # The command line wins.
    from maskproxy_losses.training.hparams import load_recipe_hparams

    aam = RECIPE / "hparams" / "aam.yaml"
    out = f"output_folder: {tmp_path}\n"
    cases = {
        "": 0.1 / 20,  # built-in corpus: 30 epochs
        "builtin_corpus: False": 0.1 / 2000,  # VoxCeleb: 500 epochs
        "builtin_corpus: False\nnumber_of_epochs: 4": 0.1 / 20,  # a user's short run
        "builtin_corpus: False\nnumber_of_epochs: 100": 0.1 / 2000 ** (100 / 150),
        "builtin_corpus: False\nnumber_of_epochs: 150": 0.1 / 2000,
        "final_lr: 0.001": 0.001,
    }
    for overrides, final in cases.items():
        hparams, _ = load_recipe_hparams(aam, out + overrides)
        assert hparams["final_lr"] == pytest.approx(final, rel=1e-12), overrides
        assert hparams["lr_scheduler"].final_lr == hparams["final_lr"]


def test_training_accuracy_near_chance_after_the_warm_up_is_logged(caplog):
    from maskproxy_losses import build_loss
    from maskproxy_losses.training.health import warn_if_near_chance

    aam = build_loss("aam", n_classes=1000, emb_dim=8)
    ap = build_loss("ap")
    hparams = {"speakers_per_batch": 20, "warmup_epochs": 0.16, "number_of_epochs": 4}
    with caplog.at_level("WARNING", logger="maskproxy_losses.training.health"):
        assert not warn_if_near_chance(aam, hparams, 1, 0.002)  # epoch 1 ends in the warm-up
        assert warn_if_near_chance(aam, hparams, 2, 0.002)  # 2x chance (1 / 1000)
        assert not warn_if_near_chance(aam, hparams, 2, 0.004)  # 4x chance
        assert warn_if_near_chance(ap, {"speakers_per_batch": 20}, 1, 0.1)  # 2x 1 / 20
        assert not warn_if_near_chance(ap, {"speakers_per_batch": 20}, 1, 0.2)
        # a dev EER below 25 % (half of chance) shows learning whatever the accuracy
        assert not warn_if_near_chance(aam, hparams, 3, 0.002, dev_eer=21.3)
        assert warn_if_near_chance(aam, hparams, 3, 0.002, dev_eer=35.8)
    assert len(caplog.records) == 3
    assert "0.20 % after epoch 3 is near chance (0.10 %), dev EER 35.80 %" in (
        caplog.records[2].getMessage()
    )
    assert "0.20 % after epoch 2 is near chance (0.10 %)" in caplog.records[0].getMessage()
    assert "a run of 4 epochs" in caplog.records[0].getMessage()

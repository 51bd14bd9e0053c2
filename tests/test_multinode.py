"""Multi-node training: two ``torchrun --nnodes 2`` launchers on this machine (one process
each) rendezvous on 127.0.0.1, as two nodes of a cluster would on the head node."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_ddp_run, ddp_recipe, popen_recipe


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost(corpus, tmp_path):
    """``torchrun --nnodes 2 --node_rank {0,1} --nproc_per_node 1``: what the 2-process DDP
    test asserts (disjoint utterances per step, equal steps, identical parameters, one dev
    EER driving both ranks' schedule) holds across the two launchers."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out, log, port = tmp_path / "nodes", tmp_path / "nodes.log", _free_port()
    nodes = [
        popen_recipe(
            [
                str(torchrun),
                "--nnodes=2",
                f"--node_rank={rank}",
                "--nproc_per_node=1",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                *ddp_recipe(corpus, out, log),
            ]
        )
        for rank in (0, 1)
    ]
    texts = []
    try:
        for node in nodes:  # a collective mismatch hangs: fail instead
            texts.append(node.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        raise
    for node, text in zip(nodes, texts):
        assert node.returncode == 0, text[-3000:]
    assert "test EER" in texts[0] and "test EER" not in texts[1]  # printed by global rank 0
    assert_ddp_run(log, out, texts[0])


def test_aam_schedule_scales_with_the_number_of_processes():
    """WeSpeaker's ``scale_ratio`` is the global batch / 64: with N processes the per-step
    lr is N times the one-process lr at the same point of the run (in epochs), and the
    warm-up and decay still end after the same number of epochs."""
    from maskproxy_losses.training.schedules import WarmupExponentialLR

    def lrs(world, steps_per_epoch):
        sched = WarmupExponentialLR(
            lr=0.1, final_lr=0.001, n_epochs=4, warmup_epochs=1, lr_scale=0.5
        )
        sched.set_epoch_length(steps_per_epoch, world_size=world)
        return [sched.lr_at(t) for t in range(4 * steps_per_epoch + 1)]

    one, four = lrs(1, 40), lrs(4, 10)  # 4 processes: a quarter of the steps per epoch
    assert four == pytest.approx([4 * x for x in one[::4]], rel=1e-12)
    # written out: 0.5 x 4 x 0.1 x 0.01 ** (epochs done / 4), warm-up over epoch 1
    assert four[10] == pytest.approx(0.2 * 0.01**0.25, rel=1e-12) and four[0] == 0.0
    assert four[-1] == pytest.approx(4 * 0.5 * 0.001, rel=1e-12)


def test_recipe_tells_the_schedule_the_world_size(monkeypatch):
    """``setup_training`` passes the per-process steps and the number of processes."""
    from maskproxy_losses.training import recipe_setup

    class Schedule:
        def set_epoch_length(self, steps, world_size=1):
            self.got = (steps, world_size)

    class Checkpointer:
        def add_recoverable(self, name, obj):
            pass

    monkeypatch.setattr(recipe_setup, "_world_size", lambda: 3)
    hparams = {
        "loss_fn": lambda n_classes: torch.nn.Linear(1, n_classes),
        "modules": {},
        "checkpointer": Checkpointer(),
        "lr_scheduler": Schedule(),
        "loss_name": "aam",
        "speakers_per_batch": 2,
        "utts_per_speaker": 2,
        "crop_frames": 60,
        "embedding_model": torch.nn.Linear(1, 1),
    }
    recipe_setup.setup_training(hparams, list(range(8)), list(range(5)), 4)
    assert hparams["lr_scheduler"].got == (5, 3)

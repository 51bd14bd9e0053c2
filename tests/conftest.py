import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "VoxCeleb" / "MaskProxy"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# tests/ holds the reference losses, the recipe folder the recipe scripts: both are
# imported as modules by the tests.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(RECIPE)]


def _recipe_args(corpus, out, name="mp_balance", **changes):
    options = {
        "builtin_corpus": "False",
        "data_folder": corpus,
        "manifest_folder": corpus / "manifests",
        "output_folder": out,
        "speakers_per_batch": 3,
        "crop_frames": 60,
        "number_of_epochs": 1,
        "num_workers": 0,
        "dev_share": 2,
        "emb_dim": 64,
        **changes,
    }
    return [str(RECIPE / "hparams" / f"{name}.yaml")] + [
        str(x) for key, value in options.items() for x in (f"--{key}", value)
    ]


def _final_line(text):
    m = re.search(r"test EER ([\d.]+) %  minDCF\(0.01\) ([\d.]+)", text)
    assert m, text[-2000:]
    return float(m.group(1)), float(m.group(2))


def popen_recipe(args, **kw):
    """Start ``args`` (a recipe run) in the repository root, one thread, output unbuffered
    and merged into ``stdout``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def read_trace(path):
    """``([(epoch, step, ids)], [(epoch, dev EER, lr used, next lr)])`` of a batch trace
    (the recipe's ``batch_trace`` file of one rank)."""
    batches, valids = [], []
    for line in Path(path).read_text().splitlines():
        kind, epoch, *rest = line.split()
        if kind == "batch":
            batches.append((int(epoch), int(rest[0]), rest[2:]))
        else:
            valids.append((int(epoch), *map(float, rest[1:4])))
    return batches, valids


def assert_same_state(a, b):
    """``a`` and ``b`` (``{module: state_dict}``) hold bit-identical tensors."""
    assert a.keys() == b.keys()
    for module in a:
        assert a[module].keys() == b[module].keys(), module
        for key in a[module]:
            assert torch.equal(a[module][key], b[module][key]), f"{module}.{key}"


def ddp_recipe(corpus, out, log):
    """The recipe script and argv of the DDP tests' run (mp, 3 epochs of 2 speakers x 60
    frames, ReduceLROnPlateau with patience 0, seed 3, float32, batch trace at ``log``)."""
    return [
        str(RECIPE / "train_speaker_embeddings.py"),
        *_recipe_args(
            corpus,
            out,
            name="mp",
            number_of_epochs=3,
            speakers_per_batch=2,
            batch_trace=log,
            lr_scheduler="{patience: 0}",
            seed=3,
            precision="fp32",  # the dev-EER trajectory below is that of float32
        ),
    ]


def assert_ddp_run(log, out, text):
    """What a 2-process run of :func:`ddp_recipe` must show, whatever launched it: disjoint
    utterances at every step, the same steps on both ranks, bit-identical parameters, one
    dev EER per epoch driving both ranks' learning rate, an exported model and a test line."""
    from speechbrain.nnet.schedulers import ReduceLROnPlateau

    (b0, v0), (b1, v1) = (read_trace(f"{log}.rank{r}") for r in (0, 1))
    assert [b[:2] for b in b0] == [b[:2] for b in b1] and len(b0) >= 6  # the same steps
    for epoch in (1, 2, 3):
        seen = [u for b in b0 + b1 if b[0] == epoch for u in b[2]]
        assert len(seen) == len(set(seen))  # no utterance twice in an epoch, on any rank
    for x, y in zip(b0, b1):
        assert not set(x[2]) & set(y[2]) and len(x[2]) >= 4
    # One dev EER per epoch, the same on both ranks, and both ranks' learning rates are
    # what ReduceLROnPlateau(factor 0.7, patience 0) makes of it.
    assert v0 == v1 and [v[0] for v in v0] == [1, 2, 3]
    scheduler, optimizer = (
        ReduceLROnPlateau(factor=0.7, patience=0, dont_halve_until_epoch=0),
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2),
    )
    for epoch, eer, lr_used, next_lr in v0:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_used, rel=1e-12)
        _, new = scheduler([optimizer], epoch, eer)
        assert new == pytest.approx(next_lr, rel=1e-12)
        optimizer.param_groups[0]["lr"] = new
    assert any(v[3] < v[2] for v in v0)  # seed 3: the dev EER rises once, the LR drops
    assert_same_state(torch.load(f"{log}.rank0.pt"), torch.load(f"{log}.rank1.pt"))
    assert (Path(out) / "model" / "embedding_model.ckpt").is_file()
    _final_line(text)


def tiny_model_dir(path, seed):
    """Export a small random ResNetSE34L (16-d embeddings) to ``path``; return the path."""
    from maskproxy_losses import ResNetSE34L, export_model

    torch.manual_seed(seed)
    model = ResNetSE34L(channels=(8, 8, 16, 16), blocks=(1, 1, 1, 1), emb_dim=16).eval()
    return str(export_model(path, model))


@pytest.fixture
def recipe_args():
    """``recipe_args(corpus, out, name="mp_balance", **overrides)``: the training recipe's
    argv for a tiny run on the ``corpus`` fixture (1 epoch, 3 speakers x 60-frame crops)."""
    return _recipe_args


@pytest.fixture
def final_line():
    """``final_line(stdout)``: ``(test EER, minDCF(0.01))`` of the training recipe's last line."""
    return _final_line


def _loggers():
    manager = logging.root.manager
    named = [lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [logging.root, *named]


@pytest.fixture(autouse=True)
def _restore_logging():
    """Remove the log handlers a test added (SpeechBrain's experiment set-up adds stream
    handlers bound to the test's captured, later closed, stdout / stderr)."""
    before = {id(lg): list(lg.handlers) for lg in _loggers()}
    yield
    for lg in _loggers():
        for handler in lg.handlers[:]:
            if handler not in before.get(id(lg), []):
                lg.removeHandler(handler)
                handler.close()


@pytest.fixture
def cli(capsys):
    """``cli(*argv)`` runs ``maskproxy ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    from maskproxy_losses.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path_factory, monkeypatch):
    """The default embedding cache (per user: ~/.cache/maskproxy) points into the test's
    temporary folder: tests never write to the user's."""
    folder = tmp_path_factory.getbasetemp() / "user_embedding_cache"
    monkeypatch.setenv("MASKPROXY_CACHE_DIR", str(folder))


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny built-in corpus (6 training, 3 test speakers) for end-to-end recipe runs."""
    from data_prep.demo_corpus import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(
        root,
        train_speakers=6,
        test_speakers=3,
        utterances=6,
        seed=3,
        min_duration=1.0,
        max_duration=1.6,
        n_trials=30,
    )
    return root


@pytest.fixture(scope="session")
def default_corpus(tmp_path_factory):
    """The full built-in corpus (60 training, 20 test speakers; about 10 s to generate),
    shared by the slow tests that need its size."""
    from data_prep.demo_corpus import generate_corpus

    root = tmp_path_factory.mktemp("default_corpus")
    return root, generate_corpus(str(root))

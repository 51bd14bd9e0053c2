import sys
from pathlib import Path

import pytest
import torch

# tests/ holds helper modules (the reference losses); make them importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _no_native_bf16(request, monkeypatch):
    """``precision: auto`` resolves to fp32 in-process whatever the CPU, so that tests that
    compare embeddings with a float32 reference mean the same on every machine (the
    precision tests patch the CPU flags themselves)."""
    if request.module.__name__.endswith("test_precision"):
        return
    monkeypatch.setattr("maskproxy_losses.precision.read_cpu_flags", lambda *a, **k: set())


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

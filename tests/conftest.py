import logging
import sys
from pathlib import Path

import pytest
import torch

# tests/ holds helper modules (the reference losses); make them importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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

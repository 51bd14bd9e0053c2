import sys
from pathlib import Path

import pytest
import torch

# tests/ holds helper modules (the reference losses); make them importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[2] / "shared"
FIXTURES = SHARED / "fixtures"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield

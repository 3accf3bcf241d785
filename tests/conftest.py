"""Shared by the test files: the eval fixtures' helper module on sys.path, one-thread torch."""
import sys
from pathlib import Path

import pytest
import torch

# tests/test_eval_*.py import eval_helpers (tiny cached models, data dir, run dir).
sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval"))


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: small-model tests are faster and steadier so."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

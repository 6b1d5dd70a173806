"""Training tests run torch on one thread: the models are tiny, and on a shared 2-core machine
OpenMP threads waiting for each other cost several times the work itself."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

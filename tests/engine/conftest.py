"""Engine tests run torch single-threaded (tiny models; shared CPUs)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: intra-op threads only add contention on shared CPUs
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Test-wide settings.

Tests use tiny models, where one intra-op thread is fastest and immune to oversubscription when the
machine is shared (two threads on a loaded 2-core machine were 20x slower per step than one).
Set RANKWISE_TEST_THREADS to change it.
"""

from __future__ import annotations

import os

import torch

torch.set_num_threads(int(os.environ.get("RANKWISE_TEST_THREADS", "1")))

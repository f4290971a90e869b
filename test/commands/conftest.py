"""Shared by the command tests: a benchmark's ``--threads`` must not leak into the next test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

"""Test-wide isolation: every test gets its own maebench cache directory and a fixed seed."""

import os

import pytest
import torch

os.environ.setdefault("MAEBENCH_TOY_SIZE", "small")  # toy datasets at their small size unless a test asks for full


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path_factory.mktemp("maebench_cache")))
    torch.manual_seed(0)

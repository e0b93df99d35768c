"""Test-wide isolation: every test gets its own maebench cache directory and a fixed seed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAEBENCH_CACHE", str(tmp_path_factory.mktemp("maebench_cache")))
    torch.manual_seed(0)

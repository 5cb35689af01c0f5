"""Test-wide settings: offline hub, CPU, few threads (machines have 2 shared cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

import pytest  # noqa: E402


@pytest.fixture
def clean_registry():
    """The adapter registry as it was before the test (tests that register or discover extra adapters)."""
    from adapters import registry

    registry.discover_adapters()  # discovery has run before the test's adapter exists
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)

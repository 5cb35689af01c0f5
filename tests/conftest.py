"""Test-wide settings (offline hub, CPU, few threads: machines have 2 shared cores) and the shared fixtures
(``tiny``, ``mini``: the two shipped CLIP configs). Seeded tensors (``unit``) and other plain helpers live in
``tests/helpers.py``: they are imported at module level, and a conftest is not importable by name
(``benchmarks/conftest.py`` shares it)."""
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


@pytest.fixture(scope="module")
def tiny():
    """The random-weight ``clipood-tiny`` CLIP (a ViT: width 64, D 64, 2 blocks), seeded 0: one per test module."""
    from clipood.clip.backbone import load_clip

    torch.manual_seed(0)
    return load_clip("clipood-tiny")


@pytest.fixture(scope="module")
def mini():
    """The shipped ``clipood-mini`` CLIP (its timm ResNet tower, trained weights): one per test module."""
    from clipood.clip.backbone import load_clip

    return load_clip("clipood-mini")

"""Fixtures of the parity tests: one tiny random CLIP per session (``clipood-tiny``: ViT, width 64, D 64)."""
import pytest
import torch


@pytest.fixture(scope="session")
def tiny():
    from clipood.backbone import load_clip

    torch.manual_seed(0)
    return load_clip("clipood-tiny")

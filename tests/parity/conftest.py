"""Shared fixture of the parity suite: the random-weight tiny CLIP, seeded (its modules give the references)."""
import pytest

from _reference import tiny_clip


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()

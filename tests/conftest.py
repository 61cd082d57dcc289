"""Shared test setup: offline, a private model cache, and the GPU marker."""

from __future__ import annotations

import os

import pytest

# huggingface_hub reads this at import: set it before anything imports it
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tiny models are built into a cache private to this test session."""
    if "PAIK_TEST_KEEP_CACHE" in os.environ:
        yield
        return
    root = tmp_path_factory.mktemp("paik-cache")
    old = os.environ.get("PAIK_CACHE")
    os.environ["PAIK_CACHE"] = str(root)
    yield
    if old is None:
        os.environ.pop("PAIK_CACHE", None)
    else:
        os.environ["PAIK_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

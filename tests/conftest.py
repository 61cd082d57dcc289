"""Shared test setup: offline, a private model cache, and the GPU marker."""

from __future__ import annotations

import os

import pytest

# huggingface_hub reads this at import: set it before anything imports it
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist every core already runs a worker: one compute thread each (and in the
# processes they start) instead of workers x threads fighting over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Files whose tests take the longest start first, so that parallel workers do not end waiting
# on one of them; the order inside a file is kept.
SLOW_FIRST = ("test_shapes.py", "test_docs.py", "test_show_safe.py", "test_parallel.py", "test_live.py",
              "test_live_resident.py", "test_outputs_cli.py", "test_instrument_window.py", "test_bend.py")


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
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
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

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
SLOW_FIRST = ("test_shapes.py", "test_docs.py", "test_parallel.py", "test_bend_twin.py", "test_show_safe.py",
              "test_sweep.py", "test_bench_parallel.py", "test_live.py", "test_live_perf.py", "test_outputs_cli.py",
              "test_live_resident.py", "test_instrument_window.py", "test_bend.py", "test_engine_process.py",
              "test_bend_video_mask.py")


def made_once(tmp_path_factory, name: str, make):
    """A folder that ``make(folder)`` fills (its return value is returned too), made once per test
    run: under pytest-xdist the workers share it — the first to ask makes it under a file lock, the
    others wait and reuse it — so a module fixture that generates takes does not run once a worker.
    Only for fixtures whose tests read the folder and never change it."""
    import pickle

    from filelock import FileLock

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        d = tmp_path_factory.mktemp(name)
        return make(d)
    d = tmp_path_factory.getbasetemp().parent / f"shared-{name}"  # the run's root, shared by its workers
    with FileLock(f"{d}.lock"):
        done = d / ".made"
        if not done.exists():
            if d.exists():
                import shutil

                shutil.rmtree(d)  # a worker that failed half-way
            d.mkdir()
            done.write_bytes(pickle.dumps(make(d)))
        return pickle.loads(done.read_bytes())


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


# Under --dist loadgroup a file's tests stay on one worker (its module fixtures, often a generation
# or a process run, are made once, not once a worker), except where a file's tests are heavy and
# independent: the shipped-model floors spread over the workers (each loads the 12 MB model), the
# two that score one faithfulness run kept together.
SPREAD = {"test_shapes.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOW_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its order
        for item in items:
            if item.path.name not in SPREAD:
                item.add_marker(pytest.mark.xdist_group(item.path.name))
            elif "known_run" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group("shapes-known-run"))
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

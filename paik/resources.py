"""Package data (shaders, presets, patches, the shipped models) through :mod:`importlib.resources`,
so that an installed wheel finds them as well as a checkout does.

The data folders are packages of their own in the ``paik`` namespace (``paik.shaders``,
``paik.presets``, ``paik.patches``; the models under ``paik.capture``). A user's own folders
(``~/.config/paik/...``) are looked up before these by the modules that read them.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def path(package: str, *parts: str) -> Path:
    """A real filesystem path to shipped data: ``path("paik.presets", "midi")``.

    Wheels and checkouts install as plain folders, so the traversable is a real path; a zipped
    install is extracted by :func:`importlib.resources.as_file` and kept for the process."""
    res = files(package).joinpath(*parts)
    if isinstance(res, Path):
        return res
    ctx = as_file(res)  # zip imports: extract once, keep it for the life of the process
    _KEEP.append(ctx)
    return ctx.__enter__()


_KEEP: list = []


def shaders() -> Path:
    return path("paik.shaders")


def presets(*parts: str) -> Path:
    return path("paik.presets", *parts)


def patches(*parts: str) -> Path:
    return path("paik.patches", *parts)


def assets(*parts: str) -> Path:
    return path("paik.capture", "assets", *parts)

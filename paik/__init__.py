"""Paik: generate video with Wan while capturing its exact cross-attention maps, and play them live.

The import namespace has one root, ``paik``:

- :mod:`paik.capture` — the GPU side: load a Wan pipeline, capture (the library API
  :func:`paik.capture_attention`), the store and the bundle format. Never imports OpenGL.
- :mod:`paik.instrument` — the live side: control, rendering, outputs. Never imports diffusers.
- :mod:`paik.shapes` — the procedural shapes world, the training of the built-in model and its
  faithfulness benchmark; nothing in ``capture`` depends on it.
- ``paik.shaders``, ``paik.presets``, ``paik.patches`` — package data (:mod:`paik.resources`).

Importing ``paik`` is cheap: the names below load their modules (and torch) on first use.
"""

from __future__ import annotations

__version__ = "0.2.0"

_LAZY = {
    "capture_attention": ("paik.capture.api", "capture_attention"),
    "Capture": ("paik.capture.api", "Capture"),
    "open_bundle": ("paik.capture.bundle", "open_bundle"),
    "PaikError": ("paik.errors", "PaikError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'paik' has no attribute {name!r}")

"""Shared by the output tests: an EGL context, a small synthetic bundle's source, and the
headless reference render that recordings and sinks are compared with."""

from __future__ import annotations

import pytest

from instrument_fixtures import make_bundle

SIZE = (64, 48)


@pytest.fixture(scope="module")
def ctx():
    from paik.instrument.render.headless import egl_context

    return egl_context()


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from paik.instrument.render.source import Source

    b = tmp_path_factory.mktemp("rec") / "b"
    make_bundle(b, steps=2, blocks=2, heads=1, video=False, preview=False)
    return Source.open(b, "cpu")


def params(src, **kw):
    from paik.instrument.render import colormaps
    from paik.instrument.control.params import Params

    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.token, p.view, p.colormap, p.background = 2, "single", "turbo", "none"
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def reference(ctx, src, p, t, premultiply=True):
    """[H, W, 4] top row first: the view rendered headless at video position t."""
    from paik.instrument.render.headless import Offscreen
    from paik.instrument.render.renderer import Renderer

    off = Offscreen(ctx, SIZE)
    off.use()
    Renderer(ctx, src).draw(p, t, (0, 0, *SIZE), gap=2.0, premultiply=premultiply)
    img = off.read().copy()
    off.release()
    return img

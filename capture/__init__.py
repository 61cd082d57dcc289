"""Paik's GPU side: load a Wan pipeline, generate while capturing exact cross-attention maps,
keep them in a store and write them as a bundle.

The seam with the instrument is small and documented here:

- :func:`paik.capture.bundle.open_bundle` opens a bundle directory lazily and returns a
  :class:`paik.capture.bundle.Bundle`, whose ``select(token, step, block, head, reduce)`` returns an
  ``[F', H', W']`` array.
- :class:`paik.capture.store.CaptureStore` is the live, on-device form of the same data.
- :func:`paik.capture.api.capture_attention` (also ``paik.capture_attention``): the library API,
  a context manager that captures around a user's own pipeline or bare transformer; ``paik
  generate`` is built on it.

This package never imports OpenGL; importing it does not import diffusers either (that happens
when a model is loaded).
"""

from paik import __version__  # noqa: F401  (recorded in every manifest)

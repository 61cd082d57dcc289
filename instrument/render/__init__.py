"""Rendering: bundle sources and their reductions, views, the GL renderer, shaders, the window and
headless contexts, offline render and grid figures."""

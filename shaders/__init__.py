"""Package data: shaders (read through paik.resources)."""

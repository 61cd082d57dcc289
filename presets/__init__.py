"""Package data: presets (read through paik.resources)."""

"""Package data: patches (read through paik.resources)."""

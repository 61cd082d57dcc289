"""Regenerate presets/colormaps/*.json from matplotlib (run once by a developer:
``pip install matplotlib && python -m paik.instrument.tools.make_colormaps``). Paik reads the JSON at
runtime and never imports matplotlib."""

from __future__ import annotations

import json

import numpy as np

from paik.instrument.render.colormaps import PRESETS

NAMED = ("viridis", "magma", "inferno", "plasma", "turbo", "jet")


def main() -> None:
    import matplotlib

    PRESETS.mkdir(parents=True, exist_ok=True)
    for name in NAMED:
        rgb = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3]
        write(name, rgb, f"matplotlib {matplotlib.__version__} '{name}'")
    write("grayscale", np.stack([np.linspace(0, 1, 256)] * 3, 1), "linear black to white")


def write(name: str, rgb: np.ndarray, source: str) -> None:
    data = {"name": name, "source": source, "colors": [[round(float(c), 5) for c in row] for row in rgb]}
    (PRESETS / f"{name}.json").write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

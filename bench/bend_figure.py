"""The README's bending figure, like the paper's: one seed unbent and bent, side by side, with the
bent word's maps. Built-in paik-shapes model on the CPU:

    HF_HUB_OFFLINE=1 python bench/bend_figure.py --out bench/bend-figure-cpu.png

It runs ``paik generate`` twice (same prompt and seed; the second with ``--bend``) into a
temporary folder and draws, per row, frames of the video and the bent word's map (mean over
steps, blocks and heads) at the same frames.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="a red circle and a blue square")
    ap.add_argument("--word", default="circle")
    ap.add_argument("--bend", default="shift circle 0.3 0")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", default="bench/bend-figure-cpu.png")
    args = ap.parse_args()

    from paik.capture.bundle import open_bundle
    import av

    tmp = Path(tempfile.mkdtemp(prefix="paik-bend-figure-"))
    rows = []
    for name, extra in (("unbent", []), ("bent", ["--bend", args.bend])):
        out = tmp / name
        subprocess.run([sys.executable, "-m", "paik", "generate", args.prompt, "--seed", str(args.seed),
                        "--out", str(out), *extra], check=True)
        b = open_bundle(out)
        with av.open(str(b.video_path)) as c:  # [T, H, W, 3] uint8
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        maps = b.select(args.word)  # [F', H', W']
        rows.append((name, frames, maps))
    hi = max(float(m.max()) for _, _, m in rows) or 1.0
    n = rows[0][2].shape[0]
    picks = sorted({0, n // 2, n - 1})
    tiles = []
    for name, frames, maps in rows:
        h, w = frames.shape[1:3]
        row = []
        for f in picks:
            t = min(len(frames) - 1, round(f * (len(frames) - 1) / max(n - 1, 1)))
            row.append(Image.fromarray(frames[t]))
        for f in picks:
            m = (np.clip(maps[f] / hi, 0, 1) * 255).astype(np.uint8)
            row.append(Image.fromarray(m).resize((w, h), Image.Resampling.BILINEAR).convert("RGB"))
        tiles.append((name, row))
    w, h = tiles[0][1][0].size
    label = 18
    sheet = Image.new("RGB", (w * len(tiles[0][1]), (h + label) * len(tiles)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, row) in enumerate(tiles):
        y = r * (h + label)
        text = f"{name}: {args.prompt!r} seed {args.seed}" + (f", --bend {args.bend!r}" if name == "bent" else "")
        draw.text((4, y + 3), text + f"   |   video frames, then the maps of {args.word!r}", fill="black")
        for c, im in enumerate(row):
            sheet.paste(im, (c * w, y + label))
    sheet.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

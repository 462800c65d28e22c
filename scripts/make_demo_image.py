#!/usr/bin/env python
"""Draw the bundled demo image: an illuminated-manuscript-like page in pigment colours.

Procedural and deterministic (numpy with a fixed seed + Pillow drawing), so the committed
``ganx_dask/data/demo.png`` can be regenerated bit for bit:

    python scripts/make_demo_image.py            # writes ganx_dask/data/demo.png
    python scripts/make_demo_image.py out.png --width 384 --height 512

The page (384 × 512 px) has a parchment ground with fibrous texture and a darkened edge, a
border of ultramarine / vermilion bands with gold-leaf corner pieces, malachite vines with leaves
and berries, a decorated initial (vermilion letter on an azurite field in a gold frame, lead-white
highlights), lines of carbon-ink "text" with minium rubrics, a lead-tin yellow and malachite
miniature panel, and soft shading.  Colours approximate the pigments of the default library.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# approximate 8-bit sRGB colours of the pigments used (see ganx_dask.pigments)
PARCHMENT = (231, 214, 176)
CHALK = (242, 238, 226)
LEAD_WHITE = (246, 244, 236)
VERMILION = (204, 52, 40)
MINIUM = (226, 98, 48)
ULTRAMARINE = (38, 64, 150)
AZURITE = (46, 96, 160)
MALACHITE = (62, 140, 92)
LEAD_TIN_YELLOW = (232, 206, 92)
GOLD = (212, 172, 60)
INK = (36, 32, 30)

OUT = Path(__file__).resolve().parents[1] / "ganx_dask" / "data" / "demo.png"


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: coarse random grid, bicubic upsampling."""
    coarse = rng.uniform(0, 255, (h // scale + 2, w // scale + 2)).astype(np.uint8)
    big = Image.fromarray(coarse).resize((w + 2 * scale, h + 2 * scale), Image.BICUBIC)
    a = np.asarray(big, dtype=np.float64)[scale:scale + h, scale:scale + w]
    return (a - 127.5) / 127.5


def _parchment(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = np.empty((h, w, 3))
    base[:] = PARCHMENT
    tex = 0.6 * _smooth_noise(rng, h, w, 48) + 0.3 * _smooth_noise(rng, h, w, 12)
    fibres = _smooth_noise(rng, h, w * 4, 3)[:, ::4]  # streaks along x
    base += (9 * tex + 3 * fibres)[..., None] * np.array([1.0, 0.95, 0.8])
    # darker, yellower edges (handling and age)
    yy, xx = np.mgrid[0:h, 0:w]
    edge = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]) / 40.0
    dark = np.clip(1 - edge, 0, 1) ** 2
    base *= 1 - 0.22 * dark[..., None] * np.array([1.0, 1.1, 1.4])
    # a few foxing spots
    for _ in range(14):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 7)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2
        base *= 1 - 0.12 * np.exp(-d2)[..., None] * np.array([0.6, 1.0, 1.6])
    return base


def _draw(page: Image.Image, rng: np.random.Generator) -> None:
    d = ImageDraw.Draw(page)
    w, h = page.size
    m = 22  # outer margin
    # -- border bands ------------------------------------------------------------------------
    d.rectangle([m, m, w - m, h - m], outline=ULTRAMARINE, width=7)
    d.rectangle([m + 9, m + 9, w - m - 9, h - m - 9], outline=VERMILION, width=3)
    d.rectangle([m + 3, m + 3, w - m - 3, h - m - 3], outline=LEAD_WHITE, width=1)
    for cx, cy in ((m, m), (w - m, m), (m, h - m), (w - m, h - m)):  # gold corner bosses
        d.ellipse([cx - 11, cy - 11, cx + 11, cy + 11], fill=GOLD, outline=INK, width=1)
        d.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=VERMILION)
    # -- vines along the left and bottom border ----------------------------------------------
    def vine(points, phase):
        pts = [(float(x), float(y)) for x, y in points]
        d.line(pts, fill=MALACHITE, width=3, joint="curve")
        for i in range(6, len(pts) - 6, 11):
            x, y = pts[i]
            side = 1 if (i // 11 + phase) % 2 else -1
            lx, ly = x + side * 9, y - 4
            d.ellipse([lx - 7, ly - 4, lx + 7, ly + 4], fill=MALACHITE, outline=INK)
            if (i // 11) % 3 == 0:
                colour = VERMILION if (i // 33) % 2 else AZURITE
                d.ellipse([x - side * 8 - 3, y - 3, x - side * 8 + 3, y + 3], fill=colour)

    ys = np.arange(m + 30, h - m - 30, 3)
    vine(np.c_[m + 22 + 6 * np.sin(ys / 17.0), ys], 0)
    xs = np.arange(m + 40, w - m - 30, 3)
    vine(np.c_[xs, h - m - 22 + 5 * np.sin(xs / 15.0)], 1)
    # -- decorated initial -------------------------------------------------------------------
    x0, y0, s = 62, 58, 104
    d.rectangle([x0 - 6, y0 - 6, x0 + s + 6, y0 + s + 6], fill=GOLD)
    d.rectangle([x0, y0, x0 + s, y0 + s], fill=AZURITE)
    for i in range(0, s, 8):  # diaper pattern in lead white dots
        for j in range(0, s, 8):
            if (i // 8 + j // 8) % 2 == 0:
                d.point([(x0 + i + 4, y0 + j + 4)], fill=LEAD_WHITE)
    # the letter "D": a thick bar and a bow
    d.rectangle([x0 + 22, y0 + 14, x0 + 40, y0 + s - 14], fill=VERMILION)
    d.arc([x0 + 2, y0 + 14, x0 + s - 14, y0 + s - 14], start=-90, end=90, fill=VERMILION,
          width=18)
    d.line([(x0 + 26, y0 + 18), (x0 + 26, y0 + s - 18)], fill=LEAD_WHITE, width=2)
    d.arc([x0 + 8, y0 + 20, x0 + s - 20, y0 + s - 20], start=-70, end=60, fill=MINIUM, width=3)
    d.ellipse([x0 + 46, y0 + 42, x0 + 66, y0 + 62], fill=MALACHITE, outline=GOLD, width=2)
    # -- text lines (carbon ink) with rubrics (minium / vermilion) -------------------------------
    left, right = m + 42, w - m - 24
    y = y0 + 8
    line_no = 0
    while y < h - m - 60:
        x = x0 + s + 16 if y < y0 + s + 10 else left
        if 262 < y < 372:  # leave room for the miniature
            y += 14
            continue
        while x < right - 12:
            word = int(rng.integers(2, 8))
            colour = MINIUM if (line_no % 5 == 0 and x < left + 60) else INK
            for _ in range(word):
                if x > right - 6:
                    break
                top = y - (5 if rng.random() < 0.12 else 0)  # ascenders
                d.line([(x, top), (x + 1, y + 8)], fill=colour, width=2)
                if rng.random() < 0.4:
                    d.line([(x, y + 8), (x + 3, y + 6)], fill=colour, width=1)
                x += 4
            x += 6
        y += 14
        line_no += 1
    # -- miniature panel: landscape with figure ------------------------------------------------
    px0, py0, px1, py1 = left + 20, 268, right - 20, 366
    d.rectangle([px0 - 4, py0 - 4, px1 + 4, py1 + 4], fill=GOLD)
    d.rectangle([px0, py0, px1, py1], fill=ULTRAMARINE)
    for k in range(6):  # sky gradient towards lead white at the horizon
        t = k / 6
        col = tuple(int((1 - t) * a + t * b) for a, b in zip(ULTRAMARINE, LEAD_WHITE, strict=True))
        d.rectangle([px0, py0 + 40 + 5 * k, px1, py0 + 45 + 5 * k], fill=col)
    d.polygon([(px0, py1), (px0, py0 + 66), (px0 + 70, py0 + 58), (px0 + 150, py0 + 70),
               (px1, py0 + 62), (px1, py1)], fill=MALACHITE)
    d.polygon([(px0, py1), (px0 + 40, py0 + 80), (px0 + 120, py0 + 84), (px1, py1)],
              fill=LEAD_TIN_YELLOW)
    cx = (px0 + px1) // 2
    d.polygon([(cx - 14, py1 - 4), (cx, py0 + 34), (cx + 14, py1 - 4)], fill=VERMILION)
    d.ellipse([cx - 7, py0 + 20, cx + 7, py0 + 34], fill=(226, 186, 160), outline=INK)
    d.ellipse([cx - 11, py0 + 16, cx + 11, py0 + 38], outline=GOLD, width=2)
    d.rectangle([cx + 30, py0 + 50, cx + 36, py1 - 10], fill=(110, 66, 36))
    d.ellipse([cx + 16, py0 + 26, cx + 50, py0 + 56], fill=(46, 110, 70))


def make_demo_image(width: int = 384, height: int = 512, seed: int = 1505) -> Image.Image:
    """Render the demo page; ``width`` × ``height`` px, deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    base = _parchment(rng, height, width)
    page = Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8), "RGB")
    _draw(page, rng)
    # paint texture and soft shading: slight blur, brush noise, light from the top left
    page = page.filter(ImageFilter.GaussianBlur(0.6))
    a = np.asarray(page, dtype=np.float64)
    a += 4.0 * _smooth_noise(rng, height, width, 4)[..., None]
    yy, xx = np.mgrid[0:height, 0:width]
    light = 1.04 - 0.10 * (yy / height + xx / width) / 2
    a *= light[..., None]
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=OUT, help=f"output PNG (default {OUT})")
    ap.add_argument("--width", type=int, default=384, help="pixels (default 384)")
    ap.add_argument("--height", type=int, default=512, help="pixels (default 512)")
    ap.add_argument("--seed", type=int, default=1505, help="texture seed (default 1505)")
    args = ap.parse_args(argv)
    img = make_demo_image(args.width, args.height, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"wrote {args.out} ({img.size[0]}x{img.size[1]} px, {args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

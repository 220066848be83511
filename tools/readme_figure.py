"""The README's picture: test images next to their INRs rendered at 1x, 2x and 4x the training resolution, and
2-step samples.

    python tools/readme_figure.py --ckpt out/ckpt.pt [--out docs/quickstart.png]
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import load_split  # noqa: E402
from inr import make_grid, to_float, to_uint8  # noqa: E402
from losses import LossConfig, encode  # noqa: E402
from model import load  # noqa: E402

TILE, GAP = 96, 4


def tile(image_uint8):
    """(H, W, 3) uint8 -> TILE x TILE, pixels kept visible (nearest) so the resolutions can be compared."""
    return np.asarray(Image.fromarray(image_uint8).resize((TILE, TILE), Image.NEAREST))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', default='out/ckpt.pt')
    p.add_argument('--out', default='docs/quickstart.png')
    p.add_argument('--rows', type=int, default=4)
    a = p.parse_args(argv)
    model, ckpt = load(a.ckpt)
    cfg, lcfg = ckpt['config'], LossConfig(**ckpt['loss'])
    if cfg['modality'] != 'image':
        sys.exit('error: the README figure is drawn for image checkpoints')
    R, n = cfg['resolution'], a.rows
    x = to_float(load_split(cfg).get(range(n)))
    beta = encode(model, x, lcfg)
    cols = [to_uint8(x)] + [to_uint8(model.inr.render(beta, make_grid(R * s, R * s, 'cpu'), 4096)) for s in (1, 2, 4)]
    samples = to_uint8(model.inr.generate(model, list(range(2 * n)), 2, lcfg)[0])
    width = 6 * (TILE + GAP) + GAP
    canvas = np.full((n * (TILE + GAP) + GAP, width, 3), 255, np.uint8)
    for r in range(n):
        y = GAP + r * (TILE + GAP)
        for c, col in enumerate(cols):
            canvas[y:y + TILE, GAP + c * (TILE + GAP):GAP + c * (TILE + GAP) + TILE] = tile(col[r].numpy())
        for c in range(2):  # then two samples per row
            xo = GAP + (4 + c) * (TILE + GAP)
            canvas[y:y + TILE, xo:xo + TILE] = tile(samples[2 * r + c].numpy())
    Image.fromarray(canvas).save(a.out)
    print(f"wrote {a.out}: columns input, INR at {R}², {2 * R}², {4 * R}², then two 2-step samples per row")


if __name__ == '__main__':
    with torch.no_grad():
        main(sys.argv[1:])

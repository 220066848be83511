"""Is f a generator or a denoiser? Per checkpoint: the spread of its 1- and 2-step samples next to the test images',
and along one noise path f(x0 + t z, t) at a ladder of t: its PSNR to x0 and its spread over images.

    python tools/consistency_probe.py CKPT [CKPT ...]

A denoiser's f at t = 80 is the posterior mean (spread far below the data's); a consistency function keeps the
data's spread at every t while f at small t still returns x0 (the encoder). Image checkpoints only.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import load_split  # noqa: E402
from inr import make_grid, psnr, to_float  # noqa: E402
from losses import LossConfig, consistency_fn, per_image_noise, t_full  # noqa: E402
from model import load  # noqa: E402

LADDER = (80, 20, 5, 2, 1, 0.5, 0.2, 0.05)
N = 256


def spread(images):
    """Per-pixel standard deviation over the images, averaged over pixels and channels."""
    return images.std(0).mean().item()


@torch.no_grad()
def probe(path):
    model, ckpt = load(path)
    cfg, lcfg = ckpt['config'], LossConfig(**ckpt['loss'])
    test = load_split(cfg, 'test')
    n = min(N, len(test))
    x0 = to_float(test.get(range(n)))
    samples = {k: model.inr.generate(model, list(range(n)), k, lcfg)[0].clamp(-1, 1) for k in (1, 2)}
    z = per_image_noise(list(range(n)), tuple(x0.shape[1:]), 'cpu')
    grid = make_grid(x0.shape[-2], x0.shape[-1])
    query = grid.expand(n, *grid.shape)  # the pixel centres, no jitter
    rows = []
    for t in LADDER:
        x = x0 + t * z
        f, _ = consistency_fn(model, x, x, t_full(t, n, 'cpu'), query, lcfg)
        f = f.clamp(-1, 1)
        rows.append((t, psnr(f, x0).mean().item(), spread(f)))
    print(f"{path} (step {ckpt['step']}): spread of test images {spread(x0):.3f}, "
          f"1-step samples {spread(samples[1]):.3f}, 2-step {spread(samples[2]):.3f}")
    print('  t        ' + ' '.join(f'{t:>6}' for t, _, _ in rows))
    print('  PSNR dB  ' + ' '.join(f'{p:6.1f}' for _, p, _ in rows))
    print('  spread   ' + ' '.join(f'{s:6.3f}' for _, _, s in rows))


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        probe(p)

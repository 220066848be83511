"""Autoguidance (Karras et al. 2024) on the denoiser's ODE: D = D_bad + w (D_good - D_bad), D_bad a weaker model of
the same data (an earlier checkpoint, or one without a feature), so that w > 1 pushes each step past what the weaker
model draws. Asks whether the stage-0 denoiser's soft forms sharpen into shapes when its own errors are extrapolated
away; a guided denoiser could then be the teacher that --distill follows.

    python tools/autoguidance.py --ckpt GOOD/ckpt.pt --guide BAD/ckpt.pt --w 1,1.5,2,3 [--n 500] [--out_dir ag]

Samples are fid.py --ode 32's (the same seeds: w = 1 reproduces its figures), scored in shape features against the
test split; writes OUT/w{W}.png (64 samples each) and OUT/result.json.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import load_split  # noqa: E402
from inr import denoiser, save_grid, to_uint8  # noqa: E402
from losses import LossConfig, autoguide  # noqa: E402
from model import load  # noqa: E402
from tools.unet_control import score  # noqa: E402


def guided(good, bad, w):
    """(x, t) -> D_bad + w (D_good - D_bad) (losses.autoguide); w = 1 is the good model alone (one evaluation)."""
    if w == 1:
        return good
    return lambda x, t: autoguide(good(x, t), bad(x, t), w)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', required=True, help='the good model (a train.py image checkpoint)')
    p.add_argument('--guide', required=True, help='the weaker model, trained on the same data')
    p.add_argument('--w', default='1,1.5,2', help='guidance weights, comma-separated')
    p.add_argument('--n', type=int, default=500)
    p.add_argument('--ode', type=int, default=32)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out_dir', default='autoguidance')
    a = p.parse_args(argv)
    (good, ckpt), (bad, bad_ckpt) = (load(path, 'ema') for path in (a.ckpt, a.guide))
    if ckpt['config']['dataset'] != bad_ckpt['config']['dataset'] or good.inr.resolution != bad.inr.resolution:
        p.error('--ckpt and --guide must be trained on the same dataset at the same resolution')
    lcfg, R = LossConfig(**ckpt['loss']), good.inr.resolution
    d_good = denoiser(good, lcfg, R, render=True)
    d_bad = denoiser(bad, LossConfig(**bad_ckpt['loss']), R, render=True)
    os.makedirs(a.out_dir, exist_ok=True)
    test = np.concatenate([c for c in good.inr.reference_arrays(load_split(ckpt['config'], 'test'))])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in [float(s) for s in a.w.split(',')]:
            chunks = []
            for i in tqdm(range(0, a.n, 100), desc=f'w {w:g}'):
                seeds = [a.seed * 1_000_003 + j for j in range(i, min(i + 100, a.n))]  # fid.py's seeds
                with torch.no_grad():
                    chunks.append(to_uint8(good.inr.generate_ode(good, seeds, a.ode, lcfg, guided(d_good, d_bad, w))))
            samples = torch.cat(chunks)
            save_grid(samples[:64], os.path.join(a.out_dir, f'w{w:g}.png'))
            npz = os.path.join(tmp, 'samples.npz')
            np.savez(npz, samples=samples.numpy())
            scores = score(npz, test, tmp)
            results[f'{w:g}'] = {k: scores[k] for k in ('fd_shapes', 'precision', 'recall')}
            print(f"w {w:g}: " + json.dumps(results[f'{w:g}']))
    json.dump(results, open(os.path.join(a.out_dir, 'result.json'), 'w'), indent=1)


if __name__ == '__main__':
    main(sys.argv[1:])

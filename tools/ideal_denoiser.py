"""The ideal denoiser of a training set (the posterior mean over n_train images) run through losses.ode_sample, and
its denoising PSNR by t on test images next to a checkpoint's f: a check of the ODE sampler (it must return
training images) and the yardstick for `sample.py --ode` (docs/generation-log.md).

    python tools/ideal_denoiser.py --ckpt out/ckpt.pt [more checkpoints] --out ideal_ode.png
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import load_split  # noqa: E402
from inr import make_grid, psnr, save_grid, to_float, to_uint8  # noqa: E402
from losses import LossConfig, consistency_fn, karras_times, ode_sample, per_image_noise  # noqa: E402
from model import load  # noqa: E402

TS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 10.0, 80.0)


def ideal(train, x, t):
    """E[x_0 | x_t = x] under the empirical distribution of `train` (N, D): a softmax over squared distances."""
    w = torch.softmax(-torch.cdist(x.flatten(1).double(), train) ** 2 / (2 * t * t), dim=1)
    return (w @ train).float().reshape(x.shape)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', nargs='+', required=True, help='the first one names the dataset')
    p.add_argument('--n_train', type=int, default=20000)
    p.add_argument('--steps', type=int, default=32)
    p.add_argument('--out', default='ideal_ode.png')
    a = p.parse_args(argv)
    ckpt = load(a.ckpt[0])[1]
    cfg, lcfg = ckpt['config'], LossConfig(**ckpt['loss'])
    train = load_split(cfg, 'train')
    train = to_float(train.get(range(min(a.n_train, len(train))))).flatten(1).double()
    R = cfg['resolution']
    x_T = lcfg.t_max * per_image_noise(range(64), (3, R, R), 'cpu')
    out = ode_sample(lambda x, t: ideal(train, x, t), x_T, karras_times(a.steps, lcfg.t_max))
    save_grid(to_uint8(out), a.out)
    print(f"wrote {a.out}: {a.steps}-step ODE with the ideal denoiser of {len(train)} training images")
    x = to_float(load_split(cfg).get(range(64)))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    print('PSNR of the denoised test images by t\nt              ' + ' '.join(f'{t:6g}' for t in TS))
    print('ideal          ' + ' '.join(f'{psnr(ideal(train, x + t * z, t), x).mean().item():6.2f}' for t in TS))
    grid = make_grid(R, R, 'cpu')
    for path in a.ckpt:
        model, ckpt = load(path)
        lcfg, step = LossConfig(**ckpt['loss']), ckpt['step']
        row = []
        for t in TS:
            tt = torch.full((len(x),), t)
            row.append(psnr(consistency_fn(model, x + t * z, x + t * z, tt, grid, lcfg)[0], x).mean().item())
        print(f'{os.path.basename(os.path.dirname(path)) or path:14s} ' + ' '.join(f'{v:6.2f}' for v in row)
              + f'   (step {step})')


if __name__ == '__main__':
    with torch.no_grad():
        main(sys.argv[1:])

"""Capacity or learning signal? Continue a train.py checkpoint's denoiser (stage 0: EDM's noise levels, the per-image
L2 norm) with the conv U-Net's estimate D_U(x_t, t) as the target instead of the clean image (--target unet), or
with the clean image as stage 0 does (--target clean, the control). The U-Net's estimate is the posterior mean without
the posterior's sampling noise: if the transformer's ODE then draws what the U-Net's draws, it can represent that
denoiser and lacks the signal; if not, it lacks the capacity.

    python tools/denoiser_targets.py CKPT --unet U/ema.pt --target {unet,clean} [--steps 2000] --out_dir D
    python fid.py --ckpt D/ckpt.pt --ode 32 --n 500 --features shapes --ref test

Writes OUT/ckpt.pt: the input checkpoint with its model and EMA weights continued (everything else as it was).
"""
import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import ShapesDataset, cache_root  # noqa: E402
from inr import make_grid, to_float  # noqa: E402
from losses import EDM_P, LossConfig, consistency_fn, distance, update_ema  # noqa: E402
from model import load, read_checkpoint, save_checkpoint  # noqa: E402
from unet_control import UNet, denoise  # noqa: E402


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('ckpt')
    p.add_argument('--unet', required=True, help="tools/unet_control.py's OUT/ema.pt")
    p.add_argument('--target', choices=('unet', 'clean'), required=True)
    p.add_argument('--steps', type=int, default=2000)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--ema_decay', type=float, default=0.999)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out_dir', required=True)
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    torch.manual_seed(a.seed)
    ckpt = read_checkpoint(a.ckpt)
    model, _ = load(a.ckpt, weights='model')
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False)
    ema.load_state_dict(ckpt['ema'])
    lcfg = LossConfig(**ckpt['loss'])
    unet = UNet()
    unet.load_state_dict(torch.load(a.unet, map_location='cpu', weights_only=True))
    unet.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    data, rng, g = ShapesDataset('train', 32, cache_dir=cache_root()), np.random.default_rng(a.seed), torch.Generator()
    g.manual_seed(a.seed)
    grid = make_grid(32, 32)
    start, bar = time.time(), tqdm(range(a.steps), desc=f'denoiser, {a.target} targets')
    for _ in bar:
        x = to_float(data.get(rng.integers(0, len(data), a.batch)))
        t = (torch.randn(a.batch, generator=g) * EDM_P[1] + EDM_P[0]).exp().clamp(lcfg.t_min, lcfg.t_max)
        x_t = x + t.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            target = denoise(unet, x_t, t) if a.target == 'unet' else x
        f, _ = consistency_fn(model, x_t, x_t, t, grid, lcfg)
        loss = distance(f, target, lcfg).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, model, a.ema_decay)
        bar.set_postfix(loss=f'{loss.item():.3f}', refresh=False)
    ckpt['model'], ckpt['ema'] = model.state_dict(), ema.state_dict()
    save_checkpoint(ckpt, os.path.join(a.out_dir, 'ckpt.pt'))
    print(f"{a.steps} steps, {(time.time() - start) / 60:.1f} min; wrote {os.path.join(a.out_dir, 'ckpt.pt')}")


if __name__ == '__main__':
    main(sys.argv[1:])

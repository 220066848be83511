"""How much of a clean image a denoiser keeps, by noise level: 256 test images noised to x0 + t z (the same z for
every denoiser), denoised, and three figures per t:
  psnr    of D(x_t, t) against x0
  slope   the regression slope of D - m on x0 - m (m: each image's mean colour): how far D shrinks the image
          towards a flat one (the posterior mean shrinks too, more as t grows; compare denoisers at the same t)
  detail  the RMS of D's 3x3 high-pass over that of x0: edges and small shapes (the U-Net's skip passes some
          noise into it above t ~ 2)
Checkpoints are denoised as the ODE sampler does (`inr.denoiser(render=True)`, `fid.py --ode`); --unet adds a
`tools/unet_control.py` network (OUT/ema.pt) as a yardstick.

    python tools/denoiser_detail.py CKPT [CKPT ...] [--unet U/ema.pt]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
from data import load_split  # noqa: E402
from inr import denoiser, psnr, to_float  # noqa: E402
from losses import LossConfig  # noqa: E402
from model import load  # noqa: E402

TS = (0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0)


def high_pass(x):
    return x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


@torch.no_grad()
def figures(denoise, x0, z, t, batch=64):
    d = torch.cat([denoise(x0[i:i + batch] + t * z[i:i + batch], t) for i in range(0, len(x0), batch)])
    m = x0.mean((2, 3), keepdim=True)
    a, b = (d - m).flatten(1), (x0 - m).flatten(1)
    slope = ((a * b).sum(1) / (b * b).sum(1)).mean()
    detail = (high_pass(d).square().mean() / high_pass(x0).square().mean()).sqrt()
    return psnr(d, x0).mean().item(), slope.item(), detail.item()


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('ckpts', nargs='+', help='train.py checkpoints; the first names the dataset')
    p.add_argument('--unet', default='', help='a tools/unet_control.py ema.pt to print beside them')
    p.add_argument('--n', type=int, default=256)
    a = p.parse_args(argv)
    denoisers = {}
    for path in a.ckpts:
        model, ckpt = load(path)
        denoisers[path] = denoiser(model, LossConfig(**ckpt['loss']), ckpt['config']['resolution'], render=True)
    if a.unet:
        import unet_control
        net = unet_control.UNet()
        net.load_state_dict(torch.load(a.unet, map_location='cpu', weights_only=True))
        net.eval()
        denoisers[a.unet] = lambda x, t: unet_control.denoise(net, x, torch.full((len(x),), t))
    test = load_split(load(a.ckpts[0])[1]['config'], 'test')
    x0 = to_float(test.get(range(min(a.n, len(test)))))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    print('psnr / slope / detail of D(x0 + t z, t) on', len(x0), 'test images')
    for path, denoise in denoisers.items():
        print(path)
        for t in TS:
            print(f'  t {t:<5g} ' + '  '.join(f'{v:6.3f}' for v in figures(denoise, x0, z, t)))


if __name__ == '__main__':
    main(sys.argv[1:])

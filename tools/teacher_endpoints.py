"""How far a checkpoint's 1- and 2-step samples are from where a conv U-Net's ODE takes the same noise: the U-Net of
tools/unet_control.py sampled by the 32-step Euler ODE from T z, each checkpoint's 1- and 2-step samples from the
same T z (the seeds sample.py and fid.py use), their PSNR to the U-Net's endpoint, and one grid (rows: the U-Net's
endpoints, then per checkpoint its 1-step, 2-step and 32-step ODE samples, then per --students U-Net consistency model
of tools/unet_consistency.py its 1- and 2-step samples). Diffusion models of the same data take
a noise to much the same image, so this shows what a 1-step map keeps of an ODE's endpoint and what it averages away.

    python tools/teacher_endpoints.py --unet U/ema.pt CKPT [CKPT ...] [--students UCD/ema.pt] [--out endpoints.png]
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inr import psnr, save_grid, to_uint8  # noqa: E402
from losses import LossConfig, karras_times, ode_sample, per_image_noise, second_step_noise  # noqa: E402
from model import load  # noqa: E402
from unet_consistency import f  # noqa: E402
from unet_control import UNet, denoise  # noqa: E402


def unet(path):
    net = UNet()
    net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    return net.eval()


@torch.no_grad()
def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('ckpts', nargs='*', help='train.py checkpoints')
    p.add_argument('--students', nargs='*', default=[], help="tools/unet_consistency.py's OUT/ema.pt")
    p.add_argument('--unet', required=True, help="tools/unet_control.py's OUT/ema.pt")
    p.add_argument('--n', type=int, default=16)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='endpoints.png')
    a = p.parse_args(argv)
    net = unet(a.unet)
    seeds = [a.seed * 1_000_003 + j for j in range(a.n)]  # fid.py's and sample.py's seeds of the first a.n samples
    x = 80.0 * per_image_noise(seeds, (3, 32, 32), 'cpu')
    end = ode_sample(lambda y, t: denoise(net, y, torch.full((len(y),), t)), x, karras_times(32, 80.0)).clamp(-1, 1)
    rows = [end]
    for ckpt_path in a.ckpts:
        model, ckpt = load(ckpt_path)
        lcfg = LossConfig(**ckpt['loss'])
        one, two = (model.inr.generate(model, seeds, s, lcfg)[0].clamp(-1, 1) for s in (1, 2))
        ode = model.inr.generate_ode(model, seeds, 32, lcfg).clamp(-1, 1)
        print(f"{ckpt_path}: PSNR to the U-Net ODE's endpoint, mean of {a.n}: 1 step {psnr(one, end).mean():.2f} dB, "
              f"2 steps {psnr(two, end).mean():.2f} dB, its own 32-step ODE {psnr(ode, end).mean():.2f} dB")
        rows += [one, two, ode]
    cfg = LossConfig()  # tools/unet_consistency.py's: EDM's preconditioning shifted by t_min, t_mid 0.2
    for path in a.students:
        student = unet(path)
        one = f(student, x, torch.full((a.n,), cfg.t_max), cfg)
        noise = second_step_noise(seeds, (3, 32, 32), 'cpu')
        two = f(student, one + 0.2 * noise, torch.full((a.n,), 0.2), cfg)
        one, two = one.clamp(-1, 1), two.clamp(-1, 1)
        print(f"{path}: PSNR to the U-Net ODE's endpoint, mean of {a.n}: 1 step {psnr(one, end).mean():.2f} dB, "
              f"2 steps {psnr(two, end).mean():.2f} dB")
        rows += [one, two]
    save_grid(to_uint8(torch.cat(rows)).numpy(), a.out, nrow=a.n)
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main(sys.argv[1:])

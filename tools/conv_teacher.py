"""train.py with a conv U-Net as --distill's teacher: the target's input at r is one Euler step of the ODE of the
U-Net that tools/unet_control.py trained as plain EDM (ODE recall 0.62 against the transformer's own 0.31-0.46),
instead of the network's own frozen denoiser. It asks whether a better teacher gives the tiny transformer better
1- and 2-step samples, or whether the student itself is the bound.

    python tools/conv_teacher.py --unet U/ema.pt -- --config shapes_gen --resume --guide_step 0 --out_dir D

Everything after `--` goes to train.py unchanged (resume a --distill run at stage 1's start so that only the
teacher differs); train.py runs as its own command line in this process with only losses.ode_step replaced, so the
checkpoint, logs and grids are train.py's own.
"""
import argparse
import os
import runpy
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import losses  # noqa: E402
from unet_control import UNet, denoise  # noqa: E402


def main(argv):
    ours, theirs = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--unet', required=True, help="tools/unet_control.py's OUT/ema.pt")
    a = p.parse_args(ours)
    net = UNet()
    net.load_state_dict(torch.load(a.unet, map_location='cpu', weights_only=True))
    net.requires_grad_(False)

    def unet_ode_step(denoiser, x_t, t, r, query, cfg, guide=None):
        """losses.ode_step with the U-Net's D(x_t, t) (on the pixel grid) in place of the frozen network's f."""
        return x_t + losses.bcast((r - t) / t, x_t) * (x_t - denoise(net.to(x_t.device), x_t, t))

    losses.ode_step = unet_ode_step
    sys.argv = ['train.py'] + theirs  # train.py run as its own command line, in this process so that it sees the patch
    runpy.run_path(os.path.join(ROOT, 'train.py'), run_name='__main__')


if __name__ == '__main__':
    main(sys.argv[1:])

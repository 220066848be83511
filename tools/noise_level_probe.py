"""At which noise level does a checkpoint lose the shapes? Start from real train images noised to t_start (SDEdit),
finish with the checkpoint (the ODE with f as denoiser, or one f step), and score the results in a feature space
against the test split (each set written as an npz and scored by fid.py). Near t_start = 0 the result is the train
image itself (recall of real images); at t_max it is plain sampling. The t_start where recall falls says which part of the noise range the network cannot yet draw.

    python tools/noise_level_probe.py --ckpt CKPT [--mode ode|f] [--starts 0.05 0.2 0.5 1 2 5 10 80] [--n 500]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import load_split  # noqa: E402
from inr import denoiser, to_float, to_uint8  # noqa: E402
from losses import LossConfig, karras_times, ode_sample, per_image_noise  # noqa: E402
from model import load  # noqa: E402


@torch.no_grad()
def finish(model, lcfg, x0, seeds, t_start, mode, ode_steps):
    """x0 + t_start z, then the ODE's Karras steps below t_start (mode 'ode') or one f step (mode 'f')."""
    denoise = denoiser(model, lcfg, x0.shape[-1], render=mode == 'ode')  # the ODE's denoiser, as fid.py --ode
    x = x0 + t_start * per_image_noise(seeds, tuple(x0.shape[1:]), 'cpu')
    if mode == 'f':
        return denoise(x, t_start)
    times = [t_start] + [t for t in karras_times(ode_steps, lcfg.t_max) if t < t_start]
    return ode_sample(denoise, x, times)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--mode', default='ode', choices=('ode', 'f'))
    p.add_argument('--starts', type=float, nargs='+', default=[0.05, 0.2, 0.5, 1, 2, 5, 10, 80])
    p.add_argument('--n', type=int, default=500)
    p.add_argument('--ode_steps', type=int, default=32)
    p.add_argument('--features', default='shapes', choices=('shapes', 'pixels'))
    p.add_argument('--json', default='')
    a = p.parse_args(argv)
    model, ckpt = load(a.ckpt)
    cfg, lcfg = ckpt['config'], LossConfig(**ckpt['loss'])
    train, test = load_split(cfg, 'train'), load_split(cfg, 'test')
    rows, tmp = {}, tempfile.TemporaryDirectory()
    ref = os.path.join(tmp.name, 'test.npz')
    np.savez(ref, samples=test.get(range(min(a.n, len(test)))).numpy())
    for t_start in a.starts:
        images = []
        for i in tqdm(range(0, a.n, 250), desc=f't_start {t_start:g}', leave=False):
            idx = list(range(i, min(i + 250, a.n)))
            out = finish(model, lcfg, to_float(train.get(idx)), idx, t_start, a.mode, a.ode_steps)
            images.append(to_uint8(out).numpy())
        path, scores = (os.path.join(tmp.name, f'{t_start:g}.{ext}') for ext in ('npz', 'json'))
        np.savez(path, samples=np.concatenate(images))
        subprocess.run([sys.executable, os.path.join(ROOT, 'fid.py'), path, ref, '--features', a.features,
                        '--json', scores], check=True, stdout=subprocess.DEVNULL)
        r = rows[t_start] = json.load(open(scores))
        print(f"t_start {t_start:6g}: FD {r['fd_' + a.features]:7.1f}  precision {r['precision']:.3f}  "
              f"recall {r['recall']:.3f}", flush=True)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'ckpt': a.ckpt, 'step': ckpt['step'], 'mode': a.mode, 'n': a.n, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main(sys.argv[1:])

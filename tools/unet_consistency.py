"""A control for the consistency stages: the conv U-Net of tools/unet_control.py, trained there as a plain EDM
denoiser, distilled into a 1- and 2-step consistency model by the generation preset's stage schedule (ECT's r(t),
stages of --stage steps from dt/t = n(t)/2, LogNormal(-1.1, 2) noise levels, lr 1e-4, EMA 0.999), then sampled and
scored as fid.py scores train.py's checkpoints (500 samples, shape features, test split). It says whether a
convolutional student draws shapes in 1-2 steps at this budget, as the transformer does not.

    python tools/unet_consistency.py --teacher U/ema.pt [--steps 5000] [--out_dir unet_cd]

The student starts as the teacher and its f is EDM's preconditioning shifted by t_min (f(x, t_min) = x, as ECT);
the target is its own no-grad f at r of one Euler step of the teacher's ODE from x_t (consistency distillation),
weighted 1/(t - r) with the per-image L2 norm (ECT). Writes OUT/ema.pt, OUT/samples_{1,2}step.png and
OUT/result.json (FD / precision / recall at 1 and 2 steps, every 1,000 steps for 2 steps, and the wall clock).
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import ShapesDataset, cache_root  # noqa: E402
from inr import save_grid, to_float, to_uint8  # noqa: E402
from losses import LossConfig, c_in, c_out, c_skip, distance, r_of_t, sample_t, update_ema  # noqa: E402
from unet_control import UNet, denoise, score  # noqa: E402


def f(net, x, t, cfg):
    """The consistency function: c_skip(t) x + c_out(t) F(c_in(t) x, ln(t) / 4), shifted so f(x, t_min) = x."""
    b = t.reshape(-1, 1, 1, 1)
    return c_skip(b, cfg) * x + c_out(b, cfg) * net(c_in(b, cfg) * x, t.log() / 4)


@torch.no_grad()
def sample(net, cfg, steps, seed, n=500, t_mid=0.2):
    """1 step: f(80 z, 80); 2 steps: that, noised to t_mid with a fresh z and passed through f again (uint8 NHWC)."""
    g, out = torch.Generator().manual_seed(seed), []
    for _ in range(n // 100):
        x = f(net, cfg.t_max * torch.randn(100, 3, 32, 32, generator=g), torch.full((100,), cfg.t_max), cfg)
        if steps == 2:
            x = f(net, x + t_mid * torch.randn(x.shape, generator=g), torch.full((100,), t_mid), cfg)
        out.append(to_uint8(x).numpy())
    return np.concatenate(out)


def scores(samples, test, tmp):
    path = os.path.join(tmp, 'samples.npz')
    np.savez(path, samples=samples)
    s = score(path, test, tmp)
    return {k: s[k] for k in ('fd_shapes', 'precision', 'recall')}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', required=True, help="tools/unet_control.py's OUT/ema.pt")
    p.add_argument('--steps', type=int, default=5000)
    p.add_argument('--stage', type=int, default=500, help='steps per ECT stage (the preset: 500)')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--ema_decay', type=float, default=0.999)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out_dir', default='unet_cd')
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    torch.manual_seed(a.seed)
    teacher = UNet()
    teacher.load_state_dict(torch.load(a.teacher, map_location='cpu', weights_only=True))
    teacher.requires_grad_(False)
    net, ema = copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher)
    cfg = LossConfig(d=a.stage, stage0_iters=a.stage, weighting='inv_dt')  # step a.stage + i is in stage 1 + i // stage
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    data, rng, g = ShapesDataset('train', 32, cache_dir=cache_root()), np.random.default_rng(a.seed), torch.Generator()
    g.manual_seed(a.seed)
    test = ShapesDataset('test', 32).get(range(500)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        out = distil(a, teacher, net, ema, cfg, opt, data, rng, g, test, tmp)
    print(json.dumps(out, indent=1))
    with open(os.path.join(a.out_dir, 'result.json'), 'w') as fh:
        json.dump(out, fh, indent=1)


def distil(a, teacher, net, ema, cfg, opt, data, rng, g, test, tmp):
    """The training loop, then the 1- and 2-step scores and grids (the curve: 2 steps every 1,000 steps)."""
    curve, start = {}, time.time()
    bar = tqdm(range(a.steps), desc='U-Net consistency distillation')
    for i in bar:
        step = a.stage + i
        x = to_float(data.get(rng.integers(0, len(data), a.batch)))
        t = sample_t(a.batch, step, cfg, g)
        r = r_of_t(t, step, cfg)  # >= 0, so the weight 1 / (t - r) stays finite at t = t_min
        boundary = r <= cfg.t_min
        r_safe = torch.where(boundary, torch.full_like(r, cfg.t_min), r)
        x_t = x + t.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            x_r = x_t + ((r_safe - t) / t).reshape(-1, 1, 1, 1) * (x_t - denoise(teacher, x_t, t))
            f_r = torch.where(boundary.reshape(-1, 1, 1, 1), x, f(net, x_r, r_safe, cfg))
        loss = (distance(f(net, x_t, t, cfg), f_r, cfg) / (t - r)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, net, a.ema_decay)
        bar.set_postfix(loss=f'{loss.item():.3f}', stage=1 + i // a.stage, refresh=False)
        if (i + 1) % 1000 == 0 and i + 1 < a.steps:
            curve[i + 1] = scores(sample(ema, cfg, 2, 0), test, tmp)
            tqdm.write(f'step {i + 1}: 2 steps {curve[i + 1]}')
    minutes = (time.time() - start) / 60  # training and the curve's scoring
    torch.save(ema.state_dict(), os.path.join(a.out_dir, 'ema.pt'))
    out = dict(teacher=a.teacher, steps=a.steps, stage=a.stage, minutes=minutes, threads=torch.get_num_threads())
    for steps in (1, 2):
        s = sample(ema, cfg, steps, 0)
        save_grid(s[:64], os.path.join(a.out_dir, f'samples_{steps}step.png'))
        out[f'{steps}_step'] = scores(s, test, tmp)
    curve[a.steps] = out['2_step']
    out['curve_2_step'] = curve
    return out


if __name__ == '__main__':
    main(sys.argv[1:])

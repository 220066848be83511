"""A control for generation on the embedded shapes data: a small convolutional U-Net (no hyper-network, no INR)
trained as a plain EDM denoiser on the same images and CPU, sampled by the same 32-step Euler ODE as
`fid.py --ode 32`, scored in the same shape features against the test split. It says what this budget allows a
standard diffusion denoiser, so that a gap is read as the hyper-network's and not the budget's.
--x_pred drops EDM's skip (the net outputs the clean image itself, as the INR does with query_skip False);
--weight unit then weights its x-space error alike at every t (EDM's weight is 1/c_out^2 of the skip form, which
for a net without the skip grows as 1/t^2 at small t); --weight norm fits the per-image L2 norm of the error instead
(train.py's stage 0 with stage0_metric 'l2'), whose minimiser is the posterior's geometric median, not its mean.

    python tools/unet_control.py [--steps 4600] [--x_pred] [--weight {edm,unit,norm}] [--out_dir unet_control]

--patch_in 4 / --patch_out 4 give the U-Net the transformer's 8x8 grid on the input / output side, to ask which side
of the grid costs the shapes; --inr_width 64 (with --x_pred --patch_out 4) then draws the image with the tiny preset's
ANR INR, each grid cell one INR token, instead of the linear patch head: a conv hyper-network.

--load U/ema.pt skips training; --inr_ckpt CKPT --inr_below T then hands the ODE's steps below noise level T to that
train.py checkpoint (its render, or f with --inr_denoiser f), --inr_above T its steps at T and above, to find the
noise range where the two part ways.

Writes OUT/ema.pt, OUT/samples.npz (500 samples, uint8), OUT/samples.png and OUT/result.json (denoising PSNR at
four noise levels, shape FD / precision / recall, wall clock).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import ShapesDataset, cache_root  # noqa: E402
from inr import ImageINR, denoiser, jitter_grid, make_grid, psnr as psnr_of, save_grid, to_float, to_uint8  # noqa: E402
from losses import EDM_P, LossConfig, karras_times, ode_sample, update_ema  # noqa: E402
from model import INRCT_models, count_params, load  # noqa: E402

SIGMA_DATA = 0.5


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise level as a FiLM scale and shift between."""

    def __init__(self, cin, cout, emb):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film, self.norm2 = nn.Linear(emb, 2 * cout), nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))


class UNet(nn.Module):
    """Two ResBlocks per level at 32^2, 16^2, 8^2 (widths 32, 64, 128), skips between matching levels: 2.4M
    parameters. patch_in P reads the image as P x P patches (a stride-P conv straight to the level at 32/P, no
    full-resolution levels before it); patch_out P stops the decoder at that level and draws each cell's P x P pixels
    with one linear map, as a transformer's per-token patch head does (DiT's final layer, train.py's --inr pixels)."""

    def __init__(self, widths=(32, 64, 128), emb=128, patch_in=1, patch_out=1, inr_width=0):
        super().__init__()
        k_in, k_out = int(math.log2(patch_in)), int(math.log2(patch_out))
        if 2 ** k_in != patch_in or 2 ** k_out != patch_out or not k_in <= k_out < len(widths):
            raise ValueError(f'patch_in {patch_in} / patch_out {patch_out}: use powers of two with patch_in <= '
                             f'patch_out <= {2 ** (len(widths) - 1)}')
        self.emb, self.patch_out = emb, patch_out
        self.embed = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        c = widths[k_in]
        self.inp = nn.Conv2d(3, c, 3, padding=1) if patch_in == 1 else nn.Conv2d(3, c, patch_in, stride=patch_in)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        for w in widths[k_in:]:
            self.down.append(nn.ModuleList([ResBlock(c, w, emb), ResBlock(w, w, emb)]))
            c = w
        self.mid = ResBlock(c, c, emb)
        for w in reversed(widths[k_out:]):
            self.up.append(nn.ModuleList([ResBlock(c + w, w, emb), ResBlock(w, w, emb)]))
            c = w
        self.inr = None
        if inr_width:  # each cell of the 32/P grid becomes one INR token of train.py's tiny ANR (x_pred only)
            side, tiny = 32 // patch_out, INRCT_models['tiny']
            self.inr = ImageINR(width=inr_width, depth=tiny['inr_depth'], heads=tiny['inr_heads'], tokens=side ** 2,
                                pe_sigma=32.0, patch=patch_out)
            self.token_b = nn.Parameter(torch.randn(side ** 2, inr_width))  # a learned place per token, as ours
        head = inr_width or (3 * patch_out ** 2 if patch_out > 1 else 0)
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(),
                                 nn.Conv2d(c, head, 1) if head else nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, x, c_noise, query=None):
        freqs = torch.exp(-math.log(10000) * torch.arange(self.emb // 2, device=x.device) / (self.emb // 2))
        a = c_noise[:, None] * freqs  # EDM's unscaled ln(t)/4: smooth in t
        e = self.embed(torch.cat([a.cos(), a.sin()], dim=1))
        h, skips = self.inp(x), []
        for i, (b1, b2) in enumerate(self.down):
            h = b2(b1(h, e), e)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, e)
        for b1, b2 in self.up:
            s = skips.pop()
            if h.shape[-1] != s.shape[-1]:
                h = F.interpolate(h, scale_factor=2, mode='nearest')
            h = b2(b1(torch.cat([h, s], dim=1), e), e)
        if self.inr is not None:
            beta = self.out(h).flatten(2).transpose(1, 2) + self.token_b
            return self.inr.render(beta, make_grid(32, 32, x.device) if query is None else query)
        return F.pixel_shuffle(self.out(h), self.patch_out)


def denoise(net, x, t, x_pred=False, query=None):
    """EDM's preconditioned D(x, t); x_pred: c_skip 0, c_out 1 (the net draws the clean image itself); query: the
    INR's coordinates (--inr_width)."""
    t = t.reshape(-1, 1, 1, 1)
    c_in = 1 / (t ** 2 + SIGMA_DATA ** 2).sqrt()
    if x_pred:
        c_skip, c_out = 0 * t, 1 + 0 * t
    else:
        c_skip, c_out = SIGMA_DATA ** 2 / (t ** 2 + SIGMA_DATA ** 2), t * SIGMA_DATA * c_in
    return c_skip * x + c_out * net(c_in * x, t.log().flatten() / 4, query)


def build(a):
    if a.inr_width and not (a.x_pred and a.patch_out > 1):
        raise ValueError('--inr_width draws the clean image from the grid of --patch_out: '
                         'add --x_pred and a --patch_out above 1 (4: our 8x8 grid)')
    return UNet(patch_in=a.patch_in, patch_out=a.patch_out, inr_width=a.inr_width)


def train(a):
    torch.manual_seed(a.seed)
    data = ShapesDataset('train', 32, cache_dir=cache_root())
    net, ema = build(a), build(a)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    start = time.time()
    bar = tqdm(range(a.steps), desc='U-Net EDM')
    for _ in bar:
        x = to_float(data.get(rng.integers(0, len(data), a.batch)))
        t = (torch.randn(a.batch) * EDM_P[1] + EDM_P[0]).exp()
        weight = (t ** 2 + SIGMA_DATA ** 2) / (t * SIGMA_DATA) ** 2 if a.weight == 'edm' else torch.ones_like(t)
        # ANR's variational coordinates: the INR is queried near, not at, the pixel centres while training
        query = jitter_grid(make_grid(32, 32).expand(a.batch, 32, 32, 2)) if a.inr_width else None
        err = denoise(net, x + t.reshape(-1, 1, 1, 1) * torch.randn_like(x), t, a.x_pred, query) - x
        if a.weight == 'norm':
            loss = err.flatten(1).norm(dim=1).mean()
        else:
            loss = (weight.reshape(-1, 1, 1, 1) * err ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, net, a.ema_decay)
        bar.set_postfix(loss=f'{loss.item():.4f}', refresh=False)
    return ema, time.time() - start


@torch.no_grad()
def evaluate(net, a):
    test = ShapesDataset('test', 32).get(range(500))
    x0, g = to_float(test[:64]), torch.Generator().manual_seed(0)
    psnr = {}
    for t in (0.0865, 0.3, 0.821, 2.0):
        y = denoise(net, x0 + t * torch.randn(x0.shape, generator=g), torch.full((len(x0),), t), a.x_pred)
        psnr[t] = float(psnr_of(y, x0).mean())
    times, g = karras_times(a.ode), torch.Generator().manual_seed(a.seed)
    unet = lambda x, t: denoise(net, x, torch.full((len(x),), t), a.x_pred)  # noqa: E731
    if a.inr_ckpt:
        model, ckpt = load(a.inr_ckpt)
        inr_f = denoiser(model, LossConfig(**ckpt['loss']), 32, render=a.inr_denoiser == 'render')
        use_inr = (lambda t: t >= a.inr_above) if a.inr_above > 0 else (lambda t: t < a.inr_below)  # noqa: E731
        step = lambda x, t: inr_f(x, t) if use_inr(t) else unet(x, t)  # noqa: E731
    else:
        step = unet
    samples = np.concatenate([to_uint8(ode_sample(step,
                                               times[0] * torch.randn(100, 3, 32, 32, generator=g), times)).numpy()
                              for _ in tqdm(range(5), desc=f'ODE-{a.ode} samples')])
    return psnr, samples, test.numpy()


def score(samples_npz, test, tmp):
    """fid.py's shape FD / precision / recall of the samples against the test split."""
    ref, out = os.path.join(tmp, 'test.npz'), os.path.join(tmp, 'scores.json')
    np.savez(ref, samples=test)
    subprocess.run([sys.executable, os.path.join(ROOT, 'fid.py'), samples_npz, ref, '--features', 'shapes',
                    '--json', out], check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=4600)
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--ema_decay', type=float, default=0.999)
    p.add_argument('--x_pred', action='store_true', help="no EDM skip: the net outputs the clean image")
    p.add_argument('--weight', choices=('edm', 'unit', 'norm'), default='edm',
                   help="EDM's weight (unit loss on the skip form's net output), 1 on the squared x-space error, or "
                        "the error's per-image L2 norm")
    p.add_argument('--patch_in', type=int, default=1,
                   help="read the image as P x P patches (no full-resolution encoder)")
    p.add_argument('--patch_out', type=int, default=1,
                   help="draw each P x P patch from one cell of the 32/P grid by a linear map "
                        "(no full-resolution decoder)")
    p.add_argument('--inr_width', type=int, default=0,
                   help="draw the image with train.py's tiny ANR INR, one token of this width per grid cell "
                        "(64: tiny's)")
    p.add_argument('--ode', type=int, default=32, help='Euler steps of the sampler (fid.py --ode)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out_dir', default='unet_control')
    p.add_argument('--load', default='', help="a trained OUT/ema.pt: sample and score it, no training")
    p.add_argument('--inr_ckpt', default='', help="with --load: a train.py checkpoint that denoises below --inr_below")
    p.add_argument('--inr_below', type=float, default=0.0, help="the ODE's noise level where the INR takes over")
    p.add_argument('--inr_above', type=float, default=0.0,
                   help="instead of --inr_below: the INR denoises at this noise level and above, the U-Net below")
    p.add_argument('--inr_denoiser', choices=('render', 'f'), default='render',
                   help="the INR's ODE denoiser: its render (as fid.py --ode) or f with the boundary skip")
    a = p.parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    if a.load:
        net, seconds = build(a), 0.0
        net.load_state_dict(torch.load(a.load, map_location='cpu', weights_only=True))
    else:
        net, seconds = train(a)
        torch.save(net.state_dict(), os.path.join(a.out_dir, 'ema.pt'))
    psnr, samples, test = evaluate(net, a)
    np.savez(os.path.join(a.out_dir, 'samples.npz'), samples=samples)
    with tempfile.TemporaryDirectory() as tmp:
        scores = score(os.path.join(a.out_dir, 'samples.npz'), test, tmp)
    save_grid(samples[:64], os.path.join(a.out_dir, 'samples.png'))
    out = dict(steps=a.steps, minutes=seconds / 60, threads=torch.get_num_threads(), x_pred=a.x_pred, weight=a.weight,
               patch_in=a.patch_in, patch_out=a.patch_out, inr_width=a.inr_width,
               parameters=count_params(net),
               load=a.load, inr_ckpt=a.inr_ckpt, inr_below=a.inr_below, inr_above=a.inr_above,
               inr_denoiser=a.inr_denoiser, denoise_psnr=psnr, ode=a.ode, **scores)
    print(json.dumps(out, indent=1))
    with open(os.path.join(a.out_dir, 'result.json'), 'w') as f:
        json.dump(out, f, indent=1)


if __name__ == '__main__':
    main(sys.argv[1:])

"""Generate INRs from noise (1 or 2 steps) and encode signals into INRs; render them at any resolution.

    python sample.py --ckpt out/ckpt.pt                        # 64 one-step samples -> samples.png
    python sample.py --ckpt out/ckpt.pt --steps 2 --resolution 128 --npz samples.npz
    python sample.py --ckpt out/ckpt.pt --encode --json metrics.json
    python sample.py --ckpt out3d/ckpt.pt --npz gen.npz    # NeRF: one generated object per test scene at its poses
    python sample.py --ckpt out3d/ckpt.pt --steps 2 --resolution 64 --out orbit.png   # NeRF: 2-step orbits at 64^2
    python sample.py --ckpt outocc/ckpt.pt --steps 2 --score --json gen.json   # occupancy: MMD / COV / 1-NNA

Generated INRs: 1 step, beta = G(c_in(T) T z, T) and the INR is c_out(T) M_beta (c_skip(T) x_T
has std ~0.003 and has no continuous form); 2 steps, under Eq. 12 the grid image f(x, t_mid) mixes
c_skip(t_mid) = 0.27 of the noisy input in, so the final image is re-encoded at t_min (one more NFE) to get a
true INR; without the query skip (`query_skip False`, configs/shapes.py) f(x, t_mid) is M_beta itself (2 NFE).
What each modality draws and writes is its INR's (inr.ImageModality, nerf.NeRFINR); this script only routes.
"""
import argparse
import json
import os
import sys

from data import load_split
from losses import LossConfig, with_t_mid
import model as inrct_model


def beside(out, suffix):
    """The grid a mode writes next to --out: samples.png -> samples_encode.png (any extension, only the last one)."""
    stem, ext = os.path.splitext(out)
    return f'{stem}_{suffix}{ext or ".png"}'


def write_json(metrics, a, step):
    """Add the checkpoint and its step to a metrics dict and write it to --json if given; returns the dict."""
    metrics.update(ckpt=a.ckpt, step=step)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(metrics, f, indent=1)
    return metrics


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', required=True)
    p.add_argument('--steps', type=int, default=1, choices=(1, 2))
    p.add_argument('--ode', type=int, default=0,
                   help='images: sample with this many Euler steps of the ODE instead (a diagnostic: the ceiling '
                        'of the denoiser behind f)')
    p.add_argument('--t_mid', type=float, default=0.0,
                   help="--steps 2: the noise level of the second step (0 = the checkpoint's, 0.821 by default)")
    p.add_argument('--n', type=int, default=64)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--resolution', type=int, default=0, help='render the generated INRs at this size (0 = training)')
    p.add_argument('--out', default='samples.png')
    p.add_argument('--npz', default='', help='also write the samples as uint8 NHWC under key "samples"')
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--weights', default='ema', choices=('ema', 'model'))
    p.add_argument('--device', default='auto')
    p.add_argument('--encode', action='store_true', help='encode the test split and report PSNR')
    p.add_argument('--denoise', action='store_true',
                   help='images: PSNR of f(x + t z, t) on 64 test images for t from 0.01 to 80 (--json writes it) and a '
                        'grid of 8 of them (OUT with _denoise.png)')
    p.add_argument('--limit', type=int, default=0,
                   help='at most this many images/scenes: of --split for --encode, of the test split for NeRF '
                        '--npz (0 = all) and for --denoise (0 = 64)')
    p.add_argument('--json', default='', help='--encode, --denoise: write the metrics here')
    p.add_argument('--split', default='test', choices=('test', 'train'),
                   help='--encode: the split to encode (train: tells under-fitting from over-fitting; use --limit)')
    p.add_argument('--support_view', type=int, default=0, help='NeRF --encode: the one view each object is encoded from')
    p.add_argument('--score', action='store_true',
                   help='occupancy: MMD, COV and 1-NNA (Chamfer) of --steps samples against the test split (--limit '
                        'shapes, 0 = all), next to train shapes and the mean shape')
    a = p.parse_args(argv)
    if a.resolution < 0 or a.n < 1:
        p.error('--resolution must be >= 0 and --n >= 1')
    model, ckpt = inrct_model.load(a.ckpt, a.weights, inrct_model.pick_device(a.device))
    cfg, lcfg, step, inr = ckpt['config'], LossConfig(**ckpt['loss']), ckpt['step'], model.inr
    lcfg = with_t_mid(lcfg, a.t_mid)
    if a.denoise:
        if not hasattr(inr, 'evaluate_denoising'):
            p.error(f"--denoise takes an image checkpoint; {a.ckpt} is a {cfg['modality']} model")
        png = beside(a.out, 'denoise')
        out = inr.evaluate_denoising(model, load_split(cfg), lcfg, limit=a.limit or 64, out_png=png)
        for row in out['by_t']:
            print(f"t {row['t']:7g}: f {row['psnr_f']:6.2f} dB   noisy input {row['psnr_noisy']:6.2f} dB")
        print(f"the test images' mean image: {out['psnr_mean_image']:.2f} dB ({out['n_images']} images, step {step})")
        print(f"{png}: 8 test images, then per t (rows, top to bottom) the noisy input and f")
        write_json(out, a, step)
    elif a.score:
        if not hasattr(inr, 'evaluate_generation'):
            p.error(f"--score takes an occupancy checkpoint; for a {cfg['modality']} model use fid.py")
        out = inr.evaluate_generation(model, load_split(cfg, 'train'), load_split(cfg), lcfg, a.limit, a.seed, a.steps)
        print(json.dumps(write_json(out, a, step), indent=1))
    elif a.encode:
        out = inr.evaluate_encoding(model, load_split(cfg, a.split), lcfg, a.limit, beside(a.out, 'encode'),
                                    a.support_view)
        print(json.dumps(write_json({**out, 'split': a.split}, a, step), indent=1))
    else:
        data = load_split(cfg) if inr.generates_from_data else None  # images: sampling needs no data on disk
        inr.write_samples(model, data, lcfg, a.out, a.n, a.seed, a.steps, a.resolution, a.npz, a.batch,
                          a.ode, a.limit)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

"""Generate INRs from noise (1 or 2 steps) and encode signals into INRs; render them at any resolution.

    python sample.py --ckpt out/ckpt.pt                        # 64 one-step samples -> samples.png
    python sample.py --ckpt out/ckpt.pt --steps 2 --resolution 128 --npz samples.npz
    python sample.py --ckpt out/ckpt.pt --encode --json metrics.json
    python sample.py --ckpt out3d/ckpt.pt --npz gen.npz    # NeRF: one generated object per test scene at its poses
    python sample.py --ckpt out3d/ckpt.pt --steps 2 --resolution 64 --out orbit.png   # NeRF: 2-step orbits at 64^2

Generated INRs: 1 step, beta = G(c_in(T) T z, T) and the INR is c_out(T) M_beta (c_skip(T) x_T
has std ~0.003 and has no continuous form); 2 steps, under Eq. 12 the grid image f(x, t_mid) mixes
c_skip(t_mid) = 0.27 of the noisy input in, so the final image is re-encoded at t_min (one more NFE) to get a
true INR; without the query skip (`query_skip False`, configs/shapes.py) f(x, t_mid) is M_beta itself (2 NFE).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from data import load_dataset
from inr import make_grid, psnr, to_float, to_uint8
from losses import LossConfig, consistency_fn, net_inputs
import model as inrct_model
from nerf import get_rays, hemisphere_poses_for

T_MID = 0.821  # the second step's noise level (ECT, iCT)


def save_grid(images, path, nrow=None):
    """uint8 (N, H, W, 3) -> one PNG grid with a 2-pixel white border."""
    images = images.cpu().numpy() if torch.is_tensor(images) else images
    n, h, w, _ = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    canvas = np.full((ncol * (h + 2) + 2, nrow * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, nrow)
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = im
    Image.fromarray(canvas).save(path)


def per_image_noise(seeds, shape, device):
    """One N(0, I) draw per image from its own seed: samples do not depend on the batch size."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def t_full(t, n, device):
    return torch.full((n,), t, device=device)


@torch.no_grad()
def encode(model, images, lcfg, query=None):
    """beta = G(O, t_min) (Eq. 7): clean observations in [-1, 1] -> INR tokens (query: NeRF support rays)."""
    return model.encode(*net_inputs(images, t_full(lcfg.t_min, len(images), images.device), lcfg), query)


def keeping_beta(model, chunk=None):
    """model as consistency_fn's net, remembering the INR tokens of its last call (to render them elsewhere)."""
    def net(support, c_noise, query):
        net.beta = model.encode(support, c_noise, query)
        return model.inr.render(net.beta, query, chunk)
    return net


def reencodes(steps, lcfg):
    """Whether a generated INR needs one more pass, an encode at t_min: at 2 steps under Eq. 12, f(x, t_mid) keeps
    c_skip(t_mid) = 27% of its noisy input, so it is an image, not a render; without the query skip it is M_beta."""
    return steps == 2 and lcfg.query_skip


@torch.no_grad()
def generate(model, seeds, steps, lcfg, resolution=None, chunk=4096):
    """(grid images at the training resolution, INR renders at `resolution`), both (B, 3, H, W) in [-1, 1]."""
    dev = next(model.parameters()).device
    R = model.inr.resolution
    n, grid, net = len(seeds), make_grid(R, R, dev), keeping_beta(model, chunk)
    x = lcfg.t_max * per_image_noise(seeds, (3, R, R), dev)
    t = t_full(lcfg.t_max, n, dev)
    image, _ = consistency_fn(net, x, x, t, grid, lcfg)
    if steps == 2:  # ECT/iCT: noise the 1-step image back to t_mid with fresh noise and apply f again
        z = per_image_noise([s + 1_000_000_007 for s in seeds], (3, R, R), dev)
        t = t_full(T_MID, n, dev)
        x = image + math.sqrt(T_MID ** 2 - lcfg.t_min ** 2) * z
        image, _ = consistency_fn(net, x, x, t, grid, lcfg)
    if resolution in (None, R):
        return image, image
    big = make_grid(resolution, resolution, dev)
    if reencodes(steps, lcfg):  # off the grid only: on it, f(x, t_mid) is the sample itself
        return image, model.inr.render(encode(model, image.clamp(-1, 1), lcfg), big, chunk)
    # off the grid f is c_out(t) M_beta: the skip term c_skip x has no continuous form (c_skip(T) ~ 4e-5)
    render_big = lambda *_: model.inr.render(net.beta, big, chunk)  # noqa: E731  the INR of the last f, resized
    return image, consistency_fn(render_big, x, 0, t, big, lcfg)[0]


def karras_times(n, t_max=80.0, t_min=0.002, rho=7.0):
    """EDM's n noise levels from t_max to t_min (denser near t_min), then 0."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    t = (t_max ** (1 / rho) + i * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).tolist()


def ode_sample(denoise, x, times):
    """Euler steps of the probability-flow ODE dx/dt = (x - D(x, t)) / t from times[0] to times[-1]."""
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * (x - denoise(x, t)) / t
    return x


@torch.no_grad()
def generate_ode(model, seeds, n_steps, lcfg):
    """A diagnostic, not the method: n_steps of the ODE with the consistency function as the denoiser. After a
    stage-0 run (r = 0, f fits the clean image at every t) this is plain diffusion sampling: the ceiling that
    1- and 2-step consistency samples of the same network can at best reach."""
    dev = next(model.parameters()).device
    R = model.inr.resolution
    grid = make_grid(R, R, dev)

    def denoise(x, t):
        return consistency_fn(model, x, x, t_full(t, len(x), dev), grid, lcfg)[0]
    return ode_sample(denoise, lcfg.t_max * per_image_noise(seeds, (3, R, R), dev), karras_times(n_steps, lcfg.t_max))


@torch.no_grad()
def write_progress(model, test_images, lcfg, out_dir):
    """During training: 1- and 2-step sample grids and a reconstruction grid; returns the test PSNR."""
    was_training = model.training
    model.eval()
    R = model.inr.resolution
    grid = make_grid(R, R, test_images.device)
    rec = model.inr.render(encode(model, test_images, lcfg), grid, 4096)
    seeds = list(range(64))
    one, _ = generate(model, seeds, 1, lcfg)
    two, _ = generate(model, seeds, 2, lcfg)
    save_grid(to_uint8(one), os.path.join(out_dir, 'samples_1step.png'))
    save_grid(to_uint8(two), os.path.join(out_dir, 'samples_2step.png'))
    save_grid(to_uint8(interleave(test_images, rec)), os.path.join(out_dir, 'reconstructions.png'), nrow=16)
    model.train(was_training)
    return psnr(rec, test_images).mean().item()


def interleave(a, b):
    """[a0, b0, a1, b1, ...]: input next to its reconstruction."""
    return torch.stack([a, b], dim=1).flatten(0, 1)


def dataset_split(cfg, split='test'):
    """The test (or train) split of the dataset a checkpoint was trained on."""
    return load_dataset(cfg['dataset'], split, cfg['resolution'], cfg['data_dir'], cfg['seed'], cfg['test_fraction'],
                        cfg['cache_dir'])


def load_model(path, weights='ema', device='cpu'):
    """(model in eval mode with the chosen weights, training config, LossConfig, step) of a checkpoint."""
    model, ckpt = inrct_model.load(path, weights, device)
    return model, ckpt['config'], LossConfig(**ckpt['loss']), ckpt['step']


@torch.no_grad()
def evaluate_encoding(model, cfg, lcfg, batch=64, limit=0, out_png=None, split='test'):
    """PSNR of encode -> render on the test (or train) split; for shapes also at 2x and 4x vs the analytic images."""
    dev = next(model.parameters()).device
    R = cfg['resolution']
    test = dataset_split(cfg, split)
    n = min(limit or len(test), len(test))
    scales = (1, 2, 4) if getattr(test, 'any_resolution', False) else (1,)  # analytic data: the INR off the grid
    scores = {s: [] for s in scales}
    for i in tqdm(range(0, n, batch), desc='encoding', leave=False):
        idx = list(range(i, min(i + batch, n)))
        x = to_float(test.get(idx)).to(dev)
        beta = encode(model, x, lcfg)
        for s in scales:
            rec = model.inr.render(beta, make_grid(R * s, R * s, dev), 4096)
            ref = x if s == 1 else to_float(test.get(idx, resolution=R * s)).to(dev)
            scores[s].append(psnr(rec, ref).cpu())
            if out_png and i == 0 and s == 1:
                save_grid(to_uint8(interleave(x[:32], rec[:32])), out_png, nrow=16)
    out = {'n_images': n, 'split': split, 'resolution': R, 'psnr': torch.cat(scores[1]).mean().item()}
    for s in scales[1:]:
        out[f'psnr_{s}x'] = torch.cat(scores[s]).mean().item()
    return out


@torch.no_grad()
def evaluate_denoising(model, cfg, lcfg, ts=(0.01, 0.0865, 0.3, 0.821, 2.0, 10.0, 80.0), limit=64, seed=0):
    """PSNR of f(x + t z, t) against x on the first `limit` test images, next to the noisy x + t z itself and the
    split's mean image: how well the consistency function denoises at each t."""
    dev = next(model.parameters()).device
    R = cfg['resolution']
    test = dataset_split(cfg)
    x = to_float(test.get(range(min(limit, len(test))))).to(dev)
    grid, g = make_grid(R, R, dev), torch.Generator(device=dev).manual_seed(seed)
    mean = psnr(x.mean(0, keepdim=True).expand_as(x), x).mean().item()
    rows = []
    for t_ in ts:
        t = t_full(t_, len(x), dev)
        x_t = x + t_ * torch.randn(x.shape, generator=g, device=dev)
        f, _ = consistency_fn(model, x_t, x_t, t, grid, lcfg)  # the f that training fits
        rows.append({'t': t_, 'psnr_f': psnr(f, x).mean().item(), 'psnr_noisy': psnr(x_t, x).mean().item()})
    return {'n_images': len(x), 'psnr_mean_image': mean, 'by_t': rows}


# --- NeRF: single-view encoding to novel views, and generation along an orbit ---------------------------
def nerf_views(dataset, scene, views, device):
    """Views of one scene -> images (V, 3, H, W) in [-1, 1] and their rays (V, H, W, 3)."""
    images, poses, (f, cx, cy) = dataset.get(scene, views)
    x = to_float(images)
    o, d = get_rays(poses, f, cx, cy, x.shape[-2], x.shape[-1])
    return x.to(device), o.to(device), d.to(device)


@torch.no_grad()
def nerf_novel_views(model, dataset, scene, support_view, views, lcfg):
    """Encode a scene from one view at t_min and render other views: (support, pred, gt), pred/gt (V, 3, H, W)."""
    dev = next(model.parameters()).device
    x, o, d = nerf_views(dataset, scene, [support_view] + list(views), dev)
    V, (H, W) = len(views), x.shape[-2:]
    query = {'support_origins': o[None, :1], 'support_dirs': d[None, :1],
             'origins': o[1:].reshape(1, -1, 3), 'dirs': d[1:].reshape(1, -1, 3)}
    beta = encode(model, x[None, :1], lcfg, query=query)
    pred = model.inr.render(beta, query).reshape(V, H, W, 3).permute(0, 3, 1, 2)
    return x[0], pred, x[1:]


def nerf_query(support_rays, rays, n):
    """The query dict of n objects seen from one support camera and rendered along the same rays."""
    (o_s, d_s), (o, d) = support_rays, rays
    R = o_s.shape[-2]
    return {'support_origins': o_s.expand(n, 1, R, R, 3), 'support_dirs': d_s.expand(n, 1, R, R, 3),
            'origins': o.reshape(1, -1, 3).expand(n, -1, -1), 'dirs': d.reshape(1, -1, 3).expand(n, -1, -1)}


@torch.no_grad()
def generate_nerf(model, seeds, lcfg, support_rays, rays, steps=1):
    """Generated NeRFs rendered along rays (origins, dirs), each (P, H, W, 3), the same cameras for every object
    -> (N, P, 3, H, W) in [-1, 1]. support_rays: the canonical support camera (1, R, R, 3) x 2.

    1 step: beta = G(c_in(T) T z, T) with the noise on the support view; render c_out(T) M_beta (c_out = 1
    under query_skip False). 2 steps: view that object from the support camera, add noise to t_mid and encode
    at t_mid; without the query skip f is the render, so that INR is the result; under Eq. 12 f at the support
    view mixes c_skip(t_mid) of the noisy view in, so that image is re-encoded at t_min (one more NFE), as for
    images. The second step turns the 1-step blobs of the shapes3d demo into shaded solids (docs/nerf.md)."""
    dev = next(model.parameters()).device
    R = model.inr.resolution
    n, (P, H, W) = len(seeds), rays[0].shape[:3]
    support_rays = tuple(v.reshape(1, R, R, 3) for v in support_rays)
    x, t = lcfg.t_max * per_image_noise(seeds, (1, 3, R, R), dev), t_full(lcfg.t_max, n, dev)
    if steps == 2:
        x1 = generate_nerf(model, seeds, lcfg, support_rays, support_rays)           # (n, 1, 3, R, R)
        z = per_image_noise([s + 1_000_000_007 for s in seeds], (1, 3, R, R), dev)
        x, t = x1 + math.sqrt(T_MID ** 2 - lcfg.t_min ** 2) * z, t_full(T_MID, n, dev)
    if reencodes(steps, lcfg):  # f at the support view holds c_skip(t_mid) of its noisy input: re-encode that image
        as_rays = x.permute(0, 1, 3, 4, 2).reshape(n, R * R, 3)
        f, _ = consistency_fn(model, x, as_rays, t, nerf_query(support_rays, support_rays, n), lcfg)
        x, t = f.reshape(n, 1, R, R, 3).permute(0, 1, 4, 2, 3).clamp(-1, 1), t_full(lcfg.t_min, n, dev)
        _, out = consistency_fn(model, x, 0, t, nerf_query(support_rays, rays, n), lcfg)  # the raw render at t_min
    else:  # a ray has no noisy input to skip to (c_skip 0 at t_mid; 4e-5 at T): f is c_out M_beta
        out, _ = consistency_fn(model, x, 0, t, nerf_query(support_rays, rays, n), lcfg)
    return out.reshape(n, P, H, W, 3).permute(0, 1, 4, 2, 3)


def orbit_rays(dataset, frames, device, resolution=0):
    """Rays of `frames` cameras on an upper-hemisphere orbit at the dataset's camera distance, (P, R, R, 3) x 2,
    R = resolution (0: the dataset's; the focal length scales with it, so the view is the same)."""
    poses, focal = hemisphere_poses_for(dataset, frames)
    R = resolution or dataset.resolution
    return get_rays(torch.stack(poses).to(device), focal * R / dataset.resolution, R / 2, R / 2, R, R)


def nerf_fid_samples(model, cfg, lcfg, seed=0, limit=0, steps=1):
    """The mNIF protocol: one generated object (1 or 2 steps) per test scene (seed*1_000_003 + scene), rendered at every
    pose of that scene. Yields uint8 (views, H, W, 3) scene by scene (SRN Cars: 704 x 251 x 128^2 x 3
    = 8.7 GB in all, so callers stream), in the order of nerf_fid_reference."""
    dev = next(model.parameters()).device
    test = dataset_split(cfg)
    _, o_s, d_s = nerf_views(test, 0, [0], dev)  # the canonical support camera generation starts from
    for s in tqdm(range(min(limit or len(test), len(test))), desc='generated objects at test poses'):
        _, o, d = nerf_views(test, s, range(len(test.views[s])), dev)
        with torch.no_grad():
            gen = generate_nerf(model, [seed * 1_000_003 + s], lcfg, (o_s, d_s), (o, d), steps)
        yield to_uint8(gen[0]).cpu().numpy()


def nerf_fid_reference(cfg, limit=0):
    """Every view of every test scene, uint8 (views, H, W, 3) scene by scene: the real side of the mNIF protocol."""
    test = dataset_split(cfg)
    for s in tqdm(range(min(limit or len(test), len(test))), desc='test views'):
        yield test.get(s, range(len(test.views[s])))[0].numpy()


@torch.no_grad()
def write_nerf_progress(model, test_set, lcfg, out_dir, n_scenes=8):
    """During NeRF training: PSNR of views 1-4 encoded from view 0 on test scenes, and PNG grids."""
    was_training = model.training
    model.eval()
    rows, scores = [], []
    views = list(range(1, min(5, len(test_set.views[0]))))
    for s in range(min(n_scenes, len(test_set))):
        sup, pred, gt = nerf_novel_views(model, test_set, s, 0, views, lcfg)
        scores.append(psnr(pred, gt).mean().item())
        rows.append(torch.cat([sup[None], pred, gt]))  # support | predicted views | true views
    save_grid(to_uint8(torch.cat(rows)), os.path.join(out_dir, 'nerf_views.png'), nrow=1 + 2 * len(views))
    dev = next(model.parameters()).device
    _, o, d = nerf_views(test_set, 0, [0], dev)
    for steps in (1, 2):
        gen = generate_nerf(model, list(range(8)), lcfg, (o, d), orbit_rays(test_set, 8, dev), steps)
        save_grid(to_uint8(gen.flatten(0, 1)), os.path.join(out_dir, f'nerf_samples_{steps}step.png'), nrow=8)
    model.train(was_training)
    return float(np.mean(scores))


@torch.no_grad()
def evaluate_nerf_encoding(model, cfg, lcfg, support_view=0, limit=0, out_png=None, split='test'):
    """SRN protocol: encode each test (or train) scene from one view; PSNR over its other views, mean over scenes.

    Also the PSNR of two answers that know nothing of 3D (the support view copied to every view; all white):
    a novel-view figure means something only by how far it clears them."""
    test = dataset_split(cfg, split)
    n = min(limit or len(test), len(test))
    scores, copy, white, rows = [], [], [], []
    for s in tqdm(range(n), desc='encoding scenes', leave=False):
        views = [v for v in range(len(test.views[s])) if v != support_view]
        sup, pred, gt = nerf_novel_views(model, test, s, support_view, views, lcfg)
        scores.append(psnr(pred, gt).mean().item())
        # what a model scores without any 3D: the support view itself, or the empty white background
        copy.append(psnr(sup.expand_as(gt), gt).mean().item())
        white.append(psnr(torch.ones_like(gt), gt).mean().item())
        if len(rows) < 8:
            rows.append(torch.cat([sup[None], pred[:8], gt[:8]]))
    if out_png:
        save_grid(to_uint8(torch.cat(rows)), out_png, nrow=rows[0].shape[0])
    return {'n_scenes': n, 'split': split, 'resolution': cfg['resolution'], 'support_view': support_view,
            'psnr': float(np.mean(scores)), 'psnr_copy_support': float(np.mean(copy)),
            'psnr_white': float(np.mean(white))}


def write_orbit(model, cfg, lcfg, n, seed, out, steps=1, resolution=0, frames=24):
    """Generated NeRF objects along an orbit: a PNG strip (object per row) and an animated GIF."""
    dev = next(model.parameters()).device
    test = dataset_split(cfg)
    _, o, d = nerf_views(test, 0, [0], dev)
    seeds = [seed * 1_000_003 + j for j in range(n)]
    gen = generate_nerf(model, seeds, lcfg, (o, d), orbit_rays(test, frames, dev, resolution), steps)
    gen = to_uint8(gen.flatten(0, 1))
    save_grid(gen, out, nrow=frames)
    frames_u8 = gen.reshape(n, frames, *gen.shape[1:]).transpose(0, 1)
    gif = out.rsplit('.', 1)[0] + '.gif'
    tiles = [Image.fromarray(np.concatenate(list(f.cpu().numpy()), axis=1)) for f in frames_u8]
    tiles[0].save(gif, save_all=True, append_images=tiles[1:], duration=80, loop=0)
    print(f"wrote {out} and {gif} ({n} generated objects x {frames} views at {gen.shape[1]}^2, {steps} step(s))")


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
                   help='images: PSNR of f(x + t z, t) on 64 test images for t from 0.01 to 80 (--json writes it)')
    p.add_argument('--limit', type=int, default=0,
                   help='at most this many images/scenes: of --split for --encode, of the test split for NeRF '
                        '--npz (0 = all) and for --denoise (0 = 64)')
    p.add_argument('--json', default='', help='--encode, --denoise: write the metrics here')
    p.add_argument('--split', default='test', choices=('test', 'train'),
                   help='--encode: the split to encode (train: tells under-fitting from over-fitting; use --limit)')
    p.add_argument('--support_view', type=int, default=0, help='NeRF --encode: the one view each object is encoded from')
    a = p.parse_args(argv)
    if a.resolution < 0 or a.n < 1:
        p.error('--resolution must be >= 0 and --n >= 1')
    model, cfg, lcfg, step = load_model(a.ckpt, a.weights, inrct_model.pick_device(a.device))
    if cfg['modality'] == 'nerf':
        if a.denoise or a.ode:
            p.error('--denoise and --ode take an image checkpoint; for a NeRF use --encode or --steps')
        if a.encode:
            out = evaluate_nerf_encoding(model, cfg, lcfg, a.support_view, a.limit, a.out.replace('.png', '_encode.png'),
                                         a.split)
            print(json.dumps(write_json(out, a, step), indent=1))
        elif a.npz:  # FID data of the mNIF protocol; fid.py --ckpt runs the same protocol itself
            images = np.concatenate(list(nerf_fid_samples(model, cfg, lcfg, a.seed, a.limit, a.steps)))
            np.savez(a.npz, samples=images)
            print(f"wrote {a.npz}: samples {images.shape} uint8 (one generated object per test scene at its poses)")
        else:
            write_orbit(model, cfg, lcfg, min(a.n, 16), a.seed, a.out, a.steps, a.resolution)
        return
    if a.denoise:
        out = evaluate_denoising(model, cfg, lcfg, limit=a.limit or 64)
        for row in out['by_t']:
            print(f"t {row['t']:7g}: f {row['psnr_f']:6.2f} dB   noisy input {row['psnr_noisy']:6.2f} dB")
        print(f"the test images' mean image: {out['psnr_mean_image']:.2f} dB ({out['n_images']} images, step {step})")
        write_json(out, a, step)
        return
    if a.encode:
        out = evaluate_encoding(model, cfg, lcfg, limit=a.limit, out_png=a.out.replace('.png', '_encode.png'),
                                split=a.split)
        print(json.dumps(write_json(out, a, step), indent=1))
        return
    res = a.resolution or cfg['resolution']
    if a.ode and res != cfg['resolution']:
        p.error('--ode samples on the training grid; leave --resolution out')
    how = f'{a.ode}-step ODE' if a.ode else f'{a.steps}-step'
    images = []
    for i in tqdm(range(0, a.n, a.batch), desc=f'{how} sampling'):
        seeds = [a.seed * 1_000_003 + j for j in range(i, min(i + a.batch, a.n))]
        inr_images = generate_ode(model, seeds, a.ode, lcfg) if a.ode else generate(model, seeds, a.steps, lcfg, res)[1]
        images.append(to_uint8(inr_images).cpu())
    images = torch.cat(images)
    save_grid(images[:256], a.out)
    print(f"wrote {a.out} ({min(a.n, 256)} of {a.n} samples at {res}x{res}, {how}, step-{step} {a.weights})")
    if a.npz:
        np.savez(a.npz, samples=images.numpy())
        print(f"wrote {a.npz}: samples {tuple(images.shape)} uint8")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

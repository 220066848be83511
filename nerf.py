"""The NeRF INR: rays from cameras, volume rendering, and an MLP whose weights all come from INR tokens.

Camera convention (OpenGL / NeRF): a 4x4 camera-to-world pose maps camera coordinates with x right,
y up and the camera looking down -z to world coordinates. SRN Cars stores OpenCV-style poses (x right,
y down, z forward): `srn_to_opengl(pose) = pose @ diag(1, -1, -1, 1)` converts them. Pixel (row i, col j)
is sampled at its centre (j + 0.5, i + 0.5); intrinsics are (f, cx, cy) in pixels.
Nothing about images lives here (inr.py) and nothing about NeRF lives there.
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from inr import Modality, psnr, save_grid, to_device, to_float, to_uint8
from losses import consistency_fn, encode, per_image_noise, reencodes, second_step_noise, t_full


# --- cameras and rays ----------------------------------------------------------------------------------
def srn_to_opengl(pose):
    """SRN / OpenCV camera-to-world (x right, y down, z forward) -> OpenGL (x right, y up, -z forward)."""
    return pose @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=pose.dtype, device=pose.device))


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """OpenGL camera-to-world pose (4, 4) of a camera at eye looking at target."""
    eye, target, up = (torch.as_tensor(v, dtype=torch.float32) for v in (eye, target, up))
    back = F.normalize(eye - target, dim=0)           # +z points away from what the camera sees
    right = F.normalize(torch.linalg.cross(up, back), dim=0)
    true_up = torch.linalg.cross(back, right)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, true_up, back, eye
    return pose


def check_pose(pose, name='pose'):
    """Refuse anything that is not a rigid camera-to-world transform."""
    R = pose[..., :3, :3]
    eye = torch.eye(3, dtype=pose.dtype).expand_as(R)
    if pose.shape[-2:] != (4, 4) or not torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-3) \
            or not torch.allclose(torch.linalg.det(R), torch.ones(()), atol=1e-3):
        raise ValueError(f"{name} is not a rigid 4x4 camera-to-world transform (rotation part not orthonormal "
                         f"with det 1); check the file's layout (4 rows of 4 numbers)")


def get_rays(pose, focal, cx, cy, H, W, pixels=None):
    """Ray origins and unit directions (..., H, W, 3) through pixel centres of an OpenGL camera; pixels (P,) of
    flat indices: through those pixels only, (..., P, 3)."""
    j, i = torch.meshgrid(torch.arange(W, dtype=pose.dtype, device=pose.device) + 0.5,
                          torch.arange(H, dtype=pose.dtype, device=pose.device) + 0.5, indexing='xy')
    dirs_cam = torch.stack([(j - cx) / focal, -(i - cy) / focal, -torch.ones_like(i)], dim=-1)  # (H, W, 3)
    rot = pose[..., None, :3, :3]
    if pixels is not None:
        dirs_cam, rot = dirs_cam.reshape(-1, 3)[pixels], pose[..., :3, :3]
    dirs = F.normalize(dirs_cam @ rot.transpose(-1, -2), dim=-1)
    origins = pose[..., None, :3, 3] if pixels is not None else pose[..., None, None, :3, 3]
    return origins.expand_as(dirs), dirs


# --- volume rendering ------------------------------------------------------------------------------------
def volume_render(field, origins, dirs, near, far, n_samples, offsets=None):
    """Render rays (..., 3) through field(points (..., S, 3)) -> (rgb logits (..., S, 3), density raw (..., S)).

    Stratified samples: bin k of [near, far] is sampled at its centre (evaluation) or at offsets (..., S) in
    [0, 1) inside it (training; drawn once per batch so the teacher pass sees the same points); each sample
    stands for its bin's width. RGB = sigmoid, density =
    ReLU, then alpha-compositing over a white background. Returns (colour (..., 3), weights (..., S)).
    """
    width = (far - near) / n_samples
    bins = torch.arange(n_samples, device=origins.device, dtype=origins.dtype)
    if offsets is None:
        t = (near + (bins + 0.5) * width).expand(*origins.shape[:-1], n_samples)
    else:
        t = near + (bins + offsets) * width                                                      # (..., S)
    points = origins[..., None, :] + t[..., None] * dirs[..., None, :]                           # (..., S, 3)
    rgb_logits, density_raw = field(points)
    rgb, sigma = torch.sigmoid(rgb_logits), F.relu(density_raw)
    alpha = 1 - torch.exp(-sigma * width)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1] + 1e-10], -1), -1)
    weights = alpha * trans
    colour = (weights[..., None] * rgb).sum(-2) + (1 - weights.sum(-1, keepdim=True))  # what passes shows white
    return colour, weights


# --- the NeRF INR -------------------------------------------------------------------------------------------
def posenc_xyz(x, num_freqs):
    """[x, sin(2^k pi x), cos(2^k pi x)] for k < num_freqs; (..., 3) -> (..., 3 + 6 num_freqs)."""
    freqs = 2.0 ** torch.arange(num_freqs, device=x.device) * math.pi
    xf = (x[..., None] * freqs).flatten(-2)
    return torch.cat([x, torch.sin(xf), torch.cos(xf)], dim=-1)


class NeRFINR(Modality, nn.Module):
    """MLP depth x width (ReLU) on positionally encoded xyz -> (rgb, density); every weight from beta.

    Trans-INR's scheme: layer l has a learned base weight (in+1, out) (bias as the last row) and a group of
    g_l INR tokens; each token is mapped to an (in+1)-vector that multiplies out/g_l of the base columns, and
    every column is then L2-normalised over its inputs. Tokens: `num_tokens` = sum of the groups.
    Unit-norm columns keep the density output O(1-10), too thin to make a surface opaque over a bin of width
    (far - near) / n_samples, so it is multiplied by `density_scale` (10); without it a fog stays over every view
    (docs/design-notes.md).
    """

    def __init__(self, depth=6, width=256, token_dim=256, groups=32, num_freqs=8, resolution=128, patch=8,
                 near=0.8, far=1.8, n_samples=64, density_scale=10.0):
        super().__init__()
        self.num_freqs, self.resolution, self.patch = num_freqs, resolution, patch
        self.density_scale = density_scale
        self.near, self.far, self.n_samples = near, far, n_samples
        dims = [3 + 6 * num_freqs] + [width] * (depth - 1) + [4]
        self.shapes = list(zip(dims[:-1], dims[1:]))                   # (in, out) per layer
        self.groups = [groups] * (depth - 1) + [1]                      # output layer: one token for its 4 columns
        self.num_tokens = sum(self.groups)
        self.base = nn.ParameterList(nn.Parameter(self._base_init(i, o)) for i, o in self.shapes)
        self.to_cols = nn.ModuleList(nn.Linear(token_dim, i + 1) for i, _ in self.shapes)

    @staticmethod
    def _base_init(fan_in, fan_out):
        w = torch.empty(fan_in + 1, fan_out)
        nn.init.kaiming_uniform_(w.T, a=math.sqrt(5))
        return w

    def weights(self, beta):
        """beta (B, num_tokens, token_dim) -> per-layer weights [(B, in+1, out)], columns of unit norm."""
        out, start = [], 0
        for base, to_cols, g, (_, o) in zip(self.base, self.to_cols, self.groups, self.shapes):
            cols = to_cols(beta[:, start:start + g]).transpose(1, 2)          # (B, in+1, g)
            start += g
            w = base[None] * cols.repeat_interleave(o // g, dim=2)          # (B, in+1, out)
            out.append(F.normalize(w, dim=1))
        return out

    def field(self, weights, points):
        """Per-instance MLP at points (B, N, 3) -> rgb logits (B, N, 3), density raw (B, N)."""
        h = posenc_xyz(points, self.num_freqs)
        for k, w in enumerate(weights):
            h = torch.cat([h, torch.ones_like(h[..., :1])], dim=-1) @ w
            if k < len(weights) - 1:
                h = F.relu(h)
        return h[..., :3], self.density_scale * h[..., 3]

    # --- observations -> tokens for the hyper-network ------------------------------------------------
    def tokenize(self, rgb, query):
        """Support views rgb (B, V, 3, H, W) and their rays query['support_origins'/'support_dirs'] (B, V, H, W, 3)
        -> patches of [rgb, origin, dir] (B, V*(H/p)*(W/p), 9 p^2), view after view, row-major inside a view."""
        origins, dirs = query['support_origins'], query['support_dirs']
        B, V, _, H, W = rgb.shape
        if (H, W) != (self.resolution, self.resolution):
            raise ValueError(f"the hyper-network takes {self.resolution}x{self.resolution} views, got {H}x{W}")
        x = torch.cat([rgb, origins.permute(0, 1, 4, 2, 3), dirs.permute(0, 1, 4, 2, 3)], dim=2)  # (B, V, 9, H, W)
        p = self.patch
        x = x.reshape(B, V, 9, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(B, V * (H // p) * (W // p), 9 * p * p)

    def render_rays(self, beta, origins, dirs, offsets=None, chunk=4096):
        """Volume-render beta along rays (B, R, 3) -> RGB (B, R, 3) in [0, 1], chunked over rays."""
        weights = self.weights(beta)
        B = beta.shape[0]

        def field(points):  # (B, r, S, 3): one batched MLP per instance, no per-sample loop
            rgb, density = self.field(weights, points.reshape(B, -1, 3))
            return rgb.reshape(*points.shape), density.reshape(points.shape[:-1])

        parts = [volume_render(field, origins[:, i:i + chunk], dirs[:, i:i + chunk], self.near, self.far,
                               self.n_samples, None if offsets is None else offsets[:, i:i + chunk])[0]
                 for i in range(0, origins.shape[1], chunk)]
        return torch.cat(parts, dim=1)

    def render(self, beta, query, chunk=None):
        """M_beta seen along query['origins'/'dirs'] (B, R, 3) -> RGB (B, R, 3) in the data space [-1, 1]."""
        return 2 * self.render_rays(beta, query['origins'], query['dirs'], query.get('offsets'), chunk or 4096) - 1

    # --- what the pipeline asks of a modality (inr.Modality) ------------------------------------------------
    data_kind = 'scenes'
    generates_from_data = True  # the support camera and the poses to render come from the dataset

    def read_batch(self, dataset, indices, cfg, cpu_generator):
        """One support view and cfg['rays_per_object'] rays of another view per scene, drawn on the CPU."""
        return nerf_batch(dataset, indices, cfg['rays_per_object'], cfg['n_samples'], cpu_generator, 'cpu')

    def train_batch(self, raw, cfg, generator, device):
        """The target rays get their own noise: they are not the view the network reads."""
        return {**to_device(raw, device), 'shared_noise': False}

    @torch.no_grad()
    def generate_rays(self, model, seeds, lcfg, support_rays, rays, steps=1):
        """Generated NeRFs rendered along rays (origins, dirs), each (P, H, W, 3), the same cameras for every
        object -> (N, P, 3, H, W) in [-1, 1]. support_rays: the canonical support camera (1, R, R, 3) x 2.

        Generation starts from T z on the support view. 1 step: beta = G(c_in(T) T z, T), render c_out(T) M_beta
        (c_out = 1 under query_skip False). 2 steps: view that object from the support camera, add noise to t_mid
        and encode at t_mid; without the query skip f is the render, so that INR is the result; under Eq. 12 f at
        the support view mixes c_skip(t_mid) of the noisy view in, so that image is re-encoded at t_min (one more
        NFE), as for images. The second step turns the 1-step blobs of the shapes3d demo into shaded solids."""
        dev = next(model.parameters()).device
        R = self.resolution
        n, (P, H, W) = len(seeds), rays[0].shape[:3]
        support_rays = tuple(v.reshape(1, R, R, 3) for v in support_rays)
        x, t = lcfg.t_max * per_image_noise(seeds, (1, 3, R, R), dev), t_full(lcfg.t_max, n, dev)
        if steps == 2:
            x1 = self.generate_rays(model, seeds, lcfg, support_rays, support_rays)           # (n, 1, 3, R, R)
            z = second_step_noise(seeds, (1, 3, R, R), dev)
            x, t = x1 + math.sqrt(lcfg.t_mid ** 2 - lcfg.t_min ** 2) * z, t_full(lcfg.t_mid, n, dev)
        if reencodes(steps, lcfg):  # f at the support view holds c_skip(t_mid) of its noisy input: re-encode it
            as_rays = x.permute(0, 1, 3, 4, 2).reshape(n, R * R, 3)
            f, _ = consistency_fn(model, x, as_rays, t, query_for(support_rays, support_rays, n), lcfg)
            x, t = f.reshape(n, 1, R, R, 3).permute(0, 1, 4, 2, 3).clamp(-1, 1), t_full(lcfg.t_min, n, dev)
            _, out = consistency_fn(model, x, 0, t, query_for(support_rays, rays, n), lcfg)  # the raw render at t_min
        else:  # a ray has no noisy input to skip to (c_skip 0 at t_mid; 4e-5 at T): f is c_out M_beta
            out, _ = consistency_fn(model, x, 0, t, query_for(support_rays, rays, n), lcfg)
        return out.reshape(n, P, H, W, 3).permute(0, 1, 4, 2, 3)

    def nfe(self, steps, lcfg):
        return steps + int(reencodes(steps, lcfg))

    @torch.no_grad()
    def novel_views(self, model, dataset, scene, support_view, views, lcfg):
        """Encode a scene from one view at t_min and render other views: (support, pred, gt), pred/gt (V, 3, H, W)."""
        dev = next(model.parameters()).device
        x, o, d = scene_views(dataset, scene, [support_view] + list(views), dev)
        V, (H, W) = len(views), x.shape[-2:]
        query = {'support_origins': o[None, :1], 'support_dirs': d[None, :1],
                 'origins': o[1:].reshape(1, -1, 3), 'dirs': d[1:].reshape(1, -1, 3)}
        beta = encode(model, x[None, :1], lcfg, query=query)
        pred = model.inr.render(beta, query).reshape(V, H, W, 3).permute(0, 3, 1, 2)
        return x[0], pred, x[1:]

    @torch.no_grad()
    def write_progress(self, model, test_set, lcfg, out_dir, n_scenes=8):
        """During training: PNG grids, and ('psnr', PSNR of views 1-4 encoded from view 0 on test scenes)."""
        was_training = model.training
        model.eval()
        rows, scores = [], []
        views = list(range(1, min(5, len(test_set.views[0]))))
        for s in range(min(n_scenes, len(test_set))):
            sup, pred, gt = self.novel_views(model, test_set, s, 0, views, lcfg)
            scores.append(psnr(pred, gt).mean().item())
            rows.append(torch.cat([sup[None], pred, gt]))  # support | predicted views | true views
        save_grid(to_uint8(torch.cat(rows)), os.path.join(out_dir, 'nerf_views.png'), nrow=1 + 2 * len(views))
        dev = next(model.parameters()).device
        _, o, d = scene_views(test_set, 0, [0], dev)
        for steps in (1, 2):
            gen = self.generate_rays(model, list(range(8)), lcfg, (o, d), orbit_rays(test_set, 8, dev), steps)
            save_grid(to_uint8(gen.flatten(0, 1)), os.path.join(out_dir, f'nerf_samples_{steps}step.png'), nrow=8)
        model.train(was_training)
        return 'psnr', float(np.mean(scores))

    @torch.no_grad()
    def evaluate_encoding(self, model, dataset, lcfg, limit=0, out_png=None, support_view=0, batch=64):
        """SRN protocol: encode each scene from one view; PSNR over its other views, mean over scenes.

        Also the PSNR of two answers that know nothing of 3D (the support view copied to every view; all white):
        a novel-view figure means something only by how far it clears them."""
        n = min(limit or len(dataset), len(dataset))
        scores, copy, white, rows = [], [], [], []
        for s in tqdm(range(n), desc='encoding scenes', leave=False):
            views = [v for v in range(len(dataset.views[s])) if v != support_view]
            sup, pred, gt = self.novel_views(model, dataset, s, support_view, views, lcfg)
            scores.append(psnr(pred, gt).mean().item())
            # what a model scores without any 3D: the support view itself, or the empty white background
            copy.append(psnr(sup.expand_as(gt), gt).mean().item())
            white.append(psnr(torch.ones_like(gt), gt).mean().item())
            if len(rows) < 8:
                rows.append(torch.cat([sup[None], pred[:8], gt[:8]]))
        if out_png:
            save_grid(to_uint8(torch.cat(rows)), out_png, nrow=rows[0].shape[0])
        return {'n_scenes': n, 'resolution': self.resolution, 'support_view': support_view,
                'psnr': float(np.mean(scores)), 'psnr_copy_support': float(np.mean(copy)),
                'psnr_white': float(np.mean(white))}

    def sample_arrays(self, model, dataset, lcfg, n, seed, steps, batch=256, resolution=0, ode=0):
        """The mNIF protocol: one generated object (1 or 2 steps) per scene (seed * 1_000_003 + scene), up to n
        scenes, rendered at every pose of that scene. Yields uint8 (views, H, W, 3) scene by scene (SRN Cars:
        704 x 251 x 128^2 x 3 = 8.7 GB in all, so callers stream), in the order of reference_arrays."""
        if ode:
            raise ValueError('--ode takes an image checkpoint; NeRF samples use --steps 1 or 2')
        dev = next(model.parameters()).device
        _, o_s, d_s = scene_views(dataset, 0, [0], dev)  # the canonical support camera generation starts from
        for s in tqdm(range(min(n or len(dataset), len(dataset))), desc='generated objects at test poses'):
            _, o, d = scene_views(dataset, s, range(len(dataset.views[s])), dev)
            gen = self.generate_rays(model, [seed * 1_000_003 + s], lcfg, (o_s, d_s), (o, d), steps)
            yield to_uint8(gen[0]).cpu().numpy()

    def reference_split(self, split):
        """mNIF compares with every view of every test scene, whatever split is asked for."""
        return 'test', 'test, all views (mNIF)'

    def reference_arrays(self, dataset):
        """Every view of every scene, uint8 (views, H, W, 3) scene by scene: the real side of the mNIF protocol."""
        for s in tqdm(range(len(dataset)), desc='test views'):
            yield dataset.get(s, range(len(dataset.views[s])))[0].numpy()

    def write_samples(self, model, dataset, lcfg, out, n=64, seed=0, steps=1, resolution=0, npz='', batch=256, ode=0,
                      limit=0):
        """sample.py's default: min(n, 16) generated objects along an orbit (PNG strip and GIF); with npz instead
        the mNIF arrays, one object per scene (up to limit scenes) at all its poses."""
        if npz:  # FID data of the mNIF protocol; fid.py --ckpt runs the same protocol itself
            images = np.concatenate(list(self.sample_arrays(model, dataset, lcfg, limit, seed, steps, ode=ode)))
            np.savez(npz, samples=images)
            print(f"wrote {npz}: samples {images.shape} uint8 (one generated object per test scene at its poses)")
            return
        if ode:
            raise ValueError('--ode takes an image checkpoint; NeRF samples use --steps 1 or 2')
        write_orbit(self, model, dataset, lcfg, min(n, 16), seed, out, steps, resolution)


def scene_views(dataset, scene, views, device):
    """Views of one scene -> images (V, 3, H, W) in [-1, 1] and their rays (V, H, W, 3)."""
    images, poses, (f, cx, cy) = dataset.get(scene, views)
    x = to_float(images)
    o, d = get_rays(poses, f, cx, cy, x.shape[-2], x.shape[-1])
    return x.to(device), o.to(device), d.to(device)


def query_for(support_rays, rays, n):
    """The query dict of n objects seen from one support camera and rendered along the same rays."""
    (o_s, d_s), (o, d) = support_rays, rays
    R = o_s.shape[-2]
    return {'support_origins': o_s.expand(n, 1, R, R, 3), 'support_dirs': d_s.expand(n, 1, R, R, 3),
            'origins': o.reshape(1, -1, 3).expand(n, -1, -1), 'dirs': d.reshape(1, -1, 3).expand(n, -1, -1)}


def orbit_rays(dataset, frames, device, resolution=0):
    """Rays of `frames` cameras on an upper-hemisphere orbit at the dataset's camera distance, (P, R, R, 3) x 2,
    R = resolution (0: the dataset's; the focal length scales with it, so the view is the same)."""
    poses, focal = hemisphere_poses_for(dataset, frames)
    R = resolution or dataset.resolution
    return get_rays(torch.stack(poses).to(device), focal * R / dataset.resolution, R / 2, R / 2, R, R)


def write_orbit(inr, model, dataset, lcfg, n, seed, out, steps=1, resolution=0, frames=24):
    """Generated NeRF objects along an orbit: a PNG strip (object per row) and an animated GIF."""
    dev = next(model.parameters()).device
    _, o, d = scene_views(dataset, 0, [0], dev)
    seeds = [seed * 1_000_003 + j for j in range(n)]
    gen = to_uint8(inr.generate_rays(model, seeds, lcfg, (o, d), orbit_rays(dataset, frames, dev, resolution),
                                     steps).flatten(0, 1))
    save_grid(gen, out, nrow=frames)
    frames_u8 = gen.reshape(n, frames, *gen.shape[1:]).transpose(0, 1)
    gif = out.rsplit('.', 1)[0] + '.gif'
    tiles = [Image.fromarray(np.concatenate(list(f.cpu().numpy()), axis=1)) for f in frames_u8]
    tiles[0].save(gif, save_all=True, append_images=tiles[1:], duration=80, loop=0)
    print(f"wrote {out} and {gif} ({n} generated objects x {frames} views at {gen.shape[1]}^2, {steps} step(s))")


def nerf_batch(dataset, scenes, rays_per_object, n_samples, generator, device):
    """One support view and `rays_per_object` random rays of another view per scene.

    -> {'support': rgb (B, 1, 3, H, W), 'target': (B, R, 3), 'query': rays and stratification offsets}, all
    in [-1, 1] data space; noise is added to rgb only, never to the ray geometry.
    """
    support, s_o, s_d, target, q_o, q_d = [], [], [], [], [], []
    for s in scenes:
        n = len(dataset.views[s])
        pick = torch.randperm(n, generator=generator)[:2].tolist()
        images, poses, (f, cx, cy) = dataset.get(s, pick)
        H, W = images.shape[1:3]
        o, d = get_rays(poses[0], f, cx, cy, H, W)                                 # the support view: (H, W, 3)
        pix = torch.randint(0, H * W, (rays_per_object,), generator=generator)
        q = get_rays(poses[1], f, cx, cy, H, W, pix)                               # only the target rays: (P, 3)
        support.append(to_float(images[:1])[0])
        s_o.append(o)
        s_d.append(d)
        target.append(images[1].reshape(-1, 3)[pix].float() / 127.5 - 1)
        q_o.append(q[0])
        q_d.append(q[1])
    st = lambda v: torch.stack(v).to(device)  # noqa: E731
    query = {'support_origins': st(s_o)[:, None], 'support_dirs': st(s_d)[:, None], 'origins': st(q_o),
             'dirs': st(q_d), 'offsets': torch.rand(len(scenes), rays_per_object, n_samples, generator=generator).to(device)}
    return {'support': st(support)[:, None], 'target': st(target), 'query': query}


def hemisphere_poses_for(dataset, n):
    """An orbit of n OpenGL poses around the origin at the dataset's camera distance, and its focal length."""
    _, poses, (focal, _, _) = dataset.get(0, [0])
    radius = poses[0, :3, 3].norm().item()
    return hemisphere_poses(n, radius=radius), focal


def hemisphere_poses(n, radius=1.3, seed=None):
    """OpenGL poses on the upper hemisphere looking at the origin: random (seed) or a fixed spiral (seed=None)."""
    if seed is None:
        k = np.arange(n) + 0.5
        elev, azim = np.arcsin(0.15 + 0.8 * k / n), k * np.pi * (3 - np.sqrt(5))
    else:
        rng = np.random.default_rng(seed)
        elev, azim = np.arcsin(rng.uniform(0.15, 0.95, n)), rng.uniform(0, 2 * np.pi, n)
    eyes = radius * np.stack([np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)], 1)
    return [look_at(tuple(e)) for e in eyes]

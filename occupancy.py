"""The occupancy INR: 3D shapes as occupancy fields, the third modality (Functa / mNIF / DPF's ShapeNet benchmark).

M_beta(x, y, z) = MLP(LAL(PE(xyz), beta)) -> occupancy in the data space [-1, 1] (2 * inside fraction - 1; the
surface is its 0 level set): the image INR's recipe (inr.ImageINR) in 3D. The output stays in data space, not a
logit, because the consistency function mixes f with its noisy input and the losses compare values in data space.
Observations are voxel grids (B, 1, D, D, D) in [-1, 1], tokenised as p^3 patches; volume[i, j, k] is the voxel
centred at (x_i, y_j, z_k), coordinates in (-1, 1) as `make_grid3`.

Also here: shaded depth pictures of occupancy grids (ray-marched, nerf.py's cameras) and the shape-generation
metrics (Chamfer distance, MMD, COV, 1-NNA between surface point sets).
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.spatial import cKDTree
from tqdm import tqdm

from inr import AttentionINR, Modality, save_grid, to_device
from losses import consistency_fn, encode, per_image_noise, reencodes, second_step_noise, t_full
from nerf import get_rays, look_at


def make_grid3(D, device=None):
    """Voxel-centre coordinates (D, D, D, 3) in (-1, 1): index i -> -1 + (2i + 1) / D on each axis."""
    c = (torch.arange(D, device=device, dtype=torch.float32) * 2 + 1) / D - 1
    return torch.stack(torch.meshgrid(c, c, c, indexing='ij'), dim=-1)


def to_float_voxels(voxels_uint8):
    """uint8 (B, D, D, D), 255 = inside -> float (B, 1, D, D, D) in [-1, 1], the data space of the model."""
    return voxels_uint8[:, None].float() / 127.5 - 1


def patchify3(volumes, resolution, p):
    """(B, 1, D, D, D) -> (B, (D/p)^3, p^3) non-overlapping cubes, x-major: the voxel observation tokens."""
    B, _, D = volumes.shape[:3]
    if volumes.shape[2:] != (resolution,) * 3:
        raise ValueError(f"the hyper-network takes {resolution}^3 grids, got {tuple(volumes.shape[2:])}")
    g = D // p
    x = volumes.reshape(B, g, p, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, g ** 3, p ** 3)


class OccupancyINR(Modality, AttentionINR):
    """ANR in 3D: M_beta(x, y, z) -> occupancy; shared weights, per-instance INR tokens beta (B, K, width)."""

    def __init__(self, width=512, depth=5, heads=8, tokens=256, pe_sigma=16.0, resolution=32, patch=8):
        AttentionINR.__init__(self, width, depth, heads, tokens, pe_sigma, coord_dims=3, out_dim=1)
        self.resolution, self.patch = resolution, patch

    def tokenize(self, volumes, query=None):
        return patchify3(volumes, self.resolution, self.patch)

    def render(self, beta, query, chunk=None):
        """beta at points (B|1, P, 3) -> (B, P, 1), or at a grid (D, D, D, 3) / (B, D, D, D, 3) -> (B, 1, D, D, D).
        chunk bounds the points per pass (any grid size fits in memory); training passes None (one pass)."""
        grid = query.shape[-4:-1] if query.dim() >= 4 else None
        flat = query.reshape(query.shape[0] if query.dim() == 5 else 1, -1, 3) if grid else query
        chunk = chunk or flat.shape[1]
        out = torch.cat([self(beta, flat[:, i:i + chunk]) for i in range(0, flat.shape[1], chunk)], dim=1)
        return out if grid is None else out.reshape(beta.shape[0], 1, *grid)

    # --- what the pipeline asks of a modality (inr.Modality) ------------------------------------------------
    data_kind = 'voxels'

    def read_batch(self, dataset, indices, cfg, cpu_generator):
        """The voxel grids are the observation; the target is cfg['points_per_object'] voxel centres per object,
        half drawn uniformly and half from voxels next to the surface (so thin parts are learned), with their
        values; all on the CPU."""
        x = to_float_voxels(dataset.get(indices))                                  # (B, 1, D, D, D) on the CPU
        B, D, P = x.shape[0], x.shape[-1], cfg['points_per_object']
        inside = (x > 0).float()
        near = (F.max_pool3d(inside, 3, 1, 1) != -F.max_pool3d(-inside, 3, 1, 1)).flatten(1).float()  # (B, D^3)
        weights = 1 / D ** 3 + near / near.sum(1, keepdim=True).clamp(min=1)        # half the mass on the surface
        idx = torch.multinomial(weights, P, replacement=True, generator=cpu_generator)  # (B, P)
        coords = make_grid3(D).reshape(-1, 3)[idx]                                  # (B, P, 3)
        target = x.flatten(1).gather(1, idx)[..., None]                             # (B, P, 1)
        return {'support': x, 'target': target, 'query': coords}

    def train_batch(self, raw, cfg, generator, device):
        """The target gets its own noise (shared_noise False): it is a subset, not the grid the network reads."""
        return {**to_device(raw, device), 'shared_noise': False}

    @torch.no_grad()
    def generate(self, model, seeds, steps, lcfg, resolution=None, chunk=16384):
        """(grids at the training resolution, INR renders at `resolution`), both (B, 1, D, D, D) in [-1, 1];
        generation starts from T z on the training grid, as for images."""
        dev = next(model.parameters()).device
        R = self.resolution
        n, grid = len(seeds), make_grid3(R, dev)
        beta = {}

        def net(support, c_noise, query):  # keeps the INR tokens of the last call, to render them elsewhere
            beta['last'] = model.encode(support, c_noise, query)
            return model.inr.render(beta['last'], query, chunk)
        x = lcfg.t_max * per_image_noise(seeds, (1, R, R, R), dev)
        t = t_full(lcfg.t_max, n, dev)
        vol, _ = consistency_fn(net, x, x, t, grid, lcfg)
        if steps == 2:
            t = t_full(lcfg.t_mid, n, dev)
            x = vol + math.sqrt(lcfg.t_mid ** 2 - lcfg.t_min ** 2) * second_step_noise(seeds, (1, R, R, R), dev)
            vol, _ = consistency_fn(net, x, x, t, grid, lcfg)
        if resolution in (None, R):
            return vol, vol
        big = make_grid3(resolution, dev)
        if reencodes(steps, lcfg):
            return vol, model.inr.render(encode(model, vol.clamp(-1, 1), lcfg), big, chunk)
        return vol, consistency_fn(lambda *_: model.inr.render(beta['last'], big, chunk), x, 0, t, big, lcfg)[0]

    def nfe(self, steps, lcfg):
        return steps + int(reencodes(steps, lcfg))

    @torch.no_grad()
    def reconstruct(self, model, volumes, lcfg, resolution=None):
        """Encode clean grids (B, 1, D, D, D) at t_min and render the INRs at `resolution`^3 (None: D)."""
        dev = next(model.parameters()).device
        beta = encode(model, volumes.to(dev), lcfg)
        return model.inr.render(beta, make_grid3(resolution or self.resolution, dev), 16384)

    @torch.no_grad()
    def write_progress(self, model, test_set, lcfg, out_dir):
        """During training: test shapes next to their reconstructions, and 1-/2-step samples, as shaded depth
        pictures (PNG); returns ('iou', test IoU of the reconstructions)."""
        was_training = model.training
        model.eval()
        x = to_float_voxels(test_set.get(range(min(16, len(test_set)))))
        rec = self.reconstruct(model, x, lcfg).cpu()
        save_grid(render_depth(torch.stack([x, rec], 1).flatten(0, 1)), os.path.join(out_dir, 'reconstructions.png'),
                  nrow=8)
        for steps in (1, 2):
            vol, _ = self.generate(model, list(range(16)), steps, lcfg)
            save_grid(render_depth(vol.cpu()), os.path.join(out_dir, f'samples_{steps}step.png'), nrow=8)
        model.train(was_training)
        return 'iou', iou(rec, x).mean().item()

    @torch.no_grad()
    def evaluate_encoding(self, model, dataset, lcfg, limit=0, out_png=None, support_view=0, batch=16):
        """IoU (inside: value > 0) of encode -> render on a split, at the training grid and, for data defined at
        any resolution (shapes_occ), at 2x against the analytic 2x grid: the INR off its training grid."""
        n = min(limit or len(dataset), len(dataset))
        scales = (1, 2) if getattr(dataset, 'any_resolution', False) else (1,)
        scores = {s: [] for s in scales}
        for i in tqdm(range(0, n, batch), desc='encoding', leave=False):
            idx = list(range(i, min(i + batch, n)))
            x = to_float_voxels(dataset.get(idx))
            for s in scales:
                rec = self.reconstruct(model, x, lcfg, self.resolution * s).cpu()
                ref = x if s == 1 else to_float_voxels(dataset.get(idx, resolution=self.resolution * s))
                scores[s].append(iou(rec, ref))
                if out_png and i == 0 and s == 1:
                    save_grid(render_depth(torch.stack([x[:8], rec[:8]], 1).flatten(0, 1)), out_png, nrow=8)
        out = {'n_objects': n, 'resolution': self.resolution, 'iou': torch.cat(scores[1]).mean().item()}
        if 2 in scores:
            out['iou_2x'] = torch.cat(scores[2]).mean().item()
        return out

    def sample_arrays(self, model, dataset, lcfg, n, seed, steps, batch=64, resolution=0, ode=0):
        """n generated shapes (seed * 1_000_003 + i) as shaded depth pictures, uint8 (b, 64, 64, 3) batch by
        batch: what fid.py's image features score (the Chamfer metrics: evaluate_generation)."""
        if ode:
            raise ValueError('--ode takes an image checkpoint; occupancy samples use --steps 1 or 2')
        for i in tqdm(range(0, n, batch), desc=f'{steps}-step shapes'):
            seeds = [seed * 1_000_003 + j for j in range(i, min(i + batch, n))]
            yield render_depth(self.generate(model, seeds, steps, lcfg, resolution or None)[1].cpu()).numpy()

    def reference_split(self, split):
        return split, split

    def reference_arrays(self, dataset):
        """The real side: every shape of the split as a shaded depth picture, uint8 chunks."""
        for i in tqdm(range(0, len(dataset), 64), desc='reference shapes'):
            yield render_depth(to_float_voxels(dataset.get(range(i, min(i + 64, len(dataset)))))).numpy()

    def write_samples(self, model, dataset, lcfg, out, n=64, seed=0, steps=1, resolution=0, npz='', batch=64, ode=0,
                      limit=0):
        """sample.py's default: a PNG grid of shaded pictures of up to 64 of n generated shapes; npz: every
        shape's occupancy grid (uint8 N x D x D x D, key 'volumes') and its picture (key 'samples')."""
        if ode:
            raise ValueError('--ode takes an image checkpoint; occupancy samples use --steps 1 or 2')
        vols = []
        for i in tqdm(range(0, n, batch), desc=f'{steps}-step shapes'):
            seeds = [seed * 1_000_003 + j for j in range(i, min(i + batch, n))]
            vols.append(self.generate(model, seeds, steps, lcfg, resolution or None)[1].cpu())
        vols = torch.cat(vols)
        pictures = render_depth(vols)
        save_grid(pictures[:64], out, nrow=8)
        print(f"wrote {out} ({min(n, 64)} of {n} shapes at {vols.shape[-1]}^3, {steps}-step)")
        if npz:
            np.savez(npz, samples=pictures.numpy(), volumes=to_uint8_voxels(vols).numpy())
            print(f"wrote {npz}: samples {tuple(pictures.shape)} pictures, volumes {tuple(vols.shape[:1] + vols.shape[2:])}")

    def evaluate_generation(self, model, train_set, test_set, lcfg, n=0, seed=0, steps=1, points=2048):
        """The shape-generation protocol (PointFlow, DPF, mNIF): n generated shapes against n test shapes (n = 0:
        the whole test split), `points` surface points each, Chamfer distance; MMD, COV and 1-NNA, next to the
        same figures for train shapes and for the mean shape repeated (the references a figure must beat)."""
        n = min(n or len(test_set), len(test_set))
        test = to_float_voxels(test_set.get(range(n)))
        gen = torch.cat([self.generate(model, [seed * 1_000_003 + j for j in range(i, min(i + 32, n))], steps,
                                       lcfg)[0].cpu() for i in tqdm(range(0, n, 32), desc=f'{steps}-step shapes')])
        train = to_float_voxels(train_set.get(range(min(n, len(train_set)))))
        mean = to_float_voxels(train_set.get(range(min(1000, len(train_set))))).mean(0, keepdim=True)
        mean = ((mean > 0).float() * 2 - 1).expand(n, -1, -1, -1, -1)  # the voxels inside in most shapes
        ref_pts = [surface_points(v, points, 7 + k) for k, v in enumerate(test)]
        out = {'n': n, 'points': points, 'steps': steps}
        for name, vols in (('generated', gen), ('train_shapes', train), ('mean_shape', mean)):
            pts = [surface_points(v, points, 1_000_003 + k) for k, v in enumerate(vols)]
            out[name] = shape_metrics(pts, ref_pts)
        return out


def to_uint8_voxels(volumes):
    """float (B, 1, D, D, D) in [-1, 1] -> uint8 (B, D, D, D)."""
    return ((volumes[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def iou(pred, ref):
    """Per-shape IoU of the inside sets (value > 0) of two (B, 1, D, D, D) grids in [-1, 1]; 1 where both are empty."""
    a, b = (pred > 0).flatten(1), (ref > 0).flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


# --- pictures: shaded depth of an occupancy grid, ray-marched from a fixed camera ------------------------------
CAMERA_EYE = (1.65, -1.95, 1.4)   # looking at the origin from above one corner: three faces of the cube in view


@torch.no_grad()
def render_depth(volumes, size=64, n_steps=128):
    """Grids (B, 1, D, D, D) in [-1, 1] -> uint8 (B, size, size, 3): each ray stops at the first sample inside
    (trilinear value > 0), is shaded by the grid's gradient there (Lambert, one light at the camera) and tinted by
    depth; rays that miss stay white."""
    volumes = volumes.float()
    B = volumes.shape[0]
    eye = torch.tensor(CAMERA_EYE)
    dist = eye.norm().item()
    focal = 0.5 * size / math.tan(math.radians(22))
    o, d = get_rays(look_at(CAMERA_EYE), focal, size / 2, size / 2, size, size)       # (size, size, 3)
    ts = torch.linspace(dist - math.sqrt(3), dist + math.sqrt(3), n_steps)
    pts = o[..., None, :] + d[..., None, :] * ts[:, None]                             # (H, W, S, 3)

    def sample(p):  # grid_sample's last coordinate indexes the last axis (z), so pass (z, y, x)
        g = p.flip(-1).reshape(1, 1, -1, 1, 3).expand(B, -1, -1, -1, -1)
        return F.grid_sample(volumes, g, mode='bilinear', padding_mode='border', align_corners=False).reshape(B, -1)
    inside_box = (pts.abs() < 1).all(-1).reshape(-1)
    v = torch.where(inside_box, sample(pts), torch.full((B, inside_box.numel()), -1.0)).reshape(B, size * size, -1)
    hit = v > 0
    any_hit = hit.any(-1)
    first = hit.float().argmax(-1)                                                     # (B, H*W)
    t_hit = ts[first]
    p_hit = (o.reshape(-1, 3) + d.reshape(-1, 3) * t_hit[..., None])                   # (B, H*W, 3)
    h = 1.0 / volumes.shape[-1]
    grad = torch.stack([sample_at(volumes, p_hit + h * e) - sample_at(volumes, p_hit - h * e) for e in torch.eye(3)], -1)
    normal = -F.normalize(grad, dim=-1)
    light = F.normalize(eye - p_hit, dim=-1)
    shade = 0.25 + 0.75 * (normal * light).sum(-1).clamp(min=0)
    depth = ((t_hit - (dist - math.sqrt(3))) / (2 * math.sqrt(3))).clamp(0, 1)
    base = torch.tensor([0.55, 0.65, 0.85]) * (1 - 0.5 * depth[..., None]) + torch.tensor([0.9, 0.6, 0.4]) * 0.5 * depth[..., None]
    rgb = torch.where(any_hit[..., None], base * shade[..., None], torch.ones(3))
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).reshape(B, size, size, 3)


def sample_at(volumes, points):
    """Trilinear values of grids (B, 1, D, D, D) at per-grid points (B, N, 3) -> (B, N)."""
    g = points.flip(-1)[:, :, None, None, :]                                           # (B, N, 1, 1, 3)
    return F.grid_sample(volumes, g, mode='bilinear', padding_mode='border', align_corners=False).reshape(len(points), -1)


# --- shape-generation metrics: Chamfer distance between surface point sets -----------------------------------
def surface_points(volume, n, seed):
    """n points on the surface of one grid (1, D, D, D) in [-1, 1]: centres of inside voxels with an outside
    6-neighbour (the grid's boundary), jittered within the voxel; an empty grid gives n points at the origin."""
    inside = (volume[0] > 0).numpy()
    D = inside.shape[0]
    padded = np.pad(inside, 1)
    outside_nb = np.zeros_like(inside)
    for ax in range(3):
        for s in (-1, 1):
            outside_nb |= ~np.roll(padded, s, axis=ax)[1:-1, 1:-1, 1:-1]
    idx = np.argwhere(inside & outside_nb)
    rng = np.random.default_rng(seed)
    if len(idx) == 0:
        return np.zeros((n, 3))
    pick = idx[rng.integers(len(idx), size=n)]
    return (pick * 2 + 1) / D - 1 + rng.uniform(-1 / D, 1 / D, (n, 3))


def chamfer(a, b):
    """Chamfer distance of point sets (n, 3), (m, 3): mean squared distance to the nearest point, both ways."""
    da, _ = cKDTree(b).query(a)
    db, _ = cKDTree(a).query(b)
    return (da ** 2).mean() + (db ** 2).mean()


def shape_metrics(gen, ref):
    """MMD (mean over ref of the nearest generated shape's CD; lower is better), COV (share of ref shapes that
    are some generated shape's nearest; higher), 1-NNA (leave-one-out 1-NN accuracy telling generated from ref
    over both sets; 0.5 is ideal) with the Chamfer distance, as PointFlow and DPF report them."""
    G, R = len(gen), len(ref)
    allp = list(gen) + list(ref)
    d = np.array([[chamfer(a, b) if j > i else 0.0 for j, b in enumerate(allp)] for i, a in enumerate(allp)])
    d = d + d.T
    gr = d[:G, G:]
    np.fill_diagonal(d, np.inf)
    labels = np.array([0] * G + [1] * R)
    nn_label = labels[d.argmin(1)]
    return {'mmd_cd': float(gr.min(0).mean()), 'cov_cd': float(len(set(gr.argmin(1))) / R),
            '1nna_cd': float((nn_label == labels).mean())}

"""The NeRF INR: rays from cameras, volume rendering, and an MLP whose weights all come from INR tokens.

Camera convention (OpenGL / NeRF): a 4x4 camera-to-world pose maps camera coordinates with x right,
y up and the camera looking down -z to world coordinates. SRN Cars stores OpenCV-style poses (x right,
y down, z forward): `srn_to_opengl(pose) = pose @ diag(1, -1, -1, 1)` converts them. Pixel (row i, col j)
is sampled at its centre (j + 0.5, i + 0.5); intrinsics are (f, cx, cy) in pixels.
Nothing about images lives here (inr.py) and nothing about NeRF lives there.
"""
import math

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from inr import to_float


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


def get_rays(pose, focal, cx, cy, H, W):
    """Ray origins and unit directions (..., H, W, 3) through pixel centres of an OpenGL camera."""
    j, i = torch.meshgrid(torch.arange(W, dtype=pose.dtype, device=pose.device) + 0.5,
                          torch.arange(H, dtype=pose.dtype, device=pose.device) + 0.5, indexing='xy')
    dirs_cam = torch.stack([(j - cx) / focal, -(i - cy) / focal, -torch.ones_like(i)], dim=-1)  # (H, W, 3)
    dirs = F.normalize(dirs_cam @ pose[..., None, :3, :3].transpose(-1, -2), dim=-1)            # (..., H, W, 3)
    origins = pose[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


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


class NeRFINR(nn.Module):
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
        x = to_float(images)                                                    # (2, 3, H, W)
        o, d = get_rays(poses, f, cx, cy, x.shape[-2], x.shape[-1])              # (2, H, W, 3)
        pix = torch.randint(0, x.shape[-2] * x.shape[-1], (rays_per_object,), generator=generator)
        support.append(x[0])
        s_o.append(o[0])
        s_d.append(d[0])
        target.append(x[1].permute(1, 2, 0).reshape(-1, 3)[pix])
        q_o.append(o[1].reshape(-1, 3)[pix])
        q_d.append(d[1].reshape(-1, 3)[pix])
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

"""The image INR M_beta (ANR, Zhang et al. 2024) and its coordinate grids.

M_beta(x) = MLP(LAL(PE(x), beta)): a coordinate x in (-1, 1)^2 is positionally encoded, attends to the
instance's INR tokens beta through the Localised Attention Layer, and a ReLU MLP maps the result to RGB
in [-1, 1]. Only beta is per instance; every weight here is shared. Coordinates are (row, col) = (y, x).
"""
import math
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from losses import (consistency_fn, encode, karras_times, ode_sample, per_image_noise, reencodes,
                    second_step_noise, t_full)


def make_grid(H, W, device=None):
    """Pixel-centre coordinates (H, W, 2) in (-1, 1): row i -> -1 + (2i + 1) / H."""
    ys = (torch.arange(H, device=device, dtype=torch.float32) * 2 + 1) / H - 1
    xs = (torch.arange(W, device=device, dtype=torch.float32) * 2 + 1) / W - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1)


def jitter_grid(grid, generator=None):
    """Variational coordinates (ANR): add clip(0.3 n N(0,1), -n/2, n/2), n = 1/max(H, W), per query point."""
    n = 1.0 / max(grid.shape[-3], grid.shape[-2])
    noise = torch.randn(grid.shape, generator=generator, device=grid.device)
    return grid + (0.3 * n * noise).clamp(-n / 2, n / 2)


def positional_encoding(x, num_freqs, sigma):
    """[cos(pi x w), sin(pi x w)] for num_freqs log-spaced w in [1, sigma]; (..., C) -> (..., 2*C*num_freqs)."""
    w = torch.exp(torch.linspace(0, math.log(sigma), num_freqs, device=x.device))
    xw = (x[..., None] * w).flatten(-2)  # (..., C*num_freqs), all frequencies of coord 0, then coord 1
    return torch.cat([torch.cos(math.pi * xw), torch.sin(math.pi * xw)], dim=-1)


def localised_attention(q, k, v, tau, eps=1e-6):
    """ANR's Localised Attention: softmax, clamp at tau, subtract tau, renormalise.

    q (B, h, P, d), k and v (B, h, K, d) -> (B, h, P, d). The largest softmax weight of a row is at
    least 1/K > tau whenever tau < 1/K, so a row never empties; eps only guards the division.
    """
    a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (B, h, P, K)
    a = a.clamp(min=tau) - tau
    a = a / (a.sum(dim=-1, keepdim=True) + eps)
    return a @ v


def patchify(images, resolution, p):
    """(B, 3, H, W) -> (B, (H/p)*(W/p), 3*p*p) non-overlapping patches, row-major: the image observation tokens."""
    B, C, H, W = images.shape
    if (H, W) != (resolution, resolution):
        raise ValueError(f"the hyper-network takes {resolution}x{resolution} observations, got "
                         f"{H}x{W}; resize the input (sample.py --resolution renders at other sizes)")
    x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


MODALITY_FOR = {'images': 'image', 'scenes': 'nerf', 'voxels': 'occupancy'}  # a dataset's data_kind -> --modality


def denoiser(model, lcfg, resolution, device=None, render=False):
    """(x, t) -> f(x, x, t) on the training grid: the consistency function used as a plain denoiser (the denoising
    grid, tools/noise_level_probe.py). render=True (the ODE's denoiser): without the query skip, the render alone.
    f keeps boundary_sigma's c_skip(t) x_t below t ~ 0.05, noise the INR cannot cancel and the ODE, which takes
    D(x, t) for a noise-free estimate, then never removes: its samples end with a faint grain."""
    grid = make_grid(resolution, resolution, device)
    out = 1 if render and not lcfg.query_skip else 0
    return lambda x, t: consistency_fn(model, x, x, t_full(t, len(x), device), grid, lcfg)[out]


class Modality:
    """What train.py, sample.py and fid.py ask of an INR; they call only these methods (model.inr.<name>), so a new
    modality is a new INR class with the same methods (ImageModality below, nerf.NeRFINR):
      check_dataset                                 train.py: refuse data of another kind
      read_batch, train_batch                       one micro-batch: read on the CPU (in a DataLoader worker,
                                                    so no model or device), then put on the device
      write_progress                                train.py: PNG grids and (score name, test score) during training
      evaluate_encoding, write_samples              sample.py --encode / the default
      sample_arrays, reference_split/_arrays, nfe   fid.py: generated and real uint8 arrays for the metrics
      encoded_arrays (images only)                  fid.py --encoded: reconstructions scored as samples
    `model` is the whole INRCT (hyper-network + this INR); `cfg` of train_batch is the training config, `lcfg`
    elsewhere the LossConfig a checkpoint was trained with."""
    data_kind = 'images'          # what a dataset must hold: its `data_kind` ('images' when it has none)
    generates_from_data = False   # whether generation needs the dataset (NeRF: its cameras); images need none
    reads_its_target = False      # whether the signal the network reads is its target (images; a NeRF's target is
                                  # another view): --distill steps the ODE of what it reads to make the target

    def check_dataset(self, dataset, name):
        """Refuse data of another kind (scenes or voxel grids for an image INR, images for a NeRF, ...)."""
        kind = getattr(dataset, 'data_kind', 'images')
        if kind != self.data_kind:
            raise ValueError(f"--dataset {name} holds {kind}, but this model's INR draws {self.data_kind}; set "
                             f"--modality {MODALITY_FOR.get(kind, '?')} (its configs set it: configs/<dataset>.py)")


    def batch(self, dataset, indices, cfg, generator, cpu_generator, device):
        """read_batch then train_batch, in one process (tests, tools)."""
        return self.train_batch(self.read_batch(dataset, indices, cfg, cpu_generator), cfg, generator, device)


def to_device(obj, device):
    """Tensors, also inside dicts and lists, moved to device (non_blocking: from pinned memory the copy overlaps)."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


class ImageModality(Modality):
    """The image INRs' answers (ImageINR, PixelINR): a batch is images on the pixel grid, generation starts from
    T z on that grid, metrics score images."""
    reads_its_target = True

    def read_batch(self, dataset, indices, cfg, cpu_generator):
        """The images of one micro-batch, uint8 (B, H, W, 3) on the CPU (cpu_generator: for random draws; unused)."""
        return {'images': dataset.get(indices)}

    def train_batch(self, raw, cfg, generator, device):
        """The images are both the observation and the target, noised with the same z (Eq. 13); queries are the
        pixel grid with ANR's variational jitter, drawn from the step's generator on the device."""
        x = to_float(raw['images'].to(device, non_blocking=True))
        grid = make_grid(self.resolution, self.resolution, device)
        return {'support': x, 'target': x, 'query': jitter_grid(grid.expand(len(x), *grid.shape), generator),
                'shared_noise': True}

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model, seeds, steps, lcfg, resolution=None, chunk=4096):
        """(grid images at the training resolution, INR renders at `resolution`), both (B, 3, H, W) in [-1, 1].
        Generation starts from T z on the training grid, z one N(0, I) per seed."""
        dev = next(model.parameters()).device
        R = self.resolution
        n, grid, net = len(seeds), make_grid(R, R, dev), keeping_beta(model, chunk)
        x = lcfg.t_max * per_image_noise(seeds, (3, R, R), dev)
        t = t_full(lcfg.t_max, n, dev)
        image, _ = consistency_fn(net, x, x, t, grid, lcfg)
        if steps == 2:  # ECT/iCT: noise the 1-step image back to t_mid with fresh noise and apply f again
            t = t_full(lcfg.t_mid, n, dev)
            x = image + math.sqrt(lcfg.t_mid ** 2 - lcfg.t_min ** 2) * second_step_noise(seeds, (3, R, R), dev)
            image, _ = consistency_fn(net, x, x, t, grid, lcfg)
        if resolution in (None, R):
            return image, image
        big = make_grid(resolution, resolution, dev)
        if reencodes(steps, lcfg):  # off the grid only: on it, f(x, t_mid) is the sample itself
            return image, model.inr.render(encode(model, image.clamp(-1, 1), lcfg), big, chunk)
        # off the grid f is c_out(t) M_beta: the skip term c_skip x has no continuous form (c_skip(T) ~ 4e-5)
        render_big = lambda *_: model.inr.render(net.beta, big, chunk)  # noqa: E731  the INR of the last f, resized
        return image, consistency_fn(render_big, x, 0, t, big, lcfg)[0]

    @torch.no_grad()
    def generate_ode(self, model, seeds, n_steps, lcfg, denoise=None):
        """A diagnostic, not the method: n_steps of the ODE with the consistency function as the denoiser. After a
        stage-0 run (r = 0, f fits the clean image at every t) this is plain diffusion sampling: the ceiling that
        1- and 2-step consistency samples of the same network can at best reach. denoise: another (x, t) -> D
        on the same noises (tools/autoguidance.py)."""
        dev, R = next(model.parameters()).device, self.resolution
        x = lcfg.t_max * per_image_noise(seeds, (3, R, R), dev)
        denoise = denoise or denoiser(model, lcfg, R, dev, render=True)
        return ode_sample(denoise, x, karras_times(n_steps, lcfg.t_max))

    def nfe(self, steps, lcfg):
        """Network evaluations per generated image (without the query skip f(x, t_mid) is the INR itself)."""
        return steps

    # --- what train.py shows, sample.py writes and fid.py scores ----------------------------------
    @torch.no_grad()
    def write_progress(self, model, test_set, lcfg, out_dir):
        """During training: 1- and 2-step sample grids and a reconstruction grid; returns ('psnr', test PSNR in dB)."""
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        x = to_float(test_set.get(range(min(64, len(test_set))))).to(dev)
        rec = self.reconstruct(model, x, lcfg)
        for steps in (1, 2):
            image, _ = self.generate(model, list(range(64)), steps, lcfg)
            save_grid(to_uint8(image), os.path.join(out_dir, f'samples_{steps}step.png'))
        save_grid(to_uint8(interleave(x, rec)), os.path.join(out_dir, 'reconstructions.png'), nrow=16)
        model.train(was_training)
        return 'psnr', psnr(rec, x).mean().item()

    @torch.no_grad()
    def reconstruct(self, model, x, lcfg):
        """encode -> render of clean images x in [-1, 1] on the training grid."""
        return model.inr.render(encode(model, x, lcfg), make_grid(self.resolution, self.resolution, x.device), 4096)

    @torch.no_grad()
    def evaluate_encoding(self, model, dataset, lcfg, limit=0, out_png=None, support_view=0, batch=64):
        """PSNR of encode -> render on a split (support_view: NeRF only); for data that renders at any resolution
        (shapes) also at 2x and 4x against the analytic images: the INR off its training grid."""
        dev = next(model.parameters()).device
        R = self.resolution
        n = min(limit or len(dataset), len(dataset))
        scales = (1, 2, 4) if getattr(dataset, 'any_resolution', False) else (1,)
        scores = {s: [] for s in scales}
        for i in tqdm(range(0, n, batch), desc='encoding', leave=False):
            idx = list(range(i, min(i + batch, n)))
            x = to_float(dataset.get(idx)).to(dev)
            beta = encode(model, x, lcfg)
            for s in scales:
                rec = model.inr.render(beta, make_grid(R * s, R * s, dev), 4096)
                ref = x if s == 1 else to_float(dataset.get(idx, resolution=R * s)).to(dev)
                scores[s].append(psnr(rec, ref).cpu())
                if out_png and i == 0 and s == 1:
                    save_grid(to_uint8(interleave(x[:32], rec[:32])), out_png, nrow=16)
        out = {'n_images': n, 'resolution': R, 'psnr': torch.cat(scores[1]).mean().item()}
        for s in scales[1:]:
            out[f'psnr_{s}x'] = torch.cat(scores[s]).mean().item()
        return out

    @torch.no_grad()
    def evaluate_denoising(self, model, dataset, lcfg, ts=(0.01, 0.0865, 0.3, 0.821, 2.0, 10.0, 80.0), limit=64,
                           seed=0, out_png=None):
        """PSNR of f(x + t z, t) against x on the first `limit` images, next to the noisy x + t z itself and the
        split's mean image: how well the consistency function denoises at each t. out_png: a grid of the first 8
        images, then per t a row of noisy inputs and a row of f (where the shapes are lost, not only how much)."""
        dev = next(model.parameters()).device
        x = to_float(dataset.get(range(min(limit, len(dataset))))).to(dev)
        denoise, g = denoiser(model, lcfg, self.resolution, dev), torch.Generator(device=dev).manual_seed(seed)
        mean = psnr(x.mean(0, keepdim=True).expand_as(x), x).mean().item()
        rows, picture = [], [x[:8]]
        for t_ in ts:
            x_t = x + t_ * torch.randn(x.shape, generator=g, device=dev)
            f = denoise(x_t, t_)  # the f that training fits
            rows.append({'t': t_, 'psnr_f': psnr(f, x).mean().item(), 'psnr_noisy': psnr(x_t, x).mean().item()})
            picture += [x_t[:8], f[:8]]
        if out_png:
            save_grid(to_uint8(torch.cat(picture)), out_png, nrow=len(picture[0]))
        return {'n_images': len(x), 'psnr_mean_image': mean, 'by_t': rows}

    def sample_arrays(self, model, dataset, lcfg, n, seed, steps, batch=256, resolution=0, ode=0):
        """n generated images (seed * 1_000_003 + i), uint8 (b, H, W, 3) batch by batch: what metrics score
        (dataset: unused, may be None). ode > 0: that many ODE steps instead (a diagnostic); resolution: render the INRs at that size."""
        how = f'{ode}-step ODE samples' if ode else f'{steps}-step samples'
        for i in tqdm(range(0, n, batch), desc=how):
            seeds = [seed * 1_000_003 + j for j in range(i, min(i + batch, n))]
            img = (self.generate_ode(model, seeds, ode, lcfg) if ode else
                   self.generate(model, seeds, steps, lcfg, resolution or None)[1])
            yield to_uint8(img).cpu().numpy()

    @torch.no_grad()
    def encoded_arrays(self, model, dataset, lcfg, n, batch=256):
        """encode -> render of the first n images of dataset, uint8 (b, H, W, 3) batch by batch: scored like samples,
        the ceiling the INR's own render sets on generation (fid.py --encoded)."""
        dev = next(model.parameters()).device
        for i in tqdm(range(0, min(n, len(dataset)), batch), desc='encoded images'):
            x = to_float(dataset.get(range(i, min(i + batch, n, len(dataset))))).to(dev)
            yield to_uint8(self.reconstruct(model, x, lcfg)).cpu().numpy()

    def reference_split(self, split):
        """(the split a metric's real side is drawn from, how the JSON names it): the one asked for."""
        return split, split

    def reference_arrays(self, dataset):
        """The real side of a metric: up to the dataset's reference_size images, uint8 (b, H, W, 3) chunks."""
        n = min(len(dataset), getattr(dataset, 'reference_size', len(dataset)))
        chunks = (dataset.get(range(i, min(i + 500, n))).numpy() for i in range(0, n, 500))
        return tqdm(chunks, total=-(-n // 500), desc='reference images')

    def write_samples(self, model, dataset, lcfg, out, n=64, seed=0, steps=1, resolution=0, npz='', batch=256, ode=0,
                      limit=0):
        """sample.py's default: a PNG grid of up to 256 of n samples (and all n as uint8 NHWC in npz; limit: NeRF)."""
        if ode and resolution not in (0, self.resolution):
            raise ValueError('--ode samples on the training grid; leave --resolution out')
        images = np.concatenate(list(self.sample_arrays(model, dataset, lcfg, n, seed, steps, batch, resolution, ode)))
        save_grid(images[:256], out)
        how = f'{ode}-step ODE' if ode else f'{steps}-step'
        print(f"wrote {out} ({min(n, 256)} of {n} samples at {images.shape[1]}x{images.shape[2]}, {how})")
        if npz:
            np.savez(npz, samples=images)
            print(f"wrote {npz}: samples {images.shape} uint8")


def keeping_beta(model, chunk=None):
    """model as consistency_fn's net, remembering the INR tokens of its last call (to render them elsewhere)."""
    def net(support, c_noise, query):
        net.beta = model.encode(support, c_noise, query)
        return model.inr.render(net.beta, query, chunk)
    return net


class AttentionINR(nn.Module):
    """ANR's function of coordinates, in any dimension: positional encoding -> Localised Attention Layer over the
    instance's INR tokens beta (B, K, width) -> ReLU MLP -> out_dim values. Only beta is per instance."""

    def __init__(self, width, depth, heads, tokens, pe_sigma, coord_dims, out_dim):
        super().__init__()
        if width % heads:
            raise ValueError(f"the INR's width {width} does not divide into {heads} attention heads; pick --inr_heads "
                             f"among the divisors of {width}")
        self.width, self.heads, self.pe_sigma = width, heads, pe_sigma
        self.num_freqs = max(1, width // (2 * coord_dims))  # images: width / 4, so the encoding is width wide
        self.tau = 0.384 / tokens
        self.to_q = nn.Linear(2 * coord_dims * self.num_freqs, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width)
        layers = []
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(width, out_dim))

    def heads_split(self, x):  # (B, N, width) -> (B, h, N, d)
        B, N, _ = x.shape
        return x.view(B, N, self.heads, -1).transpose(1, 2)

    def forward(self, beta, coords):
        """M_beta at coords (B or 1, P, coord_dims) -> (B, P, out_dim)."""
        B, P = beta.shape[0], coords.shape[1]
        pe = positional_encoding(coords, self.num_freqs, self.pe_sigma)              # (B|1, P, 2 dims freqs)
        q = self.heads_split(self.to_q(pe).expand(B, P, self.width))
        k, v = self.heads_split(self.to_k(beta)), self.heads_split(self.to_v(beta))
        h = localised_attention(q, k, v, self.tau).transpose(1, 2).reshape(B, P, self.width)
        return self.mlp(self.to_out(h))


class ImageINR(ImageModality, AttentionINR):
    """ANR image INR: M_beta(y, x) -> RGB; shared weights, per-instance INR tokens beta (B, K, width)."""

    def __init__(self, width=512, depth=5, heads=8, tokens=256, pe_sigma=32.0, resolution=32, patch=4):
        assert width % 4 == 0, f"INR width {width} must divide by 4"
        AttentionINR.__init__(self, width, depth, heads, tokens, pe_sigma, coord_dims=2, out_dim=3)
        self.resolution, self.patch = resolution, patch

    # --- observations -> tokens for the hyper-network -------------------------------------------
    def tokenize(self, images, query=None):
        return patchify(images, self.resolution, self.patch)

    def render(self, beta, coords, chunk=None):
        """Render beta at a coordinate grid (H, W, 2) or (B, H, W, 2) -> images (B, 3, H, W).

        chunk bounds the query points per pass so any resolution fits in memory; training passes
        chunk=None (one pass, autograd through everything).
        """
        B = beta.shape[0]
        H, W = coords.shape[-3], coords.shape[-2]
        flat = coords.reshape(-1, H * W, 2)
        chunk = chunk or H * W
        out = torch.cat([self(beta, flat[:, i:i + chunk]) for i in range(0, H * W, chunk)], dim=1)
        return out.transpose(1, 2).reshape(B, 3, H, W)


class PixelINR(ImageModality, nn.Module):
    """The pixel-space baseline (`--inr pixels`): each INR token is decoded to one patch of the training grid
    (DiT's final layer), so the same transformer, loss and loop are pixel-space ECT. Its "render" at another
    size is a bilinear resize of that grid: there is no continuous function behind it."""

    def __init__(self, token_dim=64, tokens=64, resolution=32, patch=4):
        super().__init__()
        k = math.isqrt(tokens)
        if k * k != tokens or resolution % k:
            raise ValueError(f"the pixel head needs a square token grid dividing the resolution, got {tokens} tokens "
                             f"at {resolution}^2")
        self.resolution, self.patch, self.grid, self.cell = resolution, patch, k, resolution // k
        self.norm = nn.LayerNorm(token_dim)
        self.out = nn.Linear(token_dim, 3 * self.cell ** 2)

    def tokenize(self, images, query=None):
        return patchify(images, self.resolution, self.patch)

    def render(self, beta, coords, chunk=None):
        """beta (B, K, token_dim) -> (B, 3, H, W), H, W the grid's size (coordinates' jitter is ignored)."""
        B, k, c = beta.shape[0], self.grid, self.cell
        x = self.out(self.norm(beta)).view(B, k, k, 3, c, c).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, k * c, k * c)
        H, W = coords.shape[-3], coords.shape[-2]
        if (H, W) == (self.resolution, self.resolution):
            return x
        return torch.nn.functional.interpolate(x, size=(H, W), mode='bilinear', align_corners=False,
                                               antialias=H < self.resolution)


def to_float(images_uint8):
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], the data space of the model."""
    return images_uint8.permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


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


def interleave(a, b):
    """[a0, b0, a1, b1, ...]: input next to its reconstruction."""
    return torch.stack([a, b], dim=1).flatten(0, 1)


def psnr(a, b):
    """Per-image PSNR in dB of two [-1, 1] image batches, measured on [0, 1] RGB."""
    mse = (((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp(min=1e-10))

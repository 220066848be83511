"""The image INR M_beta (ANR, Zhang et al. 2024) and its coordinate grids.

M_beta(x) = MLP(LAL(PE(x), beta)): a coordinate x in (-1, 1)^2 is positionally encoded, attends to the
instance's INR tokens beta through the Localised Attention Layer, and a ReLU MLP maps the result to RGB
in [-1, 1]. Only beta is per instance; every weight here is shared. Coordinates are (row, col) = (y, x).
"""
import math

import torch
import torch.nn as nn


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


class ImageINR(nn.Module):
    """ANR image INR: shared weights; per-instance INR tokens beta (B, K, width) select what is drawn."""

    def __init__(self, width=512, depth=5, heads=8, tokens=256, pe_sigma=32.0, resolution=32, patch=4):
        super().__init__()
        assert width % 4 == 0 and width % heads == 0, f"INR width {width} must divide by 4 and by heads={heads}"
        self.width, self.heads, self.pe_sigma = width, heads, pe_sigma
        self.resolution, self.patch = resolution, patch
        self.tau = 0.384 / tokens
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.Linear(width, width)
        layers = []
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 3))

    # --- observations -> tokens for the hyper-network -------------------------------------------
    def tokenize(self, images, query=None):
        return patchify(images, self.resolution, self.patch)

    # --- the INR function M_beta -----------------------------------------------------------------
    def heads_split(self, x):  # (B, N, width) -> (B, h, N, d)
        B, N, _ = x.shape
        return x.view(B, N, self.heads, -1).transpose(1, 2)

    def forward(self, beta, coords):
        """M_beta at coords (B or 1, P, 2) -> RGB (B, P, 3)."""
        B, P = beta.shape[0], coords.shape[1]
        pe = positional_encoding(coords, self.width // 4, self.pe_sigma)             # (B|1, P, width)
        q = self.heads_split(self.to_q(pe).expand(B, P, self.width))
        k, v = self.heads_split(self.to_k(beta)), self.heads_split(self.to_v(beta))
        h = localised_attention(q, k, v, self.tau).transpose(1, 2).reshape(B, P, self.width)
        return self.mlp(self.to_out(h))

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


class PixelINR(nn.Module):
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


def psnr(a, b):
    """Per-image PSNR in dB of two [-1, 1] image batches, measured on [0, 1] RGB."""
    mse = (((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp(min=1e-10))

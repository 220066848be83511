"""The INRCT hyper-network G(O_s_t, t) -> beta (paper Eq. 6, App. B.2, Fig. 5).

Signal encoder: observation tokens -> linear embed + fixed 2D sin-cos table -> N DiT adaLN-Zero blocks.
INR decoder: M blocks over learnable INR-token queries plus the encoder features at their grid place, scaled
by the signal share of the input (self-attn, cross-attn to the encoder, FF),
then LN -> Linear -> beta = w * x + b (ANR's direct-token head).
The encoder only sees a sequence of tokens, so images (RGB patches) and NeRF support views
(patches of [rgb, ray origin, ray direction]) share every line of this file.
"""
import math
from dataclasses import dataclass

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from inr import ImageINR, PixelINR
from nerf import NeRFINR
from occupancy import OccupancyINR


@dataclass
class HyperConfig:
    token_dim: int = 48        # channels of one observation token (3 * patch^2 for RGB images)
    grid: int = 8              # observation tokens form a grid x grid table (patches per side)
    patch: int = 4             # pixels per patch side (the conv stem puts tokens back on their pixel grid)
    grid_dims: int = 2         # 2: an image's patch grid; 3: a voxel grid's (grid^3 tokens, 3D position table)
    dim: int = 768             # D, attention width of encoder and decoder
    ff_dim: int = 3072         # feed-forward width
    heads: int = 12
    enc_depth: int = 8         # N signal-encoder blocks
    dec_depth: int = 6         # M INR-decoder blocks
    inr_tokens: int = 256      # number of INR tokens in beta
    inr_token_dim: int = 512   # width of one INR token
    dropout: float = 0.0
    local_gate: float = 1.0    # the local query start is scaled by the input's signal share to this power; 0: unscaled
    sigma_data: float = 0.5    # the data scale that signal fraction uses (train.py's sigma_data)
    time_embed: str = 'positional'  # 'positional' (EDM: sinusoids of c_noise) | 'fourier' (iCT: random frequencies)
    time_scale: float = 1.0    # positional: c_noise is multiplied by this; fourier: std of the frequencies (rad per unit c_noise)
    conv_stem: int = 0         # channels of a full-resolution conv stem added to the linear patch embedding; 0: off
    token_conv: int = 0        # kernel of a depthwise conv over the token grid inside every feed-forward; 0: off


# Named presets (paper App. B.2). 'inr' keys configure inr.ImageINR; 'patch' sets token_dim and grid.
INRCT_models = {
    # Paper size for CelebA-HQ 64^2 / CIFAR-10 32^2: D=768, FF 3072, N=8, M=6, 256 x 512 tokens, ANR 5 x 512.
    'paper': dict(dim=768, ff_dim=3072, heads=12, enc_depth=8, dec_depth=6, inr_tokens=256,
                  inr_token_dim=512, inr_width=512, inr_depth=5, inr_heads=8, nerf_depth=6, nerf_width=256,
                  nerf_groups=32),
    # A small model that trains on 2 CPU cores in minutes (the offline default).
    'tiny': dict(dim=128, ff_dim=512, heads=4, enc_depth=3, dec_depth=2, inr_tokens=64,
                 inr_token_dim=64, inr_width=64, inr_depth=5, inr_heads=2, nerf_depth=4, nerf_width=64,
                 nerf_groups=8),
    # Wider and deeper than tiny (about 3x its CPU time per step): the denoiser's capacity on CPU.
    'mini': dict(dim=192, ff_dim=768, heads=6, enc_depth=4, dec_depth=3, inr_tokens=64,
                 inr_token_dim=96, inr_width=96, inr_depth=5, inr_heads=2, nerf_depth=4, nerf_width=96,
                 nerf_groups=8),
    # Something in between, for quick GPU experiments.
    'small': dict(dim=384, ff_dim=1536, heads=6, enc_depth=6, dec_depth=4, inr_tokens=128,
                  inr_token_dim=256, inr_width=256, inr_depth=5, inr_heads=4, nerf_depth=6, nerf_width=128,
                  nerf_groups=16),
}


def sincos_2d_table(dim, grid):
    """Fixed 2D sin-cos position table (grid*grid, dim), half the channels for each axis (MAE/DiT form)."""
    assert dim % 4 == 0, f"position table needs dim divisible by 4, got {dim}"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing='ij')
    parts = []
    for pos in (ys.flatten(), xs.flatten()):
        angle = pos[:, None] * omega[None]
        parts += [torch.sin(angle), torch.cos(angle)]
    return torch.cat(parts, dim=1).float()  # (grid*grid, dim)


class TimeEmbedder(nn.Module):
    """c_noise -> (B, D): [cos, sin](c_noise * frequencies), then an MLP (DiT's TimestepEmbedder).

    'positional' (EDM, ECT): frequencies scale * 10000^(-k/half), k = 0..half-1. c_noise = ln(t)/4 spans about
    [-1.5, 1.1], so at scale 1 the top feature turns 2.6 radians over the whole noise range and f can be smooth
    in t, which consistency training needs (iCT). Scale 1000 is DiT's ladder for integer steps 0..1000: its
    features oscillate many times between neighbouring t. 'fourier' (iCT): fixed random frequencies ~ N(0, scale^2).
    """

    def __init__(self, dim, freq_dim=256, kind='positional', scale=1.0):
        super().__init__()
        half = freq_dim // 2
        if kind == 'positional':
            freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
        elif kind == 'fourier':  # the same in every run (seed 0), so checkpoints need not carry them
            freqs = torch.randn(half, generator=torch.Generator().manual_seed(0))
        else:
            raise ValueError(f"time_embed must be 'positional' or 'fourier', got {kind!r}")
        self.scale = scale
        self.register_buffer('freqs', freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise):
        args = self.scale * c_noise.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class ConvStem(nn.Module):
    """Observation tokens back on their pixel grid -> 3x3 convolutions at full resolution (two residual blocks,
    FiLM on the time embedding) -> a patch-size stride conv to D: (B, L, D), added to the linear patch embedding.

    A linear patch embedding sees each p x p patch in one matrix product; these convolutions look across patch
    borders at every pixel, as a conv denoiser does. Its last conv starts at zero, so an untrained stem changes
    nothing. 2D token grids only (images, NeRF views): tokens must be patchify's layout, C * p * p channels.
    """

    def __init__(self, token_dim, grid, patch, width, dim):
        super().__init__()
        self.grid, self.patch, self.channels = grid, patch, token_dim // patch ** 2
        assert self.channels * patch ** 2 == token_dim, f"token dim {token_dim} is not C * {patch}^2"
        self.conv_in = nn.Conv2d(self.channels, width, 3, padding=1)
        self.norms = nn.ModuleList(nn.GroupNorm(min(8, width), width) for _ in range(4))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(4))
        self.films = nn.ModuleList(nn.Linear(dim, 2 * width) for _ in range(2))
        self.out = nn.Conv2d(width, dim, patch, stride=patch)

    def forward(self, tokens, c):  # tokens (B, L, C p^2), c (B, D)
        B, L, _ = tokens.shape
        g, p, C = self.grid, self.patch, self.channels
        views = L // g ** 2
        x = tokens.reshape(B * views, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B * views, C, g * p, g * p)
        h = self.conv_in(x)
        c = c.repeat_interleave(views, dim=0)
        for i, film in enumerate(self.films):
            scale, shift = film(F.silu(c))[:, :, None, None].chunk(2, dim=1)
            r = self.convs[2 * i](F.silu(self.norms[2 * i](h)))
            r = self.convs[2 * i + 1](F.silu(self.norms[2 * i + 1](r) * (1 + scale) + shift))
            h = h + r
        return self.out(h).flatten(2).transpose(1, 2).reshape(B, L, -1)


class Attention(nn.Module):
    """Multi-head attention through F.scaled_dot_product_attention; self- or cross-attention."""

    def __init__(self, dim, heads, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context=None):
        context = x if context is None else context
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)          # (B, h, N, d)
        k, v = self.kv(context).view(B, -1, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)                      # (B, h, N, d)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


def inr_grid_side(cfg):
    """The side of the grid the INR tokens lie on (K = side^dims), or 0 when their count is no such power."""
    side = round(cfg.inr_tokens ** (1 / cfg.grid_dims))
    return side if side ** cfg.grid_dims == cfg.inr_tokens else 0


class TokenConv(nn.Module):
    """A depthwise k^n conv over tokens laid out as views of a side^n grid (B, views * side^n, C) -> same shape.

    Attention has to learn that neighbouring patches belong together; a conv over the token grid has it built in,
    as in a U-Net. Zero at init, so a model with it starts as the one without.
    """

    def __init__(self, channels, side, dims, kernel):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"token_conv kernel {kernel} is even: an odd one (3, 5, ...) keeps the token grid's size")
        self.side, self.dims = side, dims
        self.conv = getattr(nn, f'Conv{dims}d')(channels, channels, kernel, padding=kernel // 2, groups=channels)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h):
        B, L, C = h.shape
        g = h.reshape(-1, *[self.side] * self.dims, C).movedim(-1, 1)               # (B * views, C, side, ...)
        return self.conv(g).movedim(1, -1).reshape(B, L, C)


class FeedForward(nn.Module):
    """Linear, GELU, Linear; with `conv` (a TokenConv over the hidden units) a locally mixing feed-forward."""

    def __init__(self, dim, ff_dim, dropout=0.0, conv=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(approximate='tanh'),
                                 nn.Dropout(dropout), nn.Linear(ff_dim, dim))
        self.conv = conv

    def forward(self, x):
        if self.conv is None:
            return self.net(x)
        h = self.net[1](self.net[0](x))  # the Sequential's layers by index: checkpoints keep their names
        return self.net[3](self.net[2](h + self.conv(h)))


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class EncoderBlock(nn.Module):
    """DiT adaLN-Zero block: shift/scale/gate for attention and FF from SiLU->Linear(D, 6D) of c."""

    def __init__(self, cfg):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        conv = TokenConv(cfg.ff_dim, cfg.grid, cfg.grid_dims, cfg.token_conv) if cfg.token_conv else None
        self.ff = FeedForward(cfg.dim, cfg.ff_dim, cfg.dropout, conv)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x, c):  # x (B, L, D), c (B, D)
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2[:, None] * self.ff(modulate(self.norm2(x), sh2, sc2))


class DecoderBlock(nn.Module):
    """ANR-style INR decoder block: pre-norm self-attn, cross-attn to the encoder, FF.

    Time enters as a per-block additive shift of the INR tokens (Linear of SiLU(c)); a full adaLN
    here would add 6 * 3.5M parameters to the paper preset and overshoot its 145.5M.
    """

    def __init__(self, cfg):
        super().__init__()
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.dim) for _ in range(3))
        self.self_attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.cross_attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        side = inr_grid_side(cfg)
        conv = TokenConv(cfg.ff_dim, side, cfg.grid_dims, cfg.token_conv) if cfg.token_conv and side else None
        self.ff = FeedForward(cfg.dim, cfg.ff_dim, cfg.dropout, conv)

    def forward(self, x, memory, c):  # x (B, K, D), memory (B, L, D), c (B, D)
        x = x + self.time(c)[:, None]
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.ff(self.norm3(x))


def sincos_3d_table(dim, grid):
    """Fixed 3D sin-cos position table (grid^3, dim): a third of the channels (rounded down to even) per axis,
    x-major as the voxel patches; the rest zero."""
    per = dim // 6
    omega = 1.0 / 10000 ** (torch.arange(per, dtype=torch.float64) / max(per, 1))
    axes = torch.meshgrid(*[torch.arange(grid, dtype=torch.float64)] * 3, indexing='ij')
    parts = []
    for pos in axes:
        angle = pos.flatten()[:, None] * omega[None]
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1)
    return torch.cat([table, torch.zeros(len(table), dim - table.shape[1], dtype=torch.float64)], 1).float()


class HyperNetwork(nn.Module):
    """G(O_s_t, t) -> beta: observation tokens (B, L, token_dim) and c_noise (B,) -> (B, K, token width)."""

    def __init__(self, cfg: HyperConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.token_dim, cfg.dim)
        table = sincos_3d_table if cfg.grid_dims == 3 else sincos_2d_table
        self.register_buffer('pos', table(cfg.dim, cfg.grid), persistent=False)
        self.time = TimeEmbedder(cfg.dim, kind=cfg.time_embed, scale=cfg.time_scale)
        if cfg.conv_stem and cfg.grid_dims != 2:
            raise ValueError("conv_stem works on 2D token grids (images, NeRF views); set --conv_stem 0 for voxels")
        self.stem = ConvStem(cfg.token_dim, cfg.grid, cfg.patch, cfg.conv_stem, cfg.dim) if cfg.conv_stem else None
        self.encoder = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.enc_depth))
        self.queries = nn.Parameter(torch.zeros(cfg.inr_tokens, cfg.dim))
        self.decoder = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_depth))
        self.head_norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.inr_token_dim)
        # beta = w * x + b: w starts at 1, b is a learned per-token "position" (ANR's direct tokens)
        self.token_w = nn.Parameter(torch.ones(cfg.inr_tokens, cfg.inr_token_dim))
        self.token_b = nn.Parameter(torch.zeros(cfg.inr_tokens, cfg.inr_token_dim))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time.mlp[2].weight, std=0.02)
        for block in self.encoder:  # adaLN-Zero: every encoder block starts as the identity
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        if self.stem is not None:  # starts as no change to the patch embedding
            nn.init.zeros_(self.stem.out.weight)
            nn.init.zeros_(self.stem.out.bias)
        nn.init.normal_(self.queries, std=0.02)
        nn.init.normal_(self.token_b, std=1.0)

    def local_features(self, x):
        """Encoder features of the first view resampled onto the INR-token grid (sqrt(K) x sqrt(K)).

        Each INR token's query starts from what the encoder saw at "its" place, so cross-attention
        starts local (without it the decoder first learns only the mean colour: docs/design-notes.md).
        Non-square K falls back to learned queries.
        """
        g, n, k = self.cfg.grid, self.cfg.grid_dims, inr_grid_side(self.cfg)
        if not k:
            return 0.0
        f = x[:, :g ** n].transpose(1, 2).reshape(x.shape[0], -1, *[g] * n)          # (B, D, g, g[, g])
        if n == 3:  # a voxel grid: trilinear (F.interpolate has no antialias in 3D; k <= g averages instead)
            f = F.adaptive_avg_pool3d(f, k) if k <= g else F.interpolate(f, size=(k,) * 3, mode='trilinear')
        else:
            f = F.interpolate(f, size=(k, k), mode='bilinear', align_corners=False, antialias=k < g)
        return f.flatten(2).transpose(1, 2)                                         # (B, K, D)

    def local_gate(self, c_noise):
        """(sigma_data^2 / (t^2 + sigma_data^2)) ** local_gate, the share of c_in(t) O_t's variance that is signal
        raised to a power (0: ones, no gate): (B, 1, 1).

        The encoder's residual stream carries embed(c_in O_t) to its output whatever t is (adaLN-Zero only gates
        the branches), and local_features copies it into the INR tokens, so at t = 80 the noise itself was drawn
        (1-step samples were coloured noise). The gate is ~1 where training encodes (t < 0.0865) and ~0 at t = 80,
        where beta comes from the queries and cross-attention alone, as in the paper. Power 1 also damps the local
        start at mid t (0.2 at t = 1), where the shapes are still plain in the input; 0.5 damps it less there.
        """
        t = torch.exp(4 * c_noise)  # c_noise = ln(t) / 4 (EDM), the network's noise-level input
        share = self.cfg.sigma_data ** 2 / (t ** 2 + self.cfg.sigma_data ** 2)
        return (share ** float(self.cfg.local_gate))[:, None, None]

    def forward(self, tokens, c_noise):
        L = tokens.shape[1]
        assert L % self.pos.shape[0] == 0, (
            f"got {L} observation tokens but the model was built for {self.pos.shape[0]} per view "
            f"(grid {self.cfg.grid}, {self.cfg.grid_dims}D); rebuild with the matching resolution/patch size")
        c = self.time(c_noise)                                              # (B, D)
        x = self.embed(tokens) + self.pos.repeat(L // self.pos.shape[0], 1)  # (B, L, D), views share the table
        if self.stem is not None:
            x = x + self.stem(tokens, c)
        for block in self.encoder:
            x = block(x, c)
        q = self.queries + self.local_gate(c_noise) * self.local_features(x)  # (B, K, D)
        for block in self.decoder:
            q = block(q, x, c)
        return self.token_w * self.head(self.head_norm(q)) + self.token_b   # (B, K, inr_token_dim)


def count_params(module):
    return sum(p.numel() for p in module.parameters())


class INRCT(nn.Module):
    """Hyper-network + INR function: support observations at c_noise -> raw render at the query."""

    def __init__(self, hyper, inr):
        super().__init__()
        self.hyper, self.inr = hyper, inr

    def encode(self, support, c_noise, query=None):
        """beta = G(support, t) (Eq. 6); support already scaled by c_in(t); query carries NeRF support rays."""
        return self.hyper(self.inr.tokenize(support, query), c_noise)

    def forward(self, support, c_noise, query, chunk=None):
        return self.inr.render(self.encode(support, c_noise, query), query, chunk)


MODALITIES = ('image', 'nerf', 'occupancy')  # what build_model can build; each INR answers inr.Modality's methods


def build_model(preset='tiny', resolution=32, patch=4, pe_sigma=32.0, dropout=0.0, modality='image',
                near=0.8, far=1.8, n_samples=64, local_gate=1.0, sigma_data=0.5, time_embed='positional',
                time_scale=1.0, inr='anr', inr_tokens=0, conv_stem=0, inr_heads=0, token_conv=0):
    """The INRCT model for a named preset at a training resolution; modality 'image' (inr 'anr' or 'pixels'), 'nerf'
    or 'occupancy' (resolution^3 voxel grids, patch^3 tokens). inr_tokens / inr_heads > 0 replace the preset's token
    count / the INR's attention heads."""
    if preset not in INRCT_models:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(INRCT_models)}")
    if resolution % patch:
        raise ValueError(f"resolution {resolution} is not a multiple of patch {patch}")
    p = {**INRCT_models[preset], **({'inr_tokens': inr_tokens} if inr_tokens else {}),
         **({'inr_heads': inr_heads} if inr_heads else {})}
    if modality == 'image' and inr == 'pixels':
        inr = PixelINR(token_dim=p['inr_token_dim'], tokens=p['inr_tokens'], resolution=resolution, patch=patch)
        token_dim, tokens = 3 * patch * patch, p['inr_tokens']
    elif modality == 'image':
        if inr != 'anr':
            raise ValueError(f"unknown image INR {inr!r}; choose 'anr' or 'pixels'")
        assert p['inr_token_dim'] == p['inr_width'], "ANR attends with INR tokens as keys: token dim = INR width"
        inr = ImageINR(width=p['inr_width'], depth=p['inr_depth'], heads=p['inr_heads'], tokens=p['inr_tokens'],
                       pe_sigma=pe_sigma, resolution=resolution, patch=patch)
        token_dim, tokens = 3 * patch * patch, p['inr_tokens']
    elif modality == 'nerf':
        inr = NeRFINR(depth=p['nerf_depth'], width=p['nerf_width'], token_dim=p['inr_token_dim'],
                      groups=p['nerf_groups'], resolution=resolution, patch=patch, near=near, far=far,
                      n_samples=n_samples)
        token_dim, tokens = 9 * patch * patch, inr.num_tokens
    elif modality == 'occupancy':
        inr = OccupancyINR(width=p['inr_width'], depth=p['inr_depth'], heads=p['inr_heads'], tokens=p['inr_tokens'],
                           pe_sigma=pe_sigma, resolution=resolution, patch=patch)
        token_dim, tokens = patch ** 3, p['inr_tokens']
    else:
        raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    hyper = HyperNetwork(HyperConfig(
        token_dim=token_dim, grid=resolution // patch, grid_dims=3 if modality == 'occupancy' else 2, dim=p['dim'], ff_dim=p['ff_dim'], heads=p['heads'],
        enc_depth=p['enc_depth'], dec_depth=p['dec_depth'], inr_tokens=tokens, inr_token_dim=p['inr_token_dim'],
        dropout=dropout, local_gate=local_gate, sigma_data=sigma_data, time_embed=time_embed, time_scale=time_scale,
        conv_stem=conv_stem, patch=patch, token_conv=token_conv))
    return INRCT(hyper, inr)


# --- checkpoints: self-describing, so sampling and metrics never need the training script ---------------------
def save_checkpoint(obj, path):
    """Write to a temporary file, fsync, then rename: a crash mid-write never replaces the good file."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path):
    """A train.py checkpoint as a dict of plain tensors and values (weights_only: loading runs no code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}; train one first (python train.py) or fix --out_dir/--ckpt")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]}); pass the ckpt.pt "
                         f"that train.py writes") from None
    if not isinstance(ckpt, dict) or 'config' not in ckpt:
        raise ValueError(f"{path} is a torch file but not a train.py checkpoint (no 'config' entry)")
    return ckpt


def load(path, weights='ema', device='cpu'):
    """(model in eval mode with the chosen weights, checkpoint dict) rebuilt from the checkpoint alone.

    ckpt['model_args'] are build_model's arguments, ckpt['loss'] the LossConfig fields, ckpt['config'] the
    whole training config (dataset, data_dir, split, ...)."""
    ckpt = read_checkpoint(path)
    if 'model_args' not in ckpt:
        raise ValueError(f"{path} was written before checkpoints carried their model and loss settings; convert it "
                         f"once with: python train.py --upgrade_checkpoint {path}")
    model = build_model(**ckpt['model_args'])
    if weights == 'ema' and ckpt['step'] <= ckpt['config']['warmup_iters']:
        weights = 'model'  # the EMA starts when warm-up ends: before that it is the initial weights
    bad = [k for k, v in ckpt[weights].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path}: the {weights} weights hold non-finite values ({', '.join(bad[:3])}); the run "
                         f"diverged before this checkpoint was written. Use an earlier checkpoint")
    model.load_state_dict(ckpt[weights])
    return model.to(device).eval(), ckpt


def pick_device(name='auto', index=0):
    """'auto' -> the GPU when there is one, else the CPU; 'cpu' / 'cuda' as given."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"--device cuda: no CUDA device is visible (torch {torch.__version__}); use cpu or auto")
    return torch.device(f'cuda:{index}' if name == 'cuda' else name)


if __name__ == '__main__':
    # python model.py: parameter count of every preset at its usual resolution
    for name, res, patch, mod in [('paper', 64, 4, 'image'), ('paper', 32, 4, 'image'), ('paper', 128, 8, 'nerf'),
                                  ('small', 64, 4, 'image'), ('mini', 32, 4, 'image'), ('tiny', 32, 4, 'image'), ('tiny', 32, 4, 'nerf')]:
        m = build_model(name, res, patch, modality=mod)
        print(f"{name:6s} {mod:5s} {res:3d}^2 patch {patch}: {count_params(m) / 1e6:8.2f}M parameters "
              f"(hyper-network {count_params(m.hyper) / 1e6:.2f}M, INR {count_params(m.inr) / 1e6:.2f}M)")

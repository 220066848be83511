"""Metrics: FID, Inception Score, precision/recall/F1 (k-NN manifolds), with pytorch-fid's InceptionV3.

    python fid.py --ckpt out/ckpt.pt --n 50000 --steps 2 --inception pt_inception-2015-12-05-6726825d.pth
    python fid.py --ckpt out/ckpt.pt --n 2000 --features pixels          # offline sanity check, no weights
    python fid.py samples.npz reference.npz                              # two sample sets / cached stats
    python fid.py --ckpt out3d/ckpt.pt --features pixels                 # NeRF: the mNIF protocol (below)

NeRF checkpoints (mNIF protocol): one object generated per test scene, rendered at all of that
scene's poses, against every view of every test scene (SRN Cars: 704 x 251 images on each side).

InceptionV3 below has exactly the state-dict of the FID Inception weights file that pytorch-fid loads
(pt_inception-2015-12-05-6726825d.pth: the TF 2015 Inception graph ported to PyTorch), so it loads it
unchanged and gives the same features; tests/test_fid.py proves it on the recipe-weight test vectors.
"""
import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from data import cache_root, files_fingerprint, load_split, render_shapes, shape_params
from losses import LossConfig, with_t_mid
from model import load, pick_device

FID_WEIGHTS = 'pt_inception-2015-12-05-6726825d.pth'
FID_WEIGHTS_SOURCE = ('the pytorch-fid GitHub release "fid_weights_init" (mseitzer/pytorch-fid), '
                      'a port of the TF Inception graph 2015-12-05')


# --- the network (torchvision's Inception3 with pytorch-fid's FID-specific blocks) ---------------------------
class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_pool(x):
    # the TF graph averages over valid pixels only at the border
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f'branch7x7dbl_{i}')(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f'branch7x7x3_{i}')(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """pool='avg' is Mixed_7b; the TF graph's Mixed_7c uses a max-pool in its pool branch."""

    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = avg_pool(x) if self.pool == 'avg' else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """FID InceptionV3: float RGB in [0, 1], (N, 3, H, W), any size -> (pool3 (N, 2048), logits (N, 1008))."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, 'avg')
        self.Mixed_7c = InceptionE(2048, 'max')
        self.fc = nn.Linear(2048, 1008)
        self.eval()

    def forward(self, x):
        # pytorch-fid: bilinear resize to 299 (no antialias, align_corners=False), then [0, 1] -> [-1, 1]
        x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ('5b', '5c', '5d', '6a', '6b', '6c', '6d', '6e', '7a', '7b', '7c'):
            x = getattr(self, f'Mixed_{name}')(x)
        pool3 = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool3, self.fc(pool3)


def inception_path(path=''):
    """--inception PATH, else the torch hub cache file pytorch-fid downloads to."""
    if path:
        candidates = [path]
    else:
        candidates = [os.path.join(torch.hub.get_dir(), 'checkpoints', FID_WEIGHTS)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(
        f"FID Inception weights not found at {candidates[0]}. Get {FID_WEIGHTS} from {FID_WEIGHTS_SOURCE} and pass "
        f"--inception PATH or put it at {os.path.join(torch.hub.get_dir(), 'checkpoints', FID_WEIGHTS)} "
        f"(this code never downloads it). Without it, --features pixels gives offline, non-comparable numbers.")


def load_inception(path='', device='cpu'):
    net = InceptionV3()
    path = inception_path(path)
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a PyTorch file ({type(e).__name__}: {str(e)[:200]}); pass the "
                         f"{FID_WEIGHTS} state dict with --inception") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    # old-format files carry no BatchNorm num_batches_tracked counters; they are unused in eval mode
    if unexpected or any(not k.endswith('num_batches_tracked') for k in missing):
        raise ValueError(f"{path} is not the FID Inception state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.to(device).eval()


# --- shape features: a metric for the embedded `shapes` default that can tell shapes from blobs ----------------
SHAPE_SEED = 20_261_201     # the images the shape network learns from and is validated on: not a dataset split
SHAPE_KINDS = ('disc', 'square', 'triangle', 'ring')
SHAPE_NET = 'shape_features_v2'  # the cache's name: v2 is trained on one thread (v1 on all of them)
# train_shape_net's output, shipped: even on one thread its training differs between CPUs of one kind, enough to move
# recall, and figures compare only when scored by one net
SHIPPED_SHAPE_NET = Path(__file__).resolve().parent / 'assets' / f'{SHAPE_NET}.pt'


class ShapeFeatureNet(nn.Module):
    """32x32 RGB in [0, 1] -> 128-d features, trained to count each kind of primitive (0-3 of each).

    Pixel features see colour and layout; these must know a square from a disc from a blob. The features are
    the last conv layer pooled over the image (mean and max), so they say what is drawn, not where."""

    def __init__(self, width=16):
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 4 * width):  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.conv = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, 4 * len(SHAPE_KINDS))   # per kind: logits of a count 0, 1, 2, 3

    def forward(self, x):
        if x.shape[-1] != 32:  # samples rendered at another size are judged at the size the net knows
            x = F.interpolate(x, size=(32, 32), mode='bilinear', align_corners=False, antialias=True)
        h = self.conv(x)                                       # (B, 4 width, 4, 4)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)  # (B, 8 width)


def shape_counts(seed, indices):
    """How many primitives of each kind the `shapes` images (seed, index) hold: (N, 4) int64."""
    return torch.tensor([[sum(s['kind'] == k for s in shape_params(seed, int(i))[2]) for k in SHAPE_KINDS]
                         for i in indices])


def train_shape_net(n_images=12000, iters=1500, batch=64, seed=SHAPE_SEED):
    """Deterministic training of ShapeFeatureNet on analytic `shapes` images (two CPU minutes or so).

    On one thread: with more, the sums run in another order per thread count and the nets differ enough to move
    recall (a U-Net's samples scored 0.47 with a net trained on one thread, 0.63 with one trained on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_shape_net(n_images, iters, batch, seed)
    finally:
        torch.set_num_threads(threads)


def _train_shape_net(n_images, iters, batch, seed):
    torch.manual_seed(0)
    images = np.stack([render_shapes(seed, i, 32) for i in tqdm(range(n_images), desc='shape-net images')])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = shape_counts(seed, range(n_images))
    net = ShapeFeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in tqdm(range(iters), desc='training the shape net'):
        idx = torch.randint(0, n_images, (batch,), generator=g)
        logits = net.head(net(x[idx])).view(-1, len(SHAPE_KINDS), 4)
        loss = F.cross_entropy(logits.reshape(-1, 4), y[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def load_shape_net(cache_dir='', device='cpu'):
    """The shape-feature network: the shipped weights (assets/), else trained on first use and cached (cache_dir or
    ~/.cache/inrct)."""
    path = SHIPPED_SHAPE_NET if SHIPPED_SHAPE_NET.is_file() else cache_root(cache_dir) / f'{SHAPE_NET}.pt'
    net = ShapeFeatureNet()
    if path.is_file():
        net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
    else:
        print(f"training the shape-feature network once (cached at {path})")
        net = train_shape_net()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = f'{path}.tmp{os.getpid()}'
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
    return net.to(device).eval()


def shape_reference_sets(n=500, seed=SHAPE_SEED, offset=1_000_000):
    """Labelled image sets (uint8 NHWC, 32^2) that a shape metric must rank: {'real': the reference, then
    'real (other images)', 'blurred 1 px', 'blurred 2 px', 'blobs', 'mean image', 'noise'}, best to worst; then the
    other images under a faint grain (Gaussian, 2.5 and 5 of 255 levels), which a person barely sees."""
    real = np.stack([render_shapes(seed, offset + i, 32) for i in range(n)])
    other_idx = range(offset + n, offset + 2 * n)
    other = np.stack([render_shapes(seed, i, 32) for i in other_idx])

    def blur(s):
        return np.stack([gaussian_filter(im.astype(np.float64), (s, s, 0)) for im in other]).round().astype(np.uint8)
    def grain(s):
        noisy = other + np.random.default_rng(1).normal(0.0, s, other.shape)
        return noisy.round().clip(0, 255).astype(np.uint8)
    mean = np.repeat(real.mean(0, keepdims=True).round().astype(np.uint8), n, 0)
    noise = np.random.default_rng(0).integers(0, 256, other.shape, dtype=np.uint8)
    return {'real': real, 'real (other images)': other, 'blurred 1 px': blur(1.0), 'blurred 2 px': blur(2.0),
            'blobs': np.stack([render_shapes(seed, i, 32, blobs=True) for i in other_idx]),
            'mean image': mean, 'noise': noise, 'grain 2.5/255': grain(2.5), 'grain 5/255': grain(5.0)}


def validate_shape_metric(extractor, n=500):
    """FD, precision and recall of every reference set against 'real', in the order they should rank."""
    sets = shape_reference_sets(n)
    real, _ = features_of(sets.pop('real'), extractor)
    mu, sigma = statistics(real)
    rows = {}
    for name, images in sets.items():
        f, _ = features_of(images, extractor)
        rows[name] = evaluate(f, None, mu, sigma, real, extractor.kind)
    return rows


# --- features ----------------------------------------------------------------------------------------
class Features:
    """uint8 NHWC batches -> (features, logits or None): 'inception' (pool3), 'pixels' (offline check) or
    'shapes' (ShapeFeatureNet, for the embedded default)."""

    def __init__(self, kind='inception', inception='', device='cpu', cache_dir='', shape_net=None):
        """shape_net: a ShapeFeatureNet to use instead of the cached one (kind 'shapes')."""
        self.kind, self.device = kind, torch.device(device)
        if kind == 'shapes':
            self.net = (shape_net or load_shape_net(cache_dir)).to(self.device).eval()
            self.fingerprint = weights_hash(self.net)  # a cache made with another net is never reused
        elif kind == 'inception':
            self.net = load_inception(inception, self.device)
            w = os.stat(inception_path(inception))
            self.fingerprint = f'{FID_WEIGHTS}|{w.st_size}|{w.st_mtime_ns}'
        else:
            self.net, self.fingerprint = None, 'pixels16'

    @torch.no_grad()
    def __call__(self, images_uint8):
        x = torch.as_tensor(images_uint8).to(self.device).permute(0, 3, 1, 2).float() / 255
        if self.kind == 'pixels':  # 16x16 box-downsampled RGB: 768-d, cheap and resolution-independent
            return F.adaptive_avg_pool2d(x, 16).flatten(1).cpu().double().numpy(), None
        if self.kind == 'shapes':
            return self.net(x).cpu().double().numpy(), None
        pool3, logits = self.net(x)
        return pool3.cpu().double().numpy(), logits.cpu().double().numpy()


def features_of(images, extractor, batch=200, desc='features'):
    """uint8 NHWC images, or an iterable of such chunks (streamed: one NeRF scene at a time) -> features, logits."""
    chunks = [images] if isinstance(images, np.ndarray) else images
    feats, logits = [], []
    for chunk in chunks:
        for i in tqdm(range(0, len(chunk), batch), desc=desc, leave=False, disable=len(chunk) <= batch):
            f, lg = extractor(chunk[i:i + batch])
            feats.append(f)
            if lg is not None:
                logits.append(lg)
    return np.concatenate(feats), (np.concatenate(logits) if logits else None)


# --- the metrics ---------------------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) (Heusel et al. 2017), as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():  # singular product: regularise both covariances slightly
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def statistics(features):
    n, dim = features.shape
    if n < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples, got {n} (a covariance of fewer is undefined); "
                         f"pass more samples (--n)")
    if n < dim:
        warnings.warn(f"fewer samples ({n}) than feature dimensions ({dim}): the covariance is singular and the "
                      f"distance biased upward; papers use 50,000")
    return features.mean(0), np.cov(features, rowvar=False)


def inception_score(logits, splits=10):
    """exp(E_x KL(p(y|x) || p(y))) over `splits` chunks: (mean, std)."""
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-30) - np.log(py + 1e-30))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def knn_radii(x, k=3, batch=1000):
    """Distance of each row to its k-th nearest other row."""
    x = torch.as_tensor(x, dtype=torch.float64)
    out = []
    for i in range(0, len(x), batch):
        d = torch.cdist(x[i:i + batch], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself at distance 0
    return torch.cat(out)


def covered(points, centres, radii, batch=1000):
    """Fraction of points inside at least one ball (centre, radius)."""
    points, centres = torch.as_tensor(points, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    hits = []
    for i in range(0, len(points), batch):
        hits.append((torch.cdist(points[i:i + batch], centres) <= radii[None]).any(1))
    return torch.cat(hits).double().mean().item()


def precision_recall(real, fake, k=3):
    """Kynkaanniemi et al. 2019: precision = fake inside the real k-NN manifold, recall = the reverse; and F1."""
    p = covered(fake, real, knn_radii(real, k))
    r = covered(real, fake, knn_radii(fake, k))
    return p, r, (2 * p * r / (p + r) if p + r > 0 else 0.0)


# --- sample sets and reference statistics ---------------------------------------------------------------
def load_npz_images(path):
    d = np.load(path)
    key = 'samples' if 'samples' in d else ('arr_0' if 'arr_0' in d else None)
    if key is None:
        raise ValueError(f"{path} holds neither images (key 'samples' or 'arr_0') nor statistics ('mu', 'sigma')")
    x = d[key]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 images N x H x W x 3, got {x.dtype} {x.shape}")
    return x


def reference_stats(inr, cfg, split, extractor, n_pr, cache_dir):
    """mu, sigma and up to n_pr features of the real side of a metric, cached as npz (same preprocessing as
    training): what the modality's INR gives for the split (NeRF, the mNIF protocol: every view of every test scene,
    whatever `split` says)."""
    cache_dir = str(cache_root(cache_dir))
    split, _ = inr.reference_split(split)
    name = f"ref_{cfg['dataset']}_{split}_{cfg['resolution']}_{extractor.kind}_{reference_key(cfg, split, extractor)}.npz"
    path = os.path.join(cache_dir, name)
    if os.path.isfile(path):
        d = np.load(path)
        return d['mu'], d['sigma'], d['features']
    feats, _ = features_of(inr.reference_arrays(load_split(cfg, split)), extractor)
    mu, sigma = statistics(feats)
    os.makedirs(cache_dir, exist_ok=True)
    sub = feats[np.random.default_rng(0).permutation(len(feats))[:n_pr]]
    tmp = path + '.tmp.npz'
    np.savez(tmp, mu=mu, sigma=sigma, features=sub)
    os.replace(tmp, path)
    return mu, sigma, sub


def reference_key(cfg, split, extractor):
    """What defines a reference set: the data (its resolved folder and every file's name, size and mtime), the
    split's parameters and the feature extractor. Another folder, copy or edit of the data gets its own cache."""
    data_dir = os.path.realpath(os.path.expanduser(cfg['data_dir'])) if cfg['data_dir'] else ''
    key = dict(dataset=cfg['dataset'], split=split, resolution=cfg['resolution'], data_dir=data_dir,
               seed=cfg['seed'], test_fraction=cfg['test_fraction'], features=extractor.fingerprint,
               files=files_fingerprint(data_dir) if data_dir else '')
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def weights_hash(net):
    h = hashlib.sha1()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sample_features(model, cfg, lcfg, n, steps, seed, batch, extractor, ode=0, encoded=''):
    """Features (and logits) of n generated samples with per-sample seeds, streamed batch by batch, and the
    samples/s of the generator alone (feature extraction not counted). What a sample is, is the modality's
    (model.inr.sample_arrays): n images, or for a NeRF the mNIF protocol, one generated object per test scene
    (up to n scenes) rendered at all of that scene's test poses (SRN Cars: 704 x 251 images). encoded (a split
    name): encode -> render of its first n images instead, no generation."""
    if encoded:  # the render's ceiling: reconstructions of the other split than the reference
        chunks = model.inr.encoded_arrays(model, load_split(cfg, encoded), lcfg, n, batch)
    else:
        data = load_split(cfg) if model.inr.generates_from_data else None
        chunks = model.inr.sample_arrays(model, data, lcfg, n, seed, steps, batch, 0, ode)
    feats, logits, seconds, count = [], [], 0.0, 0
    while True:
        t0 = time.time()
        images = next(chunks, None)  # .cpu() above synchronises the device
        seconds += time.time() - t0
        if images is None:
            break
        f, lg = features_of(images, extractor)
        feats.append(f)
        logits.append(lg)
        count += len(images)
    logits = None if logits[0] is None else np.concatenate(logits)
    return np.concatenate(feats), logits, count / seconds


def fd_name(kind):
    """The key a Frechet distance is reported under: 'fid' only with the Inception features."""
    return 'fid' if kind == 'inception' else f'fd_{kind}'


def evaluate(feats, logits, real_mu, real_sigma, real_feats, kind):
    """FID (or pixel FD), IS when logits exist, precision/recall/F1 of generated features against a reference."""
    mu, sigma = statistics(feats)
    out = {fd_name(kind): frechet_distance(mu, sigma, real_mu, real_sigma)}
    if logits is not None:
        out['is'], out['is_std'] = inception_score(logits)
    m = min(len(real_feats), len(feats)) if real_feats is not None else 0
    if m > 3:  # k-NN radii with k = 3 need 4 points a side
        out['precision'], out['recall'], out['f1'] = precision_recall(real_feats[:m], feats[:m])
    return out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('npz', nargs='*', help='SAMPLES.npz REFERENCE.npz: sample sets (uint8 NHWC) or statistics')
    p.add_argument('--ckpt', default='')
    p.add_argument('--n', type=int, default=50000, help='samples (NeRF: test scenes, each at all its poses)')
    p.add_argument('--steps', type=int, default=1, choices=(1, 2))
    p.add_argument('--t_mid', type=float, default=0.0,
                   help="--steps 2: the noise level of the second step (0 = the checkpoint's, 0.821 by default)")
    p.add_argument('--ode', type=int, default=0, help='images: score n-step ODE samples instead (sample.py --ode)')
    p.add_argument('--encoded', action='store_true',
                   help="images: score encode -> render of the other split than --ref instead of samples (the "
                        "ceiling the INR's own render sets on generation)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--weights', default='ema', choices=('ema', 'model'), help='--ckpt: the EMA or the raw weights')
    p.add_argument('--batch', type=int, default=500)
    p.add_argument('--ref', default='train', choices=('train', 'test'), help='reference split (paper: train)')
    p.add_argument('--features', default='inception', choices=('inception', 'pixels', 'shapes'),
                   help="'shapes': a small net trained on analytic shapes images (the embedded default; no weights)")
    p.add_argument('--validate_shapes', action='store_true',
                   help="rank reference sets (blurred, blobs, mean, noise) against real shapes images and exit")
    p.add_argument('--inception', default='', help=f'path to {FID_WEIGHTS}')
    p.add_argument('--pr_n', type=int, default=10000, help='samples per side for precision/recall')
    p.add_argument('--cache_dir', default='', help="reference statistics' cache ('' = ~/.cache/inrct)")
    p.add_argument('--json', default='')
    p.add_argument('--device', default='auto')
    a = p.parse_args(argv)
    dev = pick_device(a.device)
    extractor = Features(a.features, a.inception, dev, a.cache_dir)
    if a.validate_shapes:
        out = validate_shape_metric(extractor, min(a.n, 2000))
        for name, row in out.items():
            print(f"{name:22s} " + '  '.join(f"{k} {v:8.3f}" for k, v in row.items()))
        out = {'validate_shapes': out, 'n': min(a.n, 2000)}
    elif a.npz:
        if len(a.npz) != 2 or a.ckpt:
            p.error('give either two .npz files or --ckpt')
        stats = []
        for path in a.npz:
            d = np.load(path)
            if 'mu' in d:
                stats.append((d['mu'], d['sigma'], d['features'] if 'features' in d else None))
            else:
                f, _ = features_of(load_npz_images(path), extractor, desc=os.path.basename(path))
                stats.append((*statistics(f), f[:a.pr_n]))
        out = {fd_name(a.features): frechet_distance(*stats[0][:2], *stats[1][:2])}
        m = min(len(stats[0][2]), len(stats[1][2])) if stats[0][2] is not None and stats[1][2] is not None else 0
        if m > 3:
            out['precision'], out['recall'], out['f1'] = precision_recall(stats[1][2][:m], stats[0][2][:m])
    elif a.ckpt:
        model, ckpt = load(a.ckpt, a.weights, dev)
        cfg, lcfg = ckpt['config'], with_t_mid(LossConfig(**ckpt['loss']), a.t_mid)
        if a.encoded and not hasattr(model.inr, 'encoded_arrays'):
            p.error(f"--encoded takes an image checkpoint; {a.ckpt} is a {cfg['modality']} model")
        encoded = {'train': 'test', 'test': 'train'}[a.ref] if a.encoded else ''
        feats, logits, rate = sample_features(model, cfg, lcfg, a.n, a.steps, a.seed, a.batch, extractor, a.ode,
                                              encoded)
        mu, sigma, real = reference_stats(model.inr, cfg, a.ref, extractor, a.pr_n, a.cache_dir)
        out = evaluate(feats, logits, mu, sigma, real[:a.pr_n], a.features)
        out.update(n=len(feats), nfe=a.ode or model.inr.nfe(a.steps, lcfg), samples_per_s=rate,
                   ref=model.inr.reference_split(a.ref)[1], features=a.features, ckpt=a.ckpt, weights=a.weights,
                   steps=a.steps, t_mid=lcfg.t_mid, encoded=encoded or False)
    else:
        p.error('give --ckpt or two .npz files')
    if not a.validate_shapes:
        print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

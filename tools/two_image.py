"""The two-image test as a measurement: train on a folder of two 8x8 shapes images through the CLI, then print the
median PSNR of 64 one-step samples to the nearer training image and to the two images' mean.

    python tools/two_image.py OUT_DIR [train.py options, e.g. --seed 1 --ema_decay 0.99]

tests/test_pipeline.py -k two_image runs the same training and bounds the same figures.
"""
import os
import subprocess
import sys

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import load_split, render_shapes  # noqa: E402
from inr import psnr, to_float  # noqa: E402
from losses import LossConfig  # noqa: E402
from model import load  # noqa: E402

# 600 steps: 50 of warm-up, stages 0-5; an EMA whose window is short against the run (0.99 lags it by ~1 dB)
TRAIN_ARGS = ['--dataset', 'folder', '--resolution', '8', '--pe_sigma', '8', '--test_fraction', '0.34',
              '--batch_size', '16', '--lr', '1e-3', '--lr_full', '0', '--warmup_iters', '50', '--ect_d', '100',
              '--max_iters', '600', '--ema_decay', '0.95', '--sample_interval', '1000', '--ckpt_interval', '1000',
              '--max_minutes', '0']


def write_images(folder):
    """Three shapes images; sorted, 0.png and 1.png fall in the train split and 2.png in the test split."""
    os.makedirs(folder, exist_ok=True)
    for i in range(3):
        Image.fromarray(render_shapes(0, i, 8)).save(os.path.join(folder, f'{i}.png'))


def train(out_dir, extra=(), env=None):
    """Run train.py on the two images in out_dir/images; the CompletedProcess."""
    write_images(os.path.join(out_dir, 'images'))
    args = [sys.executable, 'train.py', *TRAIN_ARGS, '--data_dir', os.path.join(out_dir, 'images'),
            '--out_dir', os.path.join(out_dir, 'run'), *extra]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def score(ckpt_path, n=64):
    """(median PSNR to the nearer training image, median PSNR to the images' mean) of n one-step samples."""
    model, ckpt = load(ckpt_path)
    images = to_float(load_split(ckpt['config'], 'train').get([0, 1]))
    gen, _ = model.inr.generate(model, list(range(n)), 1, LossConfig(**ckpt['loss']))
    gen = gen.clamp(-1, 1)
    nearest = torch.stack([psnr(gen, im.expand_as(gen)) for im in images], 1).max(1).values
    to_mean = psnr(gen, images.mean(0, keepdim=True).expand_as(gen))
    return nearest.median().item(), to_mean.median().item()


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    r = train(sys.argv[1], sys.argv[2:])
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    near, mean = score(os.path.join(sys.argv[1], 'run', 'ckpt.pt'))
    print(f"1-step samples, median PSNR: {near:.2f} dB to the nearer training image, {mean:.2f} dB to their mean")

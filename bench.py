"""Speed and memory of INRCT for one preset and resolution; prints a table and writes JSON.

    python bench.py --preset tiny                       # CPU, about a minute
    python bench.py --preset paper --resolution 64 --batch 128 --compile    # GPU

Training = losses.train_step, the very step train.py runs (grad forward at t, no-grad teacher forward at r,
backward, grad-norm check and clip, RAdam, EMA), in the consistency phase (stage 1, so the teacher pass runs). FLOP/s are
counted with torch.utils.flop_counter on one step and divided by the median step time; the machine's
dense-matmul rate is measured by a square GEMM in the same run, so 'fraction of peak' is one ratio.
"""
import argparse
import copy
import json
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from inr import make_grid, to_float
import losses
from losses import INRCTLoss, LossConfig, encode
from model import build_model, count_params, pick_device


def timed(fn, device, warmup, repeats, reduce=statistics.median):
    """Median (or `reduce`) seconds of fn() over repeats, after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return reduce(times)


def gemm_flops(device, dtype, n=2048, repeats=10):
    """Measured dense-matmul FLOP/s of this machine (n x n x n), best of repeats: the attainable peak (a
    median moved by 40% between runs on a shared 2-core VM; the fastest repeat is stable)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, device, 3, repeats, reduce=min)


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RandomImages:
    """n random uint8 images in memory, read like a dataset: the benchmark times the model, not the disk."""

    def __init__(self, n, resolution):
        self.images = torch.randint(0, 256, (n, resolution, resolution, 3), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0))

    def get(self, indices):
        return self.images[list(indices)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='tiny')
    p.add_argument('--resolution', type=int, default=32)
    p.add_argument('--patch', type=int, default=4)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--compile', action='store_true')
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, default=0, help='CPU threads (0 = torch default)')
    p.add_argument('--json', default='')
    a = p.parse_args()
    dev = pick_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if dev.type == 'cuda' else torch.autocast('cpu', enabled=False)

    torch.manual_seed(0)
    model = build_model(a.preset, a.resolution, a.patch, float(a.resolution)).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = torch.compile(model) if a.compile else model
    opt = torch.optim.RAdam(model.parameters(), lr=1e-4)
    lcfg = LossConfig(d=1, warmup_iters=0)  # stage >= 1: every step runs the teacher pass
    loss_fn = INRCTLoss(lcfg)
    R, B = a.resolution, a.batch
    images = RandomImages(B, R)
    x = to_float(images.get(range(B))).to(dev)
    grid = make_grid(R, R, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    g_cpu = torch.Generator().manual_seed(1)

    step_cfg = {'warmup_iters': 0, 'lr': 1e-4, 'lr_full': 0.0, 'grad_clip': 1.0, 'ema_decay': 0.9999, 'teacher_ema': 0.0}

    def micro_batch(m):  # the batch train.py builds, from images already in memory
        return model.inr.train_batch(images, list(range(B)), {}, g, g_cpu, dev), g

    def train_step():  # train.py's step: loss + backward, grad-norm check and clip, RAdam, EMA
        losses.train_step(net, model, ema, None, opt, loss_fn, micro_batch, 1, 1, step_cfg, autocast)

    def gen(steps):
        with autocast:
            model.inr.generate(model, list(range(B)), steps, lcfg)

    def enc():
        with autocast, torch.no_grad():
            model.inr.render(encode(model, x, lcfg), grid, 4096)

    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(dev)
    t_train = timed(train_step, dev, a.warmup, a.repeats)
    mem_train = peak_memory_mb(dev)
    flops_train = count_flops(train_step)
    model.eval()
    t_gen1 = timed(lambda: gen(1), dev, a.warmup, a.repeats)
    t_gen2 = timed(lambda: gen(2), dev, a.warmup, a.repeats)
    t_enc = timed(enc, dev, a.warmup, a.repeats)
    peak = gemm_flops(dev, torch.bfloat16 if dev.type == 'cuda' else torch.float32)
    out = {
        'device': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads',
        'preset': a.preset, 'resolution': R, 'batch': B, 'params': count_params(model), 'compile': a.compile,
        'train_img_per_s': B / t_train, 'train_step_s': t_train, 'train_peak_mem_mb': mem_train,
        'train_flops_per_step': flops_train, 'train_achieved_flops': flops_train / t_train,
        'gemm_flops': peak, 'train_fraction_of_gemm': flops_train / t_train / peak,
        'sample_1step_img_per_s': B / t_gen1, 'sample_1step_latency_s_per_img': t_gen1 / B,
        'sample_2step_img_per_s': B / t_gen2, 'sample_2step_latency_s_per_img': t_gen2 / B,
        'encode_img_per_s': B / t_enc, 'peak_mem_mb': peak_memory_mb(dev),
    }
    for k, v in out.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    main()

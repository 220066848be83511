"""Speed and memory of INRCT for one preset and resolution; prints a table and writes JSON.

    python bench.py --preset tiny                       # CPU, about a minute
    python bench.py --preset paper --resolution 64 --batch 128 --compile    # GPU
    python bench.py --dataset shapes --workers 0,1,2     # + the data pipeline alone, and the loop on real batches

Training = losses.train_step, the very step train.py runs (grad forward at t, no-grad teacher forward at r,
backward, grad-norm check and clip, RAdam, EMA), in the consistency phase (stage 1, so the teacher pass runs). FLOP/s are
counted with torch.utils.flop_counter on one step and divided by the median step time; the machine's
dense-matmul rate is measured by a square GEMM in the same run, so 'fraction of peak' is one ratio.

With --dataset: the data pipeline train.py runs (data.step_loader: each modality's read_batch, in N worker
processes) alone, in samples/s for each N of --workers, and the cores one GPU at --target samples/s would need
for it; then the training step on the loader's batches next to the step on one batch held in memory, in one run
(`loop_over_model`: 1.0 means the data costs the loop nothing).
"""
import argparse
import copy
import json
from math import prod
import resource
import statistics
import time

import torch
import torch.utils.flop_counter as flop_counter
from torch.utils.flop_counter import FlopCounterMode

from data import load_dataset, step_loader
from inr import MODALITY_FOR, make_grid, to_float
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


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask, out_shape=None, **kw):
    """torch's count for a conv's backward, but grouped convs (--token_conv's depthwise ones) at their true cost:
    torch counts them as if ungrouped (512x too many for a depthwise conv of 512 channels). Each of grad-input and
    grad-weight costs one forward, 2 * prod(grad_out) * prod(w[1:])."""
    if groups == 1 or transposed:
        return flop_counter.conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation,
                                               transposed, output_padding, groups, output_mask, out_val=out_shape)
    forward = 2 * prod(grad_out_shape) * prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn):
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
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
    p.add_argument('--token_conv', type=int, default=0, help="train.py's --token_conv (kernel; 0: off)")
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--compile', action='store_true')
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, default=0, help='CPU threads (0 = torch default)')
    p.add_argument('--json', default='')
    p.add_argument('--dataset', default='', help='also time this dataset\'s pipeline and the loop on its batches')
    p.add_argument('--data_dir', default='')
    p.add_argument('--cache_dir', default='')
    p.add_argument('--workers', default='0,2', help='--dataset: worker counts to time the pipeline with')
    p.add_argument('--loop_workers', type=int, default=0, help='--dataset: workers of the loop timing')
    p.add_argument('--data_steps', type=int, default=20, help='--dataset: steps per pipeline timing')
    p.add_argument('--target', type=float, default=1500.0, help='--dataset: samples/s one GPU should train at')
    a = p.parse_args()
    dev = pick_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if dev.type == 'cuda' else torch.autocast('cpu', enabled=False)

    torch.manual_seed(0)
    data = load_dataset(a.dataset, 'train', a.resolution, a.data_dir, cache_dir=a.cache_dir) if a.dataset else None
    modality = MODALITY_FOR[getattr(data, 'data_kind', 'images')]
    model = build_model(a.preset, a.resolution, a.patch, float(a.resolution), modality=modality,
                        n_samples=32, token_conv=a.token_conv).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    net = torch.compile(model) if a.compile else model
    opt = losses.RAdam(model.parameters(), lr=1e-4)
    lcfg = LossConfig(d=1, warmup_iters=0)  # stage >= 1: every step runs the teacher pass
    loss_fn = INRCTLoss(lcfg)
    R, B = a.resolution, a.batch
    images = RandomImages(B, R)
    x = to_float(images.get(range(B))).to(dev)
    step_cfg = {'seed': 0, 'batch_size': B, 'num_workers': a.loop_workers, 'rays_per_object': 512, 'n_samples': 32,
                'points_per_object': 1024, 'warmup_iters': 0, 'lr': 1e-4, 'lr_full': 0.0, 'grad_clip': 1.0,
                'ema_decay': 0.9999, 'teacher_ema': 0.0}
    grid = make_grid(R, R, dev)
    g = torch.Generator(device=dev).manual_seed(0)
    g_cpu = torch.Generator().manual_seed(1)


    source = data or images
    fixed = model.inr.read_batch(source, list(range(B)), step_cfg, g_cpu)

    def micro_batch(m):  # the batch train.py builds, read once and held in memory: the model alone
        return model.inr.train_batch(fixed, step_cfg, g, dev), g

    def train_step():  # train.py's step: loss + backward, grad-norm check and clip, RAdam, EMA
        losses.train_step(net, model, ema, None, opt, loss_fn, micro_batch, 1, 1, step_cfg, autocast)

    out_data = {}
    if data is not None:
        for w in [int(v) for v in a.workers.split(',')]:  # the pipeline alone: read_batch in w processes
            loader = step_loader(model.inr, data, {**step_cfg, 'num_workers': w, 'max_iters': a.data_steps + 2},
                                 [0], B, 0, dev.type == 'cuda')
            next(loader), next(loader)  # workers started, queues filling
            t0 = time.perf_counter()
            n = sum(1 for _ in loader)
            out_data[f'data_samples_per_s_{w}_workers'] = n * B / (time.perf_counter() - t0)
        per_process = out_data[f"data_samples_per_s_{a.workers.split(',')[0]}_workers"]
        out_data['data_cores_for_target'] = a.target / per_process
        loader = step_loader(model.inr, data, {**step_cfg, 'max_iters': 10 ** 6}, [0], B, 0, dev.type == 'cuda')

        def loop_step():  # train.py's loop body: the next batch from the loader, then the step
            raw = next(loader)[0]
            losses.train_step(net, model, ema, None, opt, loss_fn, lambda m: (model.inr.train_batch(raw, step_cfg, g,
                              dev), g), 1, 1, step_cfg, autocast)

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
    if data is not None:  # the same step on the loader's batches, right after, in the same run
        t_loop = timed(loop_step, dev, a.warmup, a.repeats)
        out_data.update(loop_step_s=t_loop, loop_over_model=t_train / t_loop)
    flops_train = count_flops(train_step)
    model.eval()
    sampling = {}
    if data is None:  # generation and encoding of images (the model's speed; the data mode times the data)
        t_gen1 = timed(lambda: gen(1), dev, a.warmup, a.repeats)
        t_gen2 = timed(lambda: gen(2), dev, a.warmup, a.repeats)
        t_enc = timed(enc, dev, a.warmup, a.repeats)
        sampling = {'sample_1step_img_per_s': B / t_gen1, 'sample_1step_latency_s_per_img': t_gen1 / B,
                    'sample_2step_img_per_s': B / t_gen2, 'sample_2step_latency_s_per_img': t_gen2 / B,
                    'encode_img_per_s': B / t_enc}
    peak = gemm_flops(dev, torch.bfloat16 if dev.type == 'cuda' else torch.float32)
    out = {
        'device': torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'cpu x{torch.get_num_threads()} threads',
        'preset': a.preset, 'resolution': R, 'batch': B, 'params': count_params(model), 'compile': a.compile,
        'train_img_per_s': B / t_train, 'train_step_s': t_train, 'train_peak_mem_mb': mem_train,
        'train_flops_per_step': flops_train, 'train_achieved_flops': flops_train / t_train,
        'gemm_flops': peak, 'train_fraction_of_gemm': flops_train / t_train / peak,
        **sampling, 'peak_mem_mb': peak_memory_mb(dev),
        'dataset': a.dataset or 'random images in memory', **out_data,
    }
    for k, v in out.items():
        print(f"{k:32s} {v:.4g}" if isinstance(v, float) else f"{k:32s} {v}")
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(out, f, indent=1)


if __name__ == '__main__':
    main()

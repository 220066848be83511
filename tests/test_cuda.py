"""The CUDA paths against the CPU fp32 reference: the same weights render the same images and gradients on the
GPU in fp32, stay within bf16's precision under autocast and through inductor, and train.py trains on CUDA
alone and under torchrun (NCCL) to the same weights. Skipped without a GPU (CI never needs one);
`bash gpu_check.sh` runs them together with the GPU benchmarks."""
import copy
import os
import sys

import numpy as np
import pytest
import torch

from model import build_model
from test_fast_paths import batch_for
from test_pipeline import FAST, checkpoints_apart, read_log, run

DEV = 'cuda'
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def to(batch, dev):
    """The batch (tensors, or a dict of them for NeRF queries) on dev."""
    if isinstance(batch, dict):
        return {k: to(v, dev) for k, v in batch.items()}
    return batch.to(dev)


def render_and_grads(model, batch, autocast=None):
    """Raw render at the query for c_noise = -0.5, and the gradient of its mean square w.r.t. every weight."""
    model.zero_grad(set_to_none=True)
    dev = next(model.parameters()).device
    with autocast or torch.autocast(dev.type, enabled=False):
        out = model(batch['support'], torch.full((2,), -0.5, device=dev), batch['query'])
    out.float().square().mean().backward()
    return out.detach().float().cpu(), [p.grad.detach().cpu() for p in model.parameters()]


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def no_tf32():
    """fp32 comparisons need true fp32 matmuls (train.py turns TF32 on for speed)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize('modality', ['image', 'nerf'])
def test_fp32_render_and_gradients_equal_cpu(modality, no_tf32):
    torch.manual_seed(0)
    cpu = build_model('tiny', 16, 4, modality=modality, n_samples=8)
    gpu = copy.deepcopy(cpu).to(DEV)
    batch = batch_for(modality)
    ref, ref_grads = render_and_grads(cpu, batch)
    out, grads = render_and_grads(gpu, to(batch, DEV))
    assert relative(out, ref) < 1e-4
    for g, rg in zip(grads, ref_grads):
        assert (g - rg).abs().max() <= 1e-3 * rg.abs().max() + 1e-8


def test_bf16_autocast_on_cuda_stays_within_bf16_precision(no_tf32):
    torch.manual_seed(0)
    model = build_model('tiny', 16, 4).to(DEV)
    batch = to(batch_for('image'), DEV)
    ref, _ = render_and_grads(model, batch)
    low, grads = render_and_grads(model, batch, torch.autocast(DEV, dtype=torch.bfloat16))
    assert 1e-4 < relative(low, ref) < 2e-2  # bf16 did run (not fp32), and stayed close
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('modality', ['image', 'nerf'])
def test_inductor_on_cuda_equals_eager(modality, no_tf32):
    """inductor's generated GPU kernels (CPU tests only check the captured graph, with aot_eager)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model('tiny', 16, 4, modality=modality, n_samples=8).to(DEV)
    batch = to(batch_for(modality), DEV)
    ref, ref_grads = render_and_grads(model, batch)
    out, grads = render_and_grads(torch.compile(model), batch)
    assert relative(out, ref) < 1e-4
    for g, rg in zip(grads, ref_grads):
        assert (g - rg).abs().max() <= 1e-3 * rg.abs().max() + 1e-8


def test_train_on_cuda_alone_and_under_torchrun_nccl_agree_and_sample(tmp_path):
    """One process on CUDA (bf16 autocast) vs torchrun with NCCL (2 processes if 2 GPUs, else 1), same global
    batch: the same weights after 6 steps (tolerance 1e-4: bf16 forward, fp32 all-reduce), then sample.py."""
    n = min(2, torch.cuda.device_count())
    one, ddp = str(tmp_path / 'one'), str(tmp_path / 'ddp')
    r = run([sys.executable, 'train.py', *FAST, '--micro_batch', str(4 // n), '--out_dir', one, '--device', 'cuda'])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={n}', '--master_port=29519',
             'train.py', *FAST, '--out_dir', ddp, '--device', 'cuda'])
    assert r.returncode == 0, r.stderr[-2000:]
    _, worst = checkpoints_apart(one, ddp)
    assert worst < 1e-4, worst
    log = [rec for rec in read_log(one) if 'loss' in rec]
    assert all(rec['peak_mem_mb'] > 0 and np.isfinite(rec['loss']) for rec in log)

    npz = str(tmp_path / 's.npz')
    r = run([sys.executable, 'sample.py', '--ckpt', os.path.join(one, 'ckpt.pt'), '--device', 'cuda', '--n', '8',
             '--steps', '2', '--resolution', '64', '--out', str(tmp_path / 's.png'), '--npz', npz])
    assert r.returncode == 0, r.stderr[-2000:]
    samples = np.load(npz)['samples']
    assert samples.shape == (8, 64, 64, 3) and samples.dtype == np.uint8


def test_train_step_never_synchronises_with_the_host():
    """CUDA's sync debug mode turns any host-device synchronisation inside losses.train_step into an error."""
    import train
    from data import ShapesDataset
    from losses import INRCTLoss, RAdam, train_step
    cfg = {**train.defaults(), 'batch_size': 4, 'warmup_iters': 1, 'ect_d': 1, 'num_workers': 0}
    torch.manual_seed(0)
    model = build_model('tiny', 16, 4).to(DEV)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt, loss_fn = RAdam(model.parameters(), lr=1e-3), INRCTLoss(train.loss_config(cfg))
    raw = model.inr.read_batch(ShapesDataset('train', 16), [0, 1, 2, 3], cfg, None)
    g = torch.Generator(device=DEV).manual_seed(0)
    batch = model.inr.train_batch(raw, cfg, g, DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for step in (0, 3):
            finite, parts, _ = train_step(model, model, ema, None, opt, loss_fn, lambda m: (batch, g), 1, step, cfg,
                                          torch.autocast('cuda', dtype=torch.bfloat16))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert bool(finite) and torch.isfinite(parts['loss'])

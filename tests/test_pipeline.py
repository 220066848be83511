"""train.py / sample.py end to end on CPU: config, DDP equivalence, exact resume after a kill, atomic
checkpoints, sampling shapes and resolutions, encoding metrics."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import load_split  # noqa: E402
import inr as inrct_inr  # noqa: E402
import losses  # noqa: E402
import model as inrct_model  # noqa: E402
import train  # noqa: E402

# a few fast steps that cross the warm-up and two ECT stages
FAST = ['--batch_size', '4', '--max_iters', '6', '--warmup_iters', '2', '--ect_d', '2', '--log_interval', '1',
        '--sample_interval', '1000', '--ckpt_interval', '1000', '--max_minutes', '0', '--ema_decay', '0.9',
        '--lr_full', '0']


def load(path):
    """(model, training config, LossConfig, step) of a checkpoint, as sample.py and fid.py read it."""
    model, ckpt = inrct_model.load(path)
    return model, ckpt['config'], losses.LossConfig(**ckpt['loss']), ckpt['step']


def run(args, env=None, **kw):
    e = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run(args, cwd=ROOT, env=e, capture_output=True, text=True, timeout=300, **kw)


def read_log(out_dir):
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


# --- config -------------------------------------------------------------------------------------
def test_config_overrides_both_forms_and_presets():
    cfg = train.parse_config(['--lr=3e-4', '--batch_size', '8', '--resume'])
    assert cfg['lr'] == 3e-4 and cfg['batch_size'] == 8 and cfg['resume'] is True
    assert cfg['dataset'] == 'shapes' and cfg['preset'] == 'tiny'  # configs/shapes.py
    celeba = train.parse_config(['--dataset', 'celeba'])
    assert celeba['preset'] == 'paper' and celeba['resolution'] == 64 and celeba['batch_size'] == 128


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match='unknown config key --bach_size; did you mean --batch_size'):
        train.parse_config(['--bach_size', '8'])
    with pytest.raises(ValueError, match='--batch_size takes a int'):
        train.parse_config(['--batch_size', 'many'])
    with pytest.raises(ValueError, match='--resume takes true/false'):
        train.parse_config(['--resume=maybe'])
    with pytest.raises(ValueError, match='needs a value'):
        train.parse_config(['--lr'])


def test_loss_keys_of_the_config_reach_the_loss():
    cfg = train.parse_config(['--p_mean', '-0.4', '--p_std', '1.5', '--ect_d', '7', '--lambda_recon', '0.5',
                              '--sigma_data', '1.0', '--warmup_iters', '3'])
    lcfg = train.loss_config(cfg)
    assert (lcfg.P_mean, lcfg.P_std, lcfg.d, lcfg.lambdas, lcfg.sigma_data, lcfg.warmup_iters) == \
        (-0.4, 1.5, 7, (1.0, 0.5, 1.0), 1.0, 3)
    from losses import sample_t  # and the full-training t really follows them: median exp(P_mean)
    t = sample_t(20000, 3, lcfg, torch.Generator().manual_seed(0))
    assert abs(t.median().log().item() - (-0.4)) < 0.05
    assert abs(t.log().std().item() - 1.5) < 0.05


def test_dry_run_prints_config_and_params():
    r = run([sys.executable, 'train.py', '--dry_run'])
    assert r.returncode == 0, r.stderr
    assert 'params: 1566531' in r.stdout and '"dataset": "shapes"' in r.stdout


def test_missing_dataset_path_is_a_one_line_error():
    r = run([sys.executable, 'train.py', '--dataset', 'cifar10', '--data_dir', '/nonexistent', '--dry_run'])
    assert r.returncode != 0 and 'cifar-10-batches-py' in r.stderr and 'Traceback' not in r.stderr


# --- DDP ----------------------------------------------------------------------------------------
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    """2 processes x micro-batch 2 == 1 process x 2 accumulation steps of 2 (same global batch of 4).

    Tolerance: max |diff| of every parameter < 1e-5 (float32 all-reduce vs local sum; observed ~1e-7)."""
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    r1 = run([sys.executable, 'train.py', *FAST, '--micro_batch', '2', '--out_dir', one, '--device', 'cpu'])
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517',
              'train.py', *FAST, '--out_dir', two, '--device', 'cpu'])
    assert r2.returncode == 0, r2.stderr[-2000:]
    a, worst = checkpoints_apart(one, two)
    moved = max((a['model'][k] - a0).abs().max().item() for k, a0 in initial_weights().items())
    assert worst < 1e-5 and moved > 1e-3, (worst, moved)


def checkpoints_apart(one, two, steps=6):
    """Both runs' checkpoints must be at `steps`; -> (the first, max |difference| over every parameter)."""
    a = torch.load(os.path.join(one, 'ckpt.pt'), weights_only=True)
    b = torch.load(os.path.join(two, 'ckpt.pt'), weights_only=True)
    assert a['step'] == b['step'] == steps
    return a, max((a['model'][k] - b['model'][k]).abs().max().item() for k in a['model'])


def initial_weights():
    from model import build_model
    torch.manual_seed(0)
    return build_model('tiny', 32, 4, 32.0).state_dict()


# --- exact resume and atomic checkpoints ----------------------------------------------------------
def test_killed_run_resumes_with_the_same_losses(tmp_path):
    ref, cut = str(tmp_path / 'ref'), str(tmp_path / 'cut')
    args = [sys.executable, 'train.py', *FAST, '--max_iters', '12', '--ckpt_interval', '3', '--lr_full', '3e-4']
    r = run(args + ['--out_dir', ref])
    assert r.returncode == 0, r.stderr[-2000:]
    expected = {rec['step']: rec['loss'] for rec in read_log(ref) if 'loss' in rec}
    # start the same run, SIGKILL it once a checkpoint exists (no chance to clean up), then --resume
    p = subprocess.Popen(args + ['--out_dir', cut], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(cut, 'ckpt.pt')
    deadline = time.time() + 240
    while not os.path.exists(ckpt) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    resumed_from = torch.load(ckpt, weights_only=True)['step']
    assert resumed_from < 12, "the run finished before it could be killed"
    n_before = len(read_log(cut))
    r = run(args + ['--out_dir', cut, '--resume'])
    assert r.returncode == 0, r.stderr[-2000:]
    after = [rec for rec in read_log(cut)[n_before:] if 'loss' in rec]
    assert [rec['step'] for rec in after] == list(range(resumed_from + 1, 13))
    for rec in after:
        assert rec['loss'] == pytest.approx(expected[rec['step']], rel=1e-5), rec['step']


def test_distill_freezes_its_denoiser_in_the_checkpoint_and_resumes_exactly(tmp_path):
    """--distill snapshots the EMA at stage 1's start (step 4 here) into the checkpoint, and --guide_step its guide at
    step 3: a run stopped at step 7 and resumed repeats the uninterrupted one; a checkpoint past step 4 without a
    denoiser is refused with the fix."""
    ref, cut, plain = (str(tmp_path / n) for n in ('ref', 'cut', 'plain'))
    args = [sys.executable, 'train.py', *FAST, '--max_iters', '12', '--lr_full', '3e-4', '--distill', 'true',
            '--guide_step', '3']
    for a in ([*args, '--out_dir', ref], [*args, '--out_dir', cut, '--max_iters', '7'], [*args, '--out_dir', cut,
              '--resume'], [*args, '--out_dir', plain, '--distill', 'false', '--guide_step', '0']):
        r = run(a)
        assert r.returncode == 0, r.stderr[-2000:]
    expected = {rec['step']: rec['loss'] for rec in read_log(ref) if 'loss' in rec}
    resumed = [rec for rec in read_log(cut) if 'loss' in rec][7:]
    assert [rec['step'] for rec in resumed] == list(range(8, 13))
    for rec in resumed:
        assert rec['loss'] == pytest.approx(expected[rec['step']], rel=1e-5), rec['step']
    ckpt = torch.load(os.path.join(ref, 'ckpt.pt'), weights_only=True)
    assert ckpt['denoiser'] is not None and not torch.equal(ckpt['denoiser']['hyper.embed.weight'],
                                                            ckpt['ema']['hyper.embed.weight'])
    assert ckpt['guide'] is not None and not torch.equal(ckpt['guide']['hyper.embed.weight'],
                                                         ckpt['denoiser']['hyper.embed.weight'])
    # the same run without --distill: the same losses up to stage 1, others once a teacher target moves the weights
    other = {rec['step']: rec['loss'] for rec in read_log(plain) if 'loss' in rec}
    assert all(other[s] == pytest.approx(expected[s], rel=1e-6) for s in range(1, 5))
    assert other[12] != pytest.approx(expected[12], rel=1e-4)
    r = run([*args, '--out_dir', plain, '--resume', '--max_iters', '14'])
    assert r.returncode != 0 and 'past stage 1\'s start (4), and holds no frozen denoiser' in r.stderr
    r = run([sys.executable, 'train.py', '--dataset', 'shapes3d', '--distill', 'true', '--dry_run'])
    assert r.returncode != 0 and 'with --modality nerf that is not the target' in r.stderr
    r = run([sys.executable, 'train.py', *FAST, '--guide_step', '5', '--distill', 'true', '--dry_run'])
    assert r.returncode != 0 and 'set --distill true and a step below 4' in r.stderr


def test_lr_full_takes_over_when_the_warm_up_ends(tmp_path):
    out = str(tmp_path / 'run')
    r = run([sys.executable, 'train.py', *FAST, '--lr', '1e-3', '--lr_full', '1e-4', '--out_dir', out])
    assert r.returncode == 0, r.stderr[-2000:]
    assert [rec['lr'] for rec in read_log(out) if 'loss' in rec] == [1e-3] * 2 + [1e-4] * 4  # warm-up: 2 steps
    opt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['optimizer']
    assert opt['param_groups'][0]['lr'] == 1e-4


def test_checkpoint_killed_mid_write_never_replaces_the_good_one(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    train.save_checkpoint({'step': 1, 'w': torch.arange(10.0)}, path)
    script = f"""
import os, signal, sys, torch
sys.path.insert(0, {ROOT!r})
import train
def dying_save(obj, f):
    f.write(b'PK\\x03\\x04 half a checkpoint')
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
train.save_checkpoint({{'step': 2, 'w': torch.zeros(10)}}, {path!r})
"""
    r = run([sys.executable, '-c', script])
    assert r.returncode == -signal.SIGKILL
    good = torch.load(path, weights_only=True)
    assert good['step'] == 1 and torch.equal(good['w'], torch.arange(10.0))


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    cfg = train.parse_config([])
    train.save_checkpoint({'config': dict(cfg, resolution=64)}, path)
    with pytest.raises(ValueError, match='resolution=64 .now 32.'):
        train.load_checkpoint(path, cfg)


def test_an_architecture_key_newer_than_the_checkpoint_reads_as_its_default(tmp_path):
    """A checkpoint written before inr_tokens existed resumes with the default 0 and is refused with another."""
    path = str(tmp_path / 'ckpt.pt')
    cfg = train.parse_config([])
    old = {k: v for k, v in cfg.items() if k != 'inr_tokens'}
    train.save_checkpoint({'config': old}, path)
    assert train.load_checkpoint(path, cfg)['config'] == old
    with pytest.raises(ValueError, match='inr_tokens=0 .now 144.'):
        train.load_checkpoint(path, dict(cfg, inr_tokens=144))
    m = inrct_model.build_model('tiny', 32, 4, 32.0, inr_tokens=144)
    assert m.hyper.queries.shape[0] == 144 and m.inr.tau == 0.384 / 144


def test_inr_heads_reaches_the_inr_and_splits_its_attention(tmp_path):
    """--inr_heads is an architecture key: the model is built with it, a checkpoint without it reads as 0 (the
    preset's), and with 8 heads each coordinate mixes the tokens with 8 separate weightings, not 2."""
    cfg = train.parse_config(['--inr_heads', '8'])
    m = inrct_model.build_model(**train.model_args(cfg))
    assert m.inr.heads == 8 and inrct_model.build_model(**train.model_args(train.parse_config([]))).inr.heads == 2
    path = str(tmp_path / 'ckpt.pt')
    train.save_checkpoint({'config': {k: v for k, v in cfg.items() if k != 'inr_heads'}}, path)
    with pytest.raises(ValueError, match='inr_heads=0 .now 8.'):
        train.load_checkpoint(path, cfg)
    torch.manual_seed(0)
    beta, coords = torch.randn(1, 64, 64), torch.rand(1, 5, 2) * 2 - 1
    q = m.inr.heads_split(m.inr.to_q(inrct_inr.positional_encoding(coords, m.inr.num_freqs, m.inr.pe_sigma)))
    a = torch.softmax(q @ m.inr.heads_split(m.inr.to_k(beta)).transpose(-1, -2) * q.shape[-1] ** -0.5, -1)
    assert a.shape == (1, 8, 5, 64) and (a[0, 0] - a[0, 1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match='does not divide into 3 attention heads'):
        inrct_model.build_model(**train.model_args(dict(cfg, inr_heads=3)))


# --- sampling and encoding -------------------------------------------------------------------------
@pytest.fixture(scope='module')
def trained_ckpt(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('run'))
    r = run([sys.executable, 'train.py', *FAST, '--out_dir', out, '--sample_interval', '6'])
    assert r.returncode == 0, r.stderr[-2000:]
    for png in ('samples_1step.png', 'samples_2step.png', 'reconstructions.png'):
        assert os.path.getsize(os.path.join(out, png)) > 0
    assert any('test_psnr' in rec for rec in read_log(out))
    return os.path.join(out, 'ckpt.pt')


@pytest.mark.parametrize('steps', [1, 2])
def test_generate_shapes_at_several_resolutions(trained_ckpt, steps):
    model, cfg, _, _ = load(trained_ckpt)
    lcfg = train.loss_config(cfg)
    for res in (16, 32, 48, 96):
        grid_img, inr_img = model.inr.generate(model, [0, 1, 2], steps, lcfg, res)
        assert grid_img.shape == (3, 3, 32, 32) and inr_img.shape == (3, 3, res, res)
        assert torch.isfinite(inr_img).all()
    # per-image seeds: a sample does not depend on what else is in the batch
    a, _ = model.inr.generate(model, [5, 6], steps, lcfg)
    b, _ = model.inr.generate(model, [6], steps, lcfg)
    assert torch.allclose(a[1], b[0], atol=1e-5)


def test_checkpoint_rebuilds_its_model_alone_and_old_ones_are_refused_until_upgraded(trained_ckpt, tmp_path):
    model, cfg, lcfg, _ = load(trained_ckpt)
    want, _ = model.inr.generate(model, [1, 2], 2, lcfg)
    ckpt = torch.load(trained_ckpt, weights_only=True)
    assert ckpt['model_args'] == train.model_args(ckpt['config']) and lcfg == train.loss_config(ckpt['config'])
    old = str(tmp_path / 'old.pt')  # as written before checkpoints carried their settings
    for k in ('model_args', 'loss'):
        del ckpt[k]
    for k in ('modality', 'time_scale'):
        del ckpt['config'][k]
    torch.save(ckpt, old)
    r = run([sys.executable, 'sample.py', '--ckpt', old, '--out', str(tmp_path / 'x.png')])
    assert r.returncode != 0 and f'python train.py --upgrade_checkpoint {old}' in r.stderr
    ckpt['config']['time_scale'] = 1.0  # this one was trained after the key existed
    torch.save(ckpt, old)
    r = run([sys.executable, 'train.py', '--upgrade_checkpoint', old])
    assert r.returncode == 0, r.stderr[-2000:]
    model, cfg, lcfg, _ = load(old)
    assert cfg['modality'] == 'image' and torch.equal(model.inr.generate(model, [1, 2], 2, lcfg)[0], want)


def test_ode_sampler_against_the_closed_form_of_gaussian_data():
    """Data N(0, s^2): D(x, t) = x s^2 / (s^2 + t^2), and the ODE maps x_T to x_T s / sqrt(s^2 + T^2) exactly;
    Euler on EDM's times converges to it (first order), and a one-image dataset is reached exactly."""
    s, x_T = 0.5, torch.randn(4, 3, 8, 8, dtype=torch.float64) * 80
    exact = x_T * s / (s ** 2 + 80 ** 2) ** 0.5
    err = {n: (losses.ode_sample(lambda x, t: x * s ** 2 / (s ** 2 + t ** 2), x_T, losses.karras_times(n))
               - exact).abs().max().item() / exact.abs().max().item() for n in (8, 64, 512)}
    assert err[512] < 0.01 and err[512] < err[64] / 4 < err[8] / 16
    y = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(losses.ode_sample(lambda x, t: y, x_T, losses.karras_times(5)), y, atol=1e-9)
    t = losses.karras_times(18)
    assert t[0] == 80.0 and abs(t[-2] - 0.002) < 1e-12 and t[-1] == 0 and all(a > b for a, b in zip(t, t[1:]))


def test_ode_samples_of_a_checkpoint_are_finite_and_seeded(trained_ckpt):
    model, cfg, _, _ = load(trained_ckpt)
    a = model.inr.generate_ode(model, [3, 4], 4, train.loss_config(cfg))
    b = model.inr.generate_ode(model, [4], 4, train.loss_config(cfg))
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all() and torch.allclose(a[1], b[0], atol=1e-5)


def tiny_image(query_skip, boundary_sigma=0.0):
    """An untrained model of the default config, with or without the query skip (and the boundary skip), and its
    loss config."""
    from model import build_model
    cfg = train.parse_config(['--query_skip', str(query_skip), '--boundary_sigma', str(boundary_sigma)])
    torch.manual_seed(0)
    return build_model(**train.model_args(cfg)).eval(), cfg, train.loss_config(cfg)


@pytest.mark.parametrize('query_skip,boundary_sigma', [(True, 0.0), (False, 0.0), (False, 0.02)])
def test_two_step_image_inr_is_reencoded_only_under_eq12(query_skip, boundary_sigma):
    """The encoder runs at t = 80, then at t_mid on the 1-step image under fresh noise. Under Eq. 12 f(x, t_mid)
    keeps 27% of that noisy image, so the INR rendered off the grid is the grid image re-encoded at t_min (a third
    pass); without the query skip f(x, t_mid) is c_out(t_mid) times the render of the step-2 tokens, which is that
    INR (2 passes; c_out = 1, or 1 - 6e-4 with the boundary skip)."""
    import math
    from inr import make_grid
    from losses import c_out
    model, _, lcfg = tiny_image(query_skip, boundary_sigma)
    calls, encode = [], model.encode
    model.encode = lambda x, c, q=None: calls.append((c, encode(x, c, q))) or calls[-1][1]
    grid_img, big = model.inr.generate(model, [3, 4], 2, lcfg, 48)
    model.encode = encode
    times = [math.exp(4 * c[0].item()) for c, _ in calls]
    assert times == pytest.approx([80.0, 0.821] + ([lcfg.t_min] if query_skip else []), rel=1e-5)
    scale = 1.0 if query_skip else c_out(torch.tensor(0.821), lcfg).item()
    assert torch.allclose(big, scale * model.inr.render(calls[-1][1], make_grid(48, 48), 4096), rtol=0, atol=1e-6)
    on_grid = model.inr.render(calls[1][1], make_grid(32, 32), 4096)
    if boundary_sigma == 0:  # c_skip(t_mid) of the noisy image only under Eq. 12
        assert torch.equal(grid_img, on_grid) != query_skip
    else:  # the boundary skip lets under one 8-bit level of it in
        assert 0 < (grid_img - on_grid).abs().max() < 1 / 255
    assert big.shape == (2, 3, 48, 48) and grid_img.shape == (2, 3, 32, 32)


def test_t_mid_sets_the_second_step_noise_level_and_nothing_else():
    """--t_mid moves the second encode to that t; the first step and the 1-step samples stay as they were, and a
    level outside (t_min, T] is refused by the sampling scripts and by train.py alike."""
    import math
    from losses import with_t_mid
    model, _, lcfg = tiny_image(False, 0.02)
    calls, encode = [], model.encode
    model.encode = lambda x, c, q=None: calls.append(math.exp(4 * c[0].item())) or encode(x, c, q)
    two = model.inr.generate(model, [3, 4], 2, lcfg)[0]
    two_late = model.inr.generate(model, [3, 4], 2, with_t_mid(lcfg, 2.0))[0]
    one = model.inr.generate(model, [3, 4], 1, with_t_mid(lcfg, 2.0))[0]
    model.encode = encode
    assert calls == pytest.approx([80.0, 0.821, 80.0, 2.0, 80.0], rel=1e-5)
    assert torch.equal(one, model.inr.generate(model, [3, 4], 1, lcfg)[0])
    assert (two - two_late).abs().max() > 1e-3
    assert with_t_mid(lcfg, 0) is lcfg
    for bad in (0.002, 81.0):
        with pytest.raises(ValueError, match='--t_mid must be in'):
            with_t_mid(lcfg, bad)
        with pytest.raises(ValueError, match='--t_mid must be in'):
            train.parse_config(['--t_mid', str(bad)])


def test_denoise_reports_f_against_the_noisy_input_at_each_t(trained_ckpt, tmp_path):
    """sample.py --denoise: at t_min f is the noisy input itself under Eq. 12 (shifted c_skip = 1) and with the
    boundary skip, the render alone without either; the noisy input's PSNR falls with t as -20 log10(t) + const."""
    js, png = str(tmp_path / 'd.json'), str(tmp_path / 's_denoise.png')
    r = run([sys.executable, 'sample.py', '--ckpt', trained_ckpt, '--denoise', '--limit', '8', '--json', js,
             '--out', str(tmp_path / 's.png')])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.load(open(js))
    picture = np.asarray(Image.open(png))  # 8 images across; the clean row, then noisy and f rows for 7 t
    assert picture.shape == (15 * 34 + 2, 8 * 34 + 2, 3)
    clean = load_split(load(trained_ckpt)[1]).get(range(8)).numpy()
    assert np.abs(picture[2:34, 2:34].astype(int) - clean[0]).max() <= 1
    assert np.abs(picture[2:34, 2 + 7 * 34:2 + 7 * 34 + 32].astype(int) - clean[7]).max() <= 1
    assert out['n_images'] == 8 and [row['t'] for row in out['by_t']] == [0.01, 0.0865, 0.3, 0.821, 2.0, 10.0, 80.0]
    noisy = [row['psnr_noisy'] for row in out['by_t']]
    assert noisy[0] - noisy[1] == pytest.approx(20 * np.log10(8.65), abs=0.5)  # no clipping yet at these t
    for skip, boundary in ((True, 0.0), (False, 0.0), (False, 0.02)):
        model, cfg, lcfg = tiny_image(skip, boundary)
        row, = model.inr.evaluate_denoising(model, load_split(cfg), lcfg, ts=(0.003,), limit=8)['by_t']
        assert (row['psnr_f'] == row['psnr_noisy']) == (skip or boundary > 0)


def test_sample_cli_writes_png_and_npz(trained_ckpt, tmp_path):
    png, npz = str(tmp_path / 's.png'), str(tmp_path / 's.npz')
    r = run([sys.executable, 'sample.py', '--ckpt', trained_ckpt, '--n', '5', '--steps', '2', '--resolution', '64',
             '--out', png, '--npz', npz, '--batch', '2'])
    assert r.returncode == 0, r.stderr[-2000:]
    s = np.load(npz)['samples']
    assert s.shape == (5, 64, 64, 3) and s.dtype == np.uint8
    assert os.path.getsize(png) > 0


def test_fid_of_a_checkpoint_equals_fid_of_its_npz_samples(trained_ckpt, tmp_path):
    """fid.py --ckpt streams generation and features batch by batch; the same seeds written by sample.py --npz
    and compared as a sample set give the same pixel FD, and its reference statistics are cached."""
    import fid
    js, cache = str(tmp_path / 'f.json'), str(tmp_path / 'cache')
    args = ['--n', '40', '--batch', '16', '--steps', '2', '--t_mid', '1.5', '--features', 'pixels', '--ref', 'test',
            '--json', js]
    with pytest.warns(UserWarning):  # fewer samples than the 768 pixel features
        fid.main(['--ckpt', trained_ckpt, '--cache_dir', cache, *args])
    m = json.load(open(js))
    assert m['n'] == 40 and m['nfe'] == 2 and m['samples_per_s'] > 0 and 0 <= m['precision'] <= 1
    assert m['t_mid'] == 1.5 and m['steps'] == 2
    ref, = [os.path.join(cache, f) for f in os.listdir(cache) if f.startswith('ref_shapes_test_32_pixels_')]
    npz = str(tmp_path / 's.npz')
    r = run([sys.executable, 'sample.py', '--ckpt', trained_ckpt, '--n', '40', '--steps', '2', '--t_mid', '1.5',
             '--npz', npz, '--out', str(tmp_path / 's.png')])
    assert r.returncode == 0, r.stderr[-2000:]
    with pytest.warns(UserWarning):
        fid.main([npz, ref, '--features', 'pixels', '--json', js])
    assert json.load(open(js))['fd_pixels'] == pytest.approx(m['fd_pixels'], rel=1e-6)


def test_fid_encoded_scores_reconstructions_of_the_other_split(trained_ckpt, tmp_path):
    """fid.py --encoded: the reconstructions of the split other than --ref, scored as a sample set: the same FD as
    encode -> render of those images written to an npz by hand, and their PSNR is sample.py --encode's."""
    import fid
    from inr import make_grid, psnr, to_float, to_uint8
    js, cache = str(tmp_path / 'f.json'), str(tmp_path / 'cache')
    with pytest.warns(UserWarning):  # fewer samples than the 768 pixel features
        fid.main(['--ckpt', trained_ckpt, '--encoded', '--n', '40', '--batch', '16', '--features', 'pixels',
                  '--ref', 'test', '--cache_dir', cache, '--json', js])
    m = json.load(open(js))
    assert m['encoded'] == 'train' and m['n'] == 40
    model, cfg, lcfg, _ = load(trained_ckpt)
    train_split = load_split(cfg, 'train')
    x = to_float(train_split.get(range(40)))
    with torch.no_grad():
        rec = model.inr.render(losses.encode(model, x, lcfg), make_grid(32, 32), 4096)
    npz = str(tmp_path / 'r.npz')
    np.savez(npz, samples=to_uint8(rec).numpy())
    ref, = [os.path.join(cache, f) for f in os.listdir(cache) if f.startswith('ref_shapes_test_32_pixels_')]
    with pytest.warns(UserWarning):
        fid.main([npz, ref, '--features', 'pixels', '--json', js])
    assert json.load(open(js))['fd_pixels'] == pytest.approx(m['fd_pixels'], rel=1e-5)
    enc = model.inr.evaluate_encoding(model, train_split, lcfg, limit=40)['psnr']
    got = np.concatenate(list(model.inr.encoded_arrays(model, train_split, lcfg, 40, batch=16)))
    assert psnr(to_float(torch.from_numpy(got)), x).mean().item() == pytest.approx(enc, abs=0.1)


def test_encode_reports_finite_psnr_with_documented_keys(trained_ckpt, tmp_path):
    js = str(tmp_path / 'm.json')
    r = run([sys.executable, 'sample.py', '--ckpt', trained_ckpt, '--encode', '--limit', '8', '--json', js,
             '--out', str(tmp_path / 'e.png')])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(js))
    assert set(m) == {'n_images', 'split', 'resolution', 'psnr', 'psnr_2x', 'psnr_4x', 'ckpt', 'step'}
    assert m['n_images'] == 8 and m['split'] == 'test' and m['step'] == 6
    assert all(np.isfinite(m[k]) and 5 < m[k] < 60 for k in ('psnr', 'psnr_2x', 'psnr_4x'))
    assert os.path.getsize(str(tmp_path / 'e_encode.png')) > 0


def test_one_step_generation_learns_a_two_image_dataset(tmp_path):
    """Generation itself learns, not only encoding: trained through the CLI on a folder of two 8x8 images
    (tools/two_image.py), the 1-step samples from pure noise land on one training image or the other, far nearer
    to it than to the two images' mean (where a denoiser without consistency training leaves them). Measured
    (medians over the 64 samples, seeds 0 / 1): 25.7 / 26.5 dB to the nearer image against 14.0 / 13.7 to the mean;
    with an EMA of 0.99, whose ~100-step window lags a model still improving fast, 24.4 / 25.5."""
    from tools.two_image import score, train as train_two
    r = train_two(str(tmp_path), env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-2000:]
    nearest, to_mean = score(str(tmp_path / 'run' / 'ckpt.pt'))
    assert nearest > to_mean + 4, (nearest, to_mean)
    assert nearest > 24.0, nearest  # measured 25.7 (seed 0)


def test_sample_missing_checkpoint_is_a_clear_error(tmp_path):
    r = run([sys.executable, 'sample.py', '--ckpt', str(tmp_path / 'none.pt')])
    assert r.returncode != 0 and 'no checkpoint at' in r.stderr and 'Traceback' not in r.stderr

"""Failure behaviour: nothing lost (diverged, clobbered, interrupted or crashed runs), nothing run or misread that
should not be (bad files, bad options). Each test drives the real entry point with a fixture in the real format."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train  # noqa: E402
from data import SRNDataset, load_dataset, load_image, write_shapes3d  # noqa: E402

FAST = ['--batch_size', '4', '--max_iters', '6', '--warmup_iters', '2', '--ect_d', '2', '--log_interval', '1',
        '--sample_interval', '1000', '--ckpt_interval', '1000', '--max_minutes', '0', '--ema_decay', '0.9',
        '--lr_full', '0']


def run(args, timeout=300, **kw):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def train_fast(out, *extra, timeout=300):
    return run([sys.executable, 'train.py', *FAST, '--out_dir', str(out), *extra], timeout=timeout)


@pytest.fixture(scope='module')
def good_run(tmp_path_factory):
    """A finished 6-step run; tests copy it before they touch it."""
    out = tmp_path_factory.mktemp('good')
    r = train_fast(out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def weights(path):
    return torch.load(path, weights_only=True)


# --- 2: a diverged run never replaces the good checkpoint ------------------------------------------------------
def test_diverging_resume_skips_non_finite_steps_stops_and_keeps_the_good_checkpoint(good_run, tmp_path):
    out = copy_run(good_run, tmp_path / 'run')
    before = weights(out / 'ckpt.pt')
    r = train_fast(out, '--resume', '--max_iters', '40', '--lr', '1e20', '--lr_full', '1e20',
                   '--nonfinite_limit', '3')
    assert r.returncode == 1, r.stdout[-1000:] + r.stderr[-1000:]
    assert 'non-finite' in r.stderr and f"{out / 'ckpt.pt'} (step 6) is kept" in r.stderr
    after = weights(out / 'ckpt.pt')
    assert after['step'] == 6 and all(torch.equal(before['ema'][k], after['ema'][k]) for k in before['ema'])
    log = [json.loads(line) for line in open(out / 'log.jsonl')]  # strict JSON: no bare NaN
    assert max(rec.get('skipped_steps', 0) for rec in log) == 3


def test_sample_refuses_a_checkpoint_with_non_finite_weights(good_run, tmp_path):
    ckpt = weights(good_run / 'ckpt.pt')
    name = next(iter(ckpt['ema']))
    ckpt['ema'][name] = ckpt['ema'][name] * float('nan')
    torch.save(ckpt, tmp_path / 'nan.pt')
    r = run([sys.executable, 'sample.py', '--ckpt', str(tmp_path / 'nan.pt'), '--out', str(tmp_path / 's.png')])
    assert r.returncode != 0 and 'non-finite' in r.stderr and name in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path / 's.png').exists()


# --- 3: a fresh run never clobbers an existing one; one run per out_dir ----------------------------------------
def test_fresh_run_over_an_existing_checkpoint_is_refused_unless_overwrite(good_run, tmp_path):
    out = copy_run(good_run, tmp_path / 'run')
    before, n_log = weights(out / 'ckpt.pt'), len(open(out / 'log.jsonl').readlines())
    r = train_fast(out)
    assert r.returncode != 0 and '--resume' in r.stderr and '--overwrite' in r.stderr and 'step 6' in r.stderr
    kept = weights(out / 'ckpt.pt')['model']
    assert all(torch.equal(kept[k], before['model'][k]) for k in kept)
    assert len(open(out / 'log.jsonl').readlines()) == n_log
    r = train_fast(out, '--overwrite', '--max_iters', '3')
    assert r.returncode == 0, r.stderr[-2000:]
    assert weights(out / 'ckpt.pt')['step'] == 3
    assert [rec['step'] for rec in map(json.loads, open(out / 'log.jsonl')) if 'loss' in rec] == [1, 2, 3]


def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_named_and_cleared(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'train.lock').write_text(json.dumps({'pid': os.getpid(), 'host': os.uname().nodename}))
    r = train_fast(out)
    assert r.returncode != 0 and f'pid {os.getpid()}' in r.stderr and 'in use' in r.stderr
    assert not (out / 'ckpt.pt').exists()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (out / 'train.lock').write_text(json.dumps({'pid': dead.pid, 'host': os.uname().nodename}))
    (out / 'ckpt.pt.tmp12345').write_bytes(b'half a checkpoint')  # left by a killed write (item 9)
    r = train_fast(out, '--max_iters', '2')
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'stale lock' in r.stdout and f'pid {dead.pid}' in r.stdout
    assert weights(out / 'ckpt.pt')['step'] == 2
    assert not [f for f in os.listdir(out) if 'lock' in f or '.tmp' in f]  # lock released, tmp file cleaned


# --- 4: the FID reference cache knows which data it describes ------------------------------------------------
def write_images(root, n, seed, size=16):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f'{i:03d}.png')


def test_fid_reference_cache_is_keyed_on_the_data_it_describes(tmp_path):
    import fid
    write_images(tmp_path / 'a', 20, seed=1)
    write_images(tmp_path / 'b', 20, seed=2)
    from inr import ImageINR
    ex, inr = fid.Features('pixels'), ImageINR(resolution=16)
    cfg = {**train.defaults(), 'dataset': 'folder', 'resolution': 16}
    mu_a = fid.reference_stats(inr, {**cfg, 'data_dir': str(tmp_path / 'a')}, 'train', ex, 10, str(tmp_path / 'c'))[0]
    mu_b = fid.reference_stats(inr, {**cfg, 'data_dir': str(tmp_path / 'b')}, 'train', ex, 10, str(tmp_path / 'c'))[0]
    assert not np.allclose(mu_a, mu_b)
    mu_split = fid.reference_stats(inr, {**cfg, 'data_dir': str(tmp_path / 'a'), 'test_fraction': 0.5}, 'train', ex, 10,
                                   str(tmp_path / 'c'))[0]
    assert not np.allclose(mu_a, mu_split)
    write_images(tmp_path / 'a', 20, seed=3)  # same names, new contents
    os.utime(tmp_path / 'a' / '000.png', ns=(1, 1))
    mu_new = fid.reference_stats(inr, {**cfg, 'data_dir': str(tmp_path / 'a')}, 'train', ex, 10, str(tmp_path / 'c'))[0]
    assert not np.allclose(mu_a, mu_new)
    again = fid.reference_stats(inr, {**cfg, 'data_dir': str(tmp_path / 'a')}, 'train', ex, 10, str(tmp_path / 'c'))[0]
    assert np.array_equal(mu_new, again) and len(os.listdir(tmp_path / 'c')) == 4


# --- 5: too few samples for a covariance --------------------------------------------------------------------
def test_fid_refuses_fewer_than_two_samples_quickly(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / 'one.npz', samples=rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / 'many.npz', samples=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    t0 = time.time()
    r = run([sys.executable, 'fid.py', str(tmp_path / 'one.npz'), str(tmp_path / 'many.npz'), '--features', 'pixels'],
            timeout=120)
    assert r.returncode != 0 and 'at least 2 samples' in r.stderr and 'Traceback' not in r.stderr
    assert time.time() - t0 < 60
    import fid
    with pytest.warns(UserWarning, match='fewer samples .20. than feature dimensions .3072.'):
        fid.statistics(rng.normal(size=(20, 3072)))


# --- 6: 16-bit and transparent images ------------------------------------------------------------------------
def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 230, 16)[None].repeat(16, 0) * 257).round().astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / 'g16.png')
    assert Image.open(tmp_path / 'g16.png').mode.startswith('I')
    out = load_image(tmp_path / 'g16.png', 16)
    expected = np.linspace(0, 230, 16).round()
    assert out.dtype == np.uint8 and np.abs(out[0, :, 0].astype(float) - expected).max() <= 1
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (0, 0, 255, 255)    # opaque blue
    rgba[:, 8:12] = (255, 0, 0, 0)    # fully transparent red: the background shows
    rgba[:, 12:] = (0, 0, 0, 128)     # half-transparent black over white: mid grey
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
    out = load_image(tmp_path / 'a.png', 16).astype(int)
    assert (out[:, :8] == (0, 0, 255)).all() and (out[:, 8:12] == 255).all()
    assert (np.abs(out[:, 12:] - 127) <= 1).all()


# --- 7: SRN scenes are checked when the dataset opens; a crash mid-run keeps the run ---------------------------
def test_srn_scenes_are_validated_when_the_dataset_opens(tmp_path):
    root = write_shapes3d(tmp_path / 'cars_train', n_objects=3, n_views=3, resolution=16)
    SRNDataset(root, 16)
    (root / '00002' / 'pose' / '000001.txt').write_text(' '.join(['2'] * 16))
    with pytest.raises(ValueError, match='00002.*000001.txt.*not a rigid'):
        SRNDataset(root, 16)
    (root / '00002' / 'pose' / '000001.txt').write_text('1 0 0')
    with pytest.raises(ValueError, match='000001.txt holds 3 numbers'):
        SRNDataset(root, 16)
    write_shapes3d(tmp_path / 'b', n_objects=2, n_views=2, resolution=16)
    (tmp_path / 'b' / '00001' / 'intrinsics.txt').write_text('-5 8 8 0\n')
    with pytest.raises(ValueError, match='00001.intrinsics.txt.*focal'):
        SRNDataset(tmp_path / 'b', 16)
    write_shapes3d(tmp_path / 'c', n_objects=2, n_views=2, resolution=16)
    for f in (tmp_path / 'c' / '00000' / 'rgb').iterdir():
        f.unlink()
    with pytest.raises(ValueError, match='00000.rgb. holds no .png views'):
        SRNDataset(tmp_path / 'c', 16)


def test_a_crash_mid_run_writes_a_checkpoint_and_exits_non_zero(tmp_path):
    out = tmp_path / 'run'
    script = f"""
import sys
sys.path.insert(0, {ROOT!r})
import train
real = train.step_generator
def failing(seed, step, *a):
    if step == 4:  # the fifth step (steps count from 0)
        raise RuntimeError('simulated failure in step 5')
    return real(seed, step, *a)
train.step_generator = failing
train.main({[*FAST, '--out_dir', str(out)]!r})
"""
    r = run([sys.executable, '-c', script])
    assert r.returncode != 0 and 'simulated failure' in r.stderr
    assert 'checkpoint' in r.stderr and weights(out / 'ckpt.pt')['step'] == 4
    assert not (out / 'train.lock').exists()
    r = train_fast(out, '--resume')  # and the run goes on from there
    assert r.returncode == 0 and weights(out / 'ckpt.pt')['step'] == 6


# --- 8: options are checked before anything is built --------------------------------------------------------
@pytest.mark.parametrize('args,message', [
    (['--resolution', '0'], '--resolution must be a positive integer'),
    (['--resolution', '-8'], '--resolution must be a positive integer'),
    (['--patch', '0'], '--patch must be a positive integer'),
    (['--resolution', '30'], '--resolution 30 must be a multiple of --patch 4'),
    (['--batch_size', '0'], '--batch_size must be a positive integer'),
    (['--log_interval', '0'], '--log_interval must be a positive integer'),
    (['--ckpt_interval', '0'], '--ckpt_interval must be a positive integer'),
    (['--sample_interval', '-1'], '--sample_interval must be a positive integer'),
    (['--ect_d', '0'], '--ect_d must be a positive integer'),
    (['--n_samples', '0'], '--n_samples must be a positive integer'),
    (['--ema_decay', '1.5'], '--ema_decay must be in [0, 1)'),
    (['--huber_c', '-1'], '--huber_c must be >= 0'),
    (['--sigma_data', '0'], '--sigma_data must be > 0'),
    (['--lr', '0'], '--lr must be > 0'),
    (['--dataset', 'nonexistent'], "--dataset 'nonexistent' is not one of"),
    (['--inr', 'siren'], "--inr 'siren' is not one of"),
    (['--preset', 'huge'], "--preset 'huge' is not one of"),
    (['--near', '2', '--far', '1'], '--near 2.0 must be below --far 1.0'),
    (['--stage0_decay', '100'], "--stage0_decay cools stage 0's own lr down: set --stage0_lr too"),
    (['--token_conv', '2'], "--token_conv 2: the kernel must be odd"),
])
def test_bad_option_values_are_refused_with_a_message_each(args, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')):
        train.parse_config(args)


def test_every_bad_value_is_reported_at_once_before_anything_runs():
    r = run([sys.executable, 'train.py', '--batch_size', '0', '--ect_d', '0', '--ema_decay', '2'])
    assert r.returncode != 0 and 'Traceback' not in r.stderr
    for key in ('--batch_size', '--ect_d', '--ema_decay'):
        assert key in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is present')
def test_device_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match='--device cuda: no CUDA device'):
        train.parse_config(['--device', 'cuda'])


def test_preset_values_must_have_the_type_of_their_default(tmp_path, monkeypatch):
    configs = tmp_path / 'configs'
    configs.mkdir()
    (configs / 'bad.py').write_text("query_skip = 'False'\n")
    monkeypatch.setattr(train, 'CONFIG_DIR', str(configs))
    with pytest.raises(ValueError, match=r"bad.py: query_skip = 'False' must be a bool"):
        train.parse_config(['--config', 'bad'])
    (configs / 'bad.py').write_text("max_iters = 2.9\n")
    with pytest.raises(ValueError, match=r"bad.py: max_iters = 2.9 must be an int"):
        train.parse_config(['--config', 'bad'])
    (configs / 'ok.py').write_text("max_iters = 2e3\nlr = 1\n")
    cfg = train.parse_config(['--config', 'ok'])
    assert cfg['max_iters'] == 2000 and type(cfg['max_iters']) is int and cfg['lr'] == 1.0


def test_world_size_not_dividing_the_batch_is_an_error_not_an_assert(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', RANK='0', WORLD_SIZE='3', LOCAL_RANK='0',
               MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
    r = subprocess.run([sys.executable, '-O', 'train.py', *FAST, '--out_dir', str(tmp_path / 'r')], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and '--batch_size 4 must be a multiple of the 3 processes' in r.stderr


# --- 9: smaller ones ---------------------------------------------------------------------------------------
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    (tmp_path / 'x.pt').write_text('hello, I am a text file')
    with pytest.raises(ValueError, match=r'x.pt is not a PyTorch checkpoint'):
        train.load_checkpoint(str(tmp_path / 'x.pt'))
    import fid
    with pytest.raises(ValueError, match=r'x.pt is not a PyTorch file'):
        fid.load_inception(str(tmp_path / 'x.pt'))


@pytest.mark.parametrize('sig,code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_checkpoints_between_steps_and_exits_with_the_signal_code(tmp_path, sig, code):
    out = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, 'train.py', *FAST, '--max_iters', '100000', '--out_dir', str(out)],
                         cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / 'log.jsonl').exists():
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-2000:]
    ckpt = weights(out / 'ckpt.pt')
    logged = [rec['step'] for rec in map(json.loads, open(out / 'log.jsonl')) if 'loss' in rec]
    assert ckpt['step'] == logged[-1]  # the checkpoint is of a whole step: the one last logged
    assert not (out / 'train.lock').exists()


def test_log_holds_strict_json_when_a_value_is_not_finite(tmp_path):
    train.log_json(str(tmp_path), {'step': 1, 'loss': float('nan'), 'x': float('inf'), 'ok': 1.5})
    assert json.loads(open(tmp_path / 'log.jsonl').read(), parse_constant=lambda c: pytest.fail(c)) == \
        {'step': 1, 'loss': None, 'x': None, 'ok': 1.5}


def test_celeba_cache_follows_file_contents(tmp_path):
    write_images(tmp_path / 'hq', 10, seed=1)
    cache = tmp_path / 'cache'
    a = load_dataset('celeba', 'train', 16, str(tmp_path / 'hq'), cache_dir=str(cache)).array.copy()
    write_images(tmp_path / 'hq', 10, seed=2)  # same names, other pictures
    os.utime(tmp_path / 'hq' / '000.png', ns=(10**9, 10**9))
    b = load_dataset('celeba', 'train', 16, str(tmp_path / 'hq'), cache_dir=str(cache)).array
    assert not np.array_equal(a, b)


def test_too_few_images_or_views_get_a_message(tmp_path):
    write_images(tmp_path / 'one', 1, seed=0)
    with pytest.raises(ValueError, match='holds 1 image; a train and a test split need at least 2'):
        load_dataset('folder', 'train', 16, str(tmp_path / 'one'))

"""nerf.py: camera conventions, ray directions, volume rendering, token-generated MLP weights, gradient flow."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data import (SHAPES3D_FOCAL, SRNDataset, read_srn_intrinsics, read_srn_pose, render_shapes3d, shapes3d_cache,
                  shapes3d_parts, write_shapes3d)
from model import HyperConfig, HyperNetwork
from nerf import NeRFINR, check_pose, get_rays, hemisphere_poses, look_at, nerf_batch, srn_to_opengl, volume_render


def passes_through_origin(o, d):
    return torch.linalg.cross(o, d).norm().item() < 1e-5 and torch.dot(-o, d).item() > 0


@pytest.mark.parametrize('eye', [(1.3, 0.0, 0.2), (0.3, -0.9, 0.8), (-0.5, 0.5, 1.1)])
def test_principal_ray_of_a_camera_looking_at_the_origin_hits_it(eye):
    pose = look_at(eye)
    check_pose(pose)
    o, d = get_rays(pose, focal=1.0, cx=0.5, cy=0.5, H=1, W=1)  # the one pixel centre is the principal point
    assert passes_through_origin(o[0, 0], d[0, 0])


def test_pixel_centre_directions_for_known_intrinsics():
    o, d = get_rays(torch.eye(4), focal=2.0, cx=2.0, cy=1.0, H=2, W=4)
    assert d.shape == (2, 4, 3) and torch.all(o == 0)
    for i in range(2):
        for j in range(4):
            expect = F.normalize(torch.tensor([(j + 0.5 - 2.0) / 2.0, -(i + 0.5 - 1.0) / 2.0, -1.0]), dim=0)
            assert torch.allclose(d[i, j], expect, atol=1e-6), (i, j)


def test_srn_pose_file_converts_to_opengl(tmp_path):
    """An OpenCV-style pose in SRN's on-disk layout (one line of 16 numbers) looks at the origin after conversion."""
    eye = np.array([0.4, -1.0, 0.6])
    z = -eye / np.linalg.norm(eye)                      # OpenCV: +z looks forward, at the origin
    x = np.cross(z, [0, 0, 1.0]); x /= np.linalg.norm(x)
    y = np.cross(z, x)                                  # +y points down
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = np.stack([x, y, z], 1), eye
    (tmp_path / 'pose').mkdir()
    np.savetxt(tmp_path / 'pose' / '000000.txt', pose.reshape(1, 16))
    (tmp_path / 'intrinsics.txt').write_text('131.25 64. 64. 0.\n0. 0. 0.\n1.\n128 128\n')
    focal, cx, cy = read_srn_intrinsics(tmp_path / 'intrinsics.txt')
    assert (focal, cx, cy) == (131.25, 64.0, 64.0)
    gl = srn_to_opengl(read_srn_pose(tmp_path / 'pose' / '000000.txt'))
    check_pose(gl)
    o, d = get_rays(gl, focal, cx, cy, 128, 128)
    centre = (d[63, 63] + d[63, 64] + d[64, 63] + d[64, 64]) / 4   # the principal point lies between 4 centres
    assert passes_through_origin(o[0, 0], F.normalize(centre, dim=0))
    # the top image row looks up (+z in the world here), as a photo should
    assert d[0, 64, 2] > d[127, 64, 2]


def test_bad_pose_and_pose_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match='not a rigid'):
        check_pose(torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])))
    (tmp_path / 'p.txt').write_text('1 0 0\n0 1 0\n')
    with pytest.raises(ValueError, match='holds 6 numbers; expected 16'):
        read_srn_pose(tmp_path / 'p.txt')


@pytest.mark.parametrize('sigma', [0.0, 0.5, 3.0])
def test_constant_density_slab_transmittance_and_empty_space(sigma):
    """Black matter of density sigma filling [near, far]: the white background shows through exp(-sigma L)."""
    field = lambda p: (torch.full((*p.shape[:-1], 3), -1e4), torch.full(p.shape[:-1], sigma))  # noqa: E731
    o, d = torch.zeros(5, 3), F.normalize(torch.randn(5, 3), dim=-1)
    for offsets in (None, torch.rand(5, 32)):  # evaluation and jittered training samples
        colour, weights = volume_render(field, o, d, 0.8, 1.8, 32, offsets)
        assert torch.allclose(colour, torch.full((5, 3), math.exp(-sigma * 1.0)), atol=1e-5)
    if sigma == 0:
        assert torch.equal(colour, torch.ones(5, 3)) and torch.all(weights == 0)


def test_token_generated_weights_have_documented_shapes_and_unit_columns():
    m = NeRFINR(depth=6, width=256, token_dim=64, groups=32, num_freqs=8)
    assert m.num_tokens == 5 * 32 + 1
    ws = m.weights(torch.randn(3, m.num_tokens, 64))
    assert [tuple(w.shape) for w in ws] == [(3, 3 + 6 * 8 + 1, 256)] + [(3, 257, 256)] * 4 + [(3, 257, 4)]
    for w in ws:
        assert torch.allclose(w.norm(dim=1), torch.ones(w.shape[0], w.shape[2]), atol=1e-5)
    # each token owns its own columns: changing token 0 changes only the first 256/32 columns of layer 0
    beta = torch.randn(1, m.num_tokens, 64)
    beta2 = beta.clone()
    beta2[0, 0] += 1
    diff = (m.weights(beta)[0] - m.weights(beta2)[0]).abs().sum(1)[0]
    assert diff[:8].min() > 0 and diff[8:].max() == 0


def test_gradients_reach_the_hypernetwork_from_rendered_pixels():
    torch.manual_seed(0)
    inr = NeRFINR(depth=3, width=32, token_dim=32, groups=4, num_freqs=4, resolution=16, patch=8, n_samples=8)
    hyper = HyperNetwork(HyperConfig(token_dim=9 * 64, grid=2, dim=32, ff_dim=64, heads=2, enc_depth=1,
                                     dec_depth=1, inr_tokens=inr.num_tokens, inr_token_dim=32))
    for block in hyper.encoder:
        torch.nn.init.normal_(block.ada[-1].weight, std=0.02)
    pose = look_at((1.3, 0.0, 0.4))[None, None].expand(2, 1, 4, 4)
    o, d = get_rays(pose, 20.0, 8.0, 8.0, 16, 16)                  # (2, 1, 16, 16, 3)
    rgb = torch.rand(2, 1, 3, 16, 16)
    beta = hyper(inr.tokenize(rgb, {'support_origins': o, 'support_dirs': d}), torch.zeros(2))
    q_o, q_d = get_rays(look_at((0.0, 1.3, 0.4))[None].expand(2, 4, 4), 20.0, 8.0, 8.0, 4, 4)
    pixels = inr.render_rays(beta, q_o.reshape(2, -1, 3), q_d.reshape(2, -1, 3), torch.rand(2, 16, 8))
    assert pixels.shape == (2, 16, 3) and pixels.min() >= 0 and pixels.max() <= 1 + 1e-6
    (pixels - 0.3).square().sum().backward()
    for name, p in list(hyper.named_parameters()) + list(inr.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_chunked_render_equals_one_pass():
    torch.manual_seed(0)
    m = NeRFINR(depth=3, width=32, token_dim=16, groups=4, num_freqs=4, n_samples=8)
    beta = torch.randn(2, m.num_tokens, 16)
    o = torch.randn(2, 50, 3) * 0.1 + torch.tensor([0, 0, 1.3])
    d = F.normalize(-o + 0.05 * torch.randn(2, 50, 3), dim=-1)
    assert torch.allclose(m.render_rays(beta, o, d, chunk=7), m.render_rays(beta, o, d), atol=1e-6)


# --- SRN layout loader and the shapes3d generator ------------------------------------------------------------
def test_shapes3d_is_written_in_srn_layout_and_loads(tmp_path):
    root = write_shapes3d(tmp_path / 'train', n_objects=2, n_views=5, resolution=16)
    scene = root / '00000'
    assert sorted(p.name for p in scene.iterdir()) == ['intrinsics.txt', 'pose', 'rgb']
    assert len(list((scene / 'rgb').glob('*.png'))) == 5 and len(list((scene / 'pose').glob('*.txt'))) == 5
    ds = SRNDataset(root, 16)
    images, poses, (focal, cx, cy) = ds.get(1, [0, 3])
    assert len(ds) == 2 and images.shape == (2, 16, 16, 3) and poses.shape == (2, 4, 4)
    assert (cx, cy) == (8.0, 8.0) and focal == pytest.approx(1.2 * 16)
    for img, pose in zip(images, poses):
        o, d = get_rays(pose, focal, cx, cy, 1, 1)
        assert o[0, 0].norm().item() == pytest.approx(1.3, abs=1e-5)       # on the sphere of radius 1.3
        img = img.float()
        assert (img[0, 0] == 255).all() and (img[7:9, 7:9] < 250).any()     # white corner, object in the middle
    # the same object from two views: different pictures of the same colours
    assert not torch.equal(images[0], images[1])


def test_srn_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='cars_train/<scene>'):
        SRNDataset(tmp_path / 'none', 16)
    root = write_shapes3d(tmp_path / 'train', n_objects=1, n_views=2, resolution=16)
    with pytest.raises(ValueError, match='is 16x16, expected 32x32'):
        SRNDataset(root, 32).get(0, [0])
    (root / '00000' / 'pose' / '000001.txt').write_text(' '.join(['2'] * 16))
    with pytest.raises(ValueError, match='not a rigid'):
        SRNDataset(root, 16).get(0, [1])
    (root / '00000' / 'pose' / '000001.txt').unlink()
    with pytest.raises(FileNotFoundError, match='000001.txt is missing'):
        SRNDataset(root, 16)


def test_shapes3d_objects_are_centred_so_a_lone_sphere_sits_in_the_middle_of_every_view():
    """v2: each object's parts are moved so their mean centre is the origin, the point every camera looks at."""
    lone = [o for o in range(200) if [p['kind'] for p in shapes3d_parts(0, o)] == ['sphere']][:2]
    assert len(lone) == 2
    for obj in lone:
        for pose in hemisphere_poses(4, seed=obj):
            img = render_shapes3d(0, obj, pose, SHAPES3D_FOCAL * 32, 32)
            ys, xs = np.nonzero((img < 250).any(-1))
            assert len(ys) > 20 and abs(ys.mean() - 15.5) < 0.3 and abs(xs.mean() - 15.5) < 0.3  # centre: 15.5 px


def test_shapes3d_depth_ambiguity_costs_more_the_further_the_object_moves():
    """`python data.py`: moving objects along the support camera's axis hurts the other views more the further
    they move, and hedging over the depths (truth included) beats one wrong guess."""
    from tools.depth_ambiguity import shapes3d_depth_ambiguity
    r = shapes3d_depth_ambiguity((0.02, 0.2), n_objects=2, n_views=4, resolution=16)
    assert r[0.2][0] < r[0.02][0] - 3 and r[0.2][1] < r[0.02][1]
    assert all(hedged > wrong for wrong, hedged in r.values())


def test_shapes3d_cache_written_by_two_processes_at_once(tmp_path, monkeypatch):
    """DDP ranks generate the same deterministic set side by side: the one that finishes second uses the
    first one's copy instead of failing on the rename, and leaves no temporary folder behind."""
    import data
    real = data.write_shapes3d

    def racing(out, n_objects, n_views, resolution, seed, test=False):
        real(out.parent / 'test', 1, 2, resolution, seed, test)  # the other rank got there first
        return real(out, 1, 2, resolution, seed, test)

    monkeypatch.setattr(data, 'write_shapes3d', racing)
    ds = data.load_dataset('shapes3d', 'test', 16, cache_dir=str(tmp_path))
    assert len(ds) == 1 and sorted(p.name for p in shapes3d_cache(tmp_path, 16, 0).iterdir()) == ['test']


def test_tiny_hypernetwork_and_nerf_overfit_one_object(tmp_path):
    """From any one view of an object, predict its other views: novel-view PSNR passes 22 dB (about 10 s)."""
    torch.manual_seed(0)
    ds = SRNDataset(write_shapes3d(tmp_path / 'train', 1, 8, 16), 16)
    imgs, poses, (f, cx, cy) = ds.get(0, range(8))
    x = imgs.permute(0, 3, 1, 2).float() / 127.5 - 1                    # (V, 3, H, W) in [-1, 1]
    o, d = get_rays(poses, f, cx, cy, 16, 16)                             # (V, H, W, 3)
    inr = NeRFINR(depth=4, width=64, token_dim=64, groups=8, num_freqs=6, resolution=16, patch=4, n_samples=24)
    hyper = HyperNetwork(HyperConfig(token_dim=9 * 16, grid=4, dim=64, ff_dim=128, heads=2, enc_depth=2,
                                     dec_depth=2, inr_tokens=inr.num_tokens, inr_token_dim=64))
    opt = torch.optim.Adam(list(hyper.parameters()) + list(inr.parameters()), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    flat = lambda a, idx: torch.gather(a.reshape(4, 256, 3), 1, idx[..., None].expand(-1, -1, 3))  # noqa: E731
    best = 0.0
    for step in range(400):
        s, q = torch.randint(0, 8, (4,), generator=g), torch.randint(0, 8, (4,), generator=g)
        beta = hyper(inr.tokenize(x[s][:, None], {'support_origins': o[s][:, None], 'support_dirs': d[s][:, None]}),
                     torch.full((4,), -1.45))
        pix = torch.randint(0, 256, (4, 128), generator=g)
        pred = inr.render_rays(beta, flat(o[q], pix), flat(d[q], pix), torch.rand(4, 128, 24, generator=g)) * 2 - 1
        loss = (pred - flat(x[q].permute(0, 2, 3, 1), pix)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():  # support = view 0, evaluated on the other seven views, no jitter
                rays = {'support_origins': o[:1, None].expand(7, -1, -1, -1, -1),
                        'support_dirs': d[:1, None].expand(7, -1, -1, -1, -1),
                        'origins': o[1:].reshape(7, -1, 3), 'dirs': d[1:].reshape(7, -1, 3)}
                beta = hyper(inr.tokenize(x[:1, None].expand(7, -1, -1, -1, -1), rays), torch.full((7,), -1.45))
                pred = inr.render(beta, rays)
                mse = ((pred - x[1:].permute(0, 2, 3, 1).reshape(7, -1, 3)) / 2).square().mean((1, 2))
                best = max(best, (-10 * torch.log10(mse)).mean().item())
            if best > 22:
                break
    assert best > 22, f"novel-view PSNR only reached {best:.2f} dB"


# --- the NeRF path through train.py and sample.py ------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nerf_batch_layout(tmp_path):
    ds = SRNDataset(write_shapes3d(tmp_path / 'train', 3, 4, 16), 16)
    b = nerf_batch(ds, [0, 2], rays_per_object=10, n_samples=6, generator=torch.Generator().manual_seed(0),
                   device='cpu')
    assert b['support'].shape == (2, 1, 3, 16, 16) and b['target'].shape == (2, 10, 3)
    q = b['query']
    assert q['support_origins'].shape == (2, 1, 16, 16, 3) and q['origins'].shape == (2, 10, 3)
    assert q['offsets'].shape == (2, 10, 6) and 0 <= q['offsets'].min() and q['offsets'].max() < 1
    assert b['support'].min() >= -1 and b['support'].max() <= 1
    # support and query are different views: their camera centres differ
    assert (q['support_origins'][:, 0, 0, 0] - q['origins'][:, 0]).norm(dim=-1).min() > 1e-3


def test_shapes3d_train_encode_and_orbit_end_to_end(tmp_path):
    cache = shapes3d_cache(tmp_path / 'cache', 16, 0)
    write_shapes3d(cache / 'train', 3, 4, 16)
    write_shapes3d(cache / 'test', 2, 4, 16, test=True)
    out = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, 'train.py', '--dataset', 'shapes3d', '--cache_dir', str(tmp_path / 'cache'),
                        '--resolution', '16', '--batch_size', '2', '--rays_per_object', '16', '--n_samples', '8',
                        '--max_iters', '4', '--warmup_iters', '2', '--ect_d', '1', '--sample_interval', '4',
                        '--max_minutes', '0', '--out_dir', str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    grids = ('nerf_views.png', 'nerf_samples_1step.png', 'nerf_samples_2step.png')
    assert all((out / f).stat().st_size > 0 for f in grids)
    ckpt = str(out / 'ckpt.pt')
    js = tmp_path / 'm.json'
    r = subprocess.run([sys.executable, 'sample.py', '--ckpt', ckpt, '--encode', '--json', str(js), '--out',
                        str(tmp_path / 'e.png')], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(js))
    assert set(m) == {'n_scenes', 'split', 'resolution', 'support_view', 'psnr', 'psnr_copy_support', 'psnr_white',
                      'ckpt', 'step'}
    assert m['n_scenes'] == 2 and m['split'] == 'test' and 3 < m['psnr'] < 60
    # the two no-3D baselines, recomputed from the PNG files (support view 0, PSNR per view, mean per scene)
    from PIL import Image
    views = [np.stack([np.asarray(Image.open(f), np.float64) / 255 for f in sorted((cache / 'test' / s / 'rgb').iterdir())])
             for s in ('00000', '00001')]
    db = lambda a, b: -10 * np.log10(((a - b) ** 2).mean((1, 2, 3)))  # noqa: E731
    assert m['psnr_copy_support'] == pytest.approx(np.mean([db(v[:1], v[1:]).mean() for v in views]), abs=1e-3)
    assert m['psnr_white'] == pytest.approx(np.mean([db(np.ones_like(v[1:]), v[1:]).mean() for v in views]), abs=1e-3)
    r = subprocess.run([sys.executable, 'sample.py', '--ckpt', ckpt, '--encode', '--split', 'train', '--json', str(js),
                        '--out', str(tmp_path / 'e.png')], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m_train = json.load(open(js))  # the 3 training objects, another set than the 2 test objects
    assert m_train['n_scenes'] == 3 and m_train['split'] == 'train' and m_train['psnr'] != m['psnr']
    r = subprocess.run([sys.executable, 'sample.py', '--ckpt', ckpt, '--n', '2', '--out', str(tmp_path / 'o.png')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(tmp_path / 'o.gif') as gif:
        assert gif.n_frames == 24 and gif.size == (2 * 16, 16)
    r = subprocess.run([sys.executable, 'sample.py', '--ckpt', ckpt, '--n', '2', '--steps', '2', '--resolution', '24',
                        '--out', str(tmp_path / 'o2.png')], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with Image.open(tmp_path / 'o2.gif') as gif:  # any resolution: the orbit camera's focal length scales with it
        assert gif.n_frames == 24 and gif.size == (2 * 24, 24)

    # mNIF FID protocol: one generated object per test scene at each of its 4 poses, against all 2 x 4 test views
    r = subprocess.run([sys.executable, 'sample.py', '--ckpt', ckpt, '--npz', str(tmp_path / 'gen.npz')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    gen = np.load(tmp_path / 'gen.npz')['samples']
    assert gen.shape == (2 * 4, 16, 16, 3) and gen.dtype == np.uint8
    import fid
    from data import load_split
    from losses import LossConfig
    from model import load
    model, ck = load(ckpt)
    test = load_split(ck['config'])
    arrays = model.inr.sample_arrays(model, test, LossConfig(**ck['loss']), 0, 0, 1)
    assert np.array_equal(np.concatenate(list(arrays)), gen)  # per-scene seeds
    assert not np.array_equal(gen[:4], gen[4:])  # a different object for each scene
    real = np.concatenate(list(model.inr.reference_arrays(test)))
    assert np.array_equal(real[5], test.get(1, [1])[0][0].numpy())  # scene-major: scene 1, view 1
    fake_path, real_path = tmp_path / 'gen.npz', tmp_path / 'real.npz'
    np.savez(real_path, samples=real)
    js = tmp_path / 'fid.json'
    with pytest.warns(UserWarning):  # fewer than 2,048 samples
        fid.main([str(fake_path), str(real_path), '--features', 'pixels', '--json', str(js)])
    by_npz = json.load(open(js))['fd_pixels']
    with pytest.warns(UserWarning):
        fid.main(['--ckpt', ckpt, '--features', 'pixels', '--cache_dir', str(tmp_path / 'fidcache'), '--json', str(js)])
    m = json.load(open(js))
    assert m['n'] == 8 and m['fd_pixels'] == pytest.approx(by_npz, rel=1e-6) and m['fd_pixels'] > 0
    with pytest.warns(UserWarning):
        fid.main(['--ckpt', ckpt, '--steps', '2', '--features', 'pixels', '--cache_dir', str(tmp_path / 'fidcache'),
                  '--json', str(js)])
    m2 = json.load(open(js))
    assert m2['n'] == 8 and m2['nfe'] == 2 and m2['fd_pixels'] != m['fd_pixels']


def tiny_nerf(dataset):
    """An untrained tiny NeRF model of a preset at 16^2, its loss config and one camera looking at the origin."""
    import train
    from model import build_model
    cfg = train.parse_config(['--dataset', dataset, '--preset', 'tiny', '--resolution', '16', '--patch', '4'])
    torch.manual_seed(0)
    camera = get_rays(look_at((0.0, -1.3, 0.6)), 19.2, 8, 8, 16, 16)
    return build_model(**train.model_args(cfg)).eval(), train.loss_config(cfg), camera


@pytest.mark.parametrize('steps', [1, 2])
@pytest.mark.parametrize('dataset', ['shapes3d', 'srn_cars'])
def test_nerf_generation_can_reach_white_under_each_nerf_preset(dataset, steps):
    """An empty field (white background) must generate white. Under Eq. 12 (srn_cars) a 1-step NeRF is
    c_out(T) M_beta, M_beta renders in [-1, 1], so that needs c_out(80) ~ 1: sigma_data = 1 (0.5 gives mid-grey);
    its 2-step NeRF is M_beta re-encoded at t_min (not c_out(t_mid) M_beta = 0.63 x white). Without the query
    skip (shapes3d) it is M_beta itself at either step."""
    model, lcfg, (o, d) = tiny_nerf(dataset)
    model.inr.density_scale = 0.0                                # nothing anywhere: every ray sees the background
    gen = model.inr.generate_rays(model, [0], lcfg, (o, d), (o[None], d[None]), steps)
    assert gen.shape == (1, 1, 3, 16, 16) and gen.min() > 0.999


@pytest.mark.parametrize('dataset', ['shapes3d', 'srn_cars'])
def test_two_step_nerf_generation_renoises_the_first_object_at_t_mid(dataset):
    """Step 2 encodes the 1-step object seen from the support camera under fresh noise of std t_mid; under Eq. 12
    one more pass re-encodes the support-view image at t_min. Samples do not depend on the batch."""
    from losses import c_in
    model, lcfg, (o, d) = tiny_nerf(dataset)
    orbit = get_rays(torch.stack(hemisphere_poses(3, radius=1.4)), 19.2, 8, 8, 16, 16)
    calls, encode = [], model.encode
    model.encode = lambda x, c, q: calls.append((x, c)) or encode(x, c, q)
    two = model.inr.generate_rays(model, [5, 6], lcfg, (o, d), orbit, 2)
    times = [math.exp(4 * c[0].item()) for _, c in calls]
    assert times == pytest.approx([80.0, 0.821] + ([lcfg.t_min] if dataset == 'srn_cars' else []), rel=1e-5)
    first = model.inr.generate_rays(model, [5, 6], lcfg, (o, d), (o[None], d[None]), 1)     # (2, 1, 3, 16, 16)
    noise = (calls[1][0] / c_in(torch.tensor(0.821), lcfg) - first) / math.sqrt(0.821 ** 2 - lcfg.t_min ** 2)
    assert noise.std().item() == pytest.approx(1, abs=0.1) and abs(noise.mean().item()) < 0.1
    assert (noise - calls[0][0] / c_in(torch.tensor(80.0), lcfg) / 80).abs().mean() > 0.5  # not the first noise
    model.encode = encode
    assert two.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(model.inr.generate_rays(model, [6], lcfg, (o, d), orbit, 2)[0], two[1], atol=1e-5)
    assert (two - model.inr.generate_rays(model, [5, 6], lcfg, (o, d), orbit, 1)).abs().max() > 1e-3

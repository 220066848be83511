"""The occupancy modality: analytic voxelisation, the binvox / npy readers, the INR and its pictures, the
shape-generation metrics, and the modality through train.py and sample.py."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import VoxelDataset, load_dataset, read_binvox, read_voxels, voxelize, voxelize_solids, write_binvox  # noqa: E402
from losses import INRCTLoss, LossConfig  # noqa: E402
from model import build_model  # noqa: E402
from occupancy import (CAMERA_EYE, chamfer, iou, make_grid3, render_depth, shape_metrics, surface_points,  # noqa: E402
                       to_float_voxels)


def sphere(radius, centre=(0.0, 0.0, 0.0)):
    return dict(kind='sphere', rot=np.eye(3), centre=np.array(centre), size=radius, aspect=np.ones(3))


# --- analytic voxelisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize('index', [0, 3, 11])
def test_pooling_the_2x_grid_gives_the_1x_grid(index):
    one = voxelize_solids(0, index, 16).astype(np.float64)
    two = voxelize_solids(0, index, 32).astype(np.float64).reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))
    assert np.abs(one - two).max() <= 1.0  # one 8-bit level: 1/255 of full occupancy
    assert one.max() == 255 and one.min() == 0


def test_a_spheres_voxel_volume_is_four_thirds_pi_r_cubed():
    for r in (0.5, 0.7):
        grid = voxelize([sphere(r)], 32).astype(np.float64) / 255
        assert grid.sum() * (2 / 32) ** 3 == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.01)


def test_shapes_occ_objects_are_normalised_to_the_cube_as_shapenets():
    """Each union is centred and scaled so its bounding box's longest side spans 0.9 of the cube: every voxel it
    touches lies inside that central box, and objects are large (un-normalised, the median side was 19 of 32)."""
    sides = []
    for i in range(60):
        idx = np.argwhere(voxelize_solids(0, i, 32) > 0)
        assert idx.min() >= 1 and idx.max() <= 30  # 0.9 of 32 voxels, centred: [1.6, 30.4]
        sides.append((idx.max(0) - idx.min(0) + 1).max())
    assert np.median(sides) >= 23 and max(sides) >= 28


def test_shapes_occ_is_the_same_objects_at_any_resolution(tmp_path):
    ds = load_dataset('shapes_occ', 'test', 16, cache_dir=str(tmp_path))
    assert len(ds) == 200 and ds.get([0, 5]).shape == (2, 16, 16, 16) and ds.get([0]).dtype == torch.uint8
    assert torch.equal(ds.get([7]), torch.from_numpy(voxelize_solids(0, 4000 + 7, 16))[None])
    big = ds.get([7], resolution=32).double().reshape(1, 16, 2, 16, 2, 16, 2).mean(dim=(2, 4, 6))
    assert (big - ds.get([7]).double()).abs().max() <= 1.0
    assert any(f.name.startswith('shapes_occ') for f in tmp_path.iterdir())  # voxelised once, then read


# --- binvox and npy -----------------------------------------------------------------------------------------
def test_binvox_reader_follows_the_formats_x_z_y_order(tmp_path):
    """binvox runs y fastest, then z, then x: index = x * D^2 + z * D + y. One voxel per axis, written by hand."""
    for (x, y, z) in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        i = x * 4 + z * 2 + y
        runs = [(0, i), (1, 1), (0, 7 - i)]
        path = tmp_path / f'{x}{y}{z}.binvox'
        path.write_bytes(b'#binvox 1\ndim 2 2 2\ntranslate 0 0 0\nscale 1\ndata\n'
                         + bytes(v for run in runs if run[1] for v in run))
        grid = read_binvox(path)
        assert grid.shape == (2, 2, 2) and grid.sum() == 1 and grid[x, y, z]


def test_binvox_round_trip_and_resampling(tmp_path):
    occ = voxelize_solids(0, 2, 32) > 127
    write_binvox(tmp_path / 'a.binvox', occ)
    assert np.array_equal(read_binvox(tmp_path / 'a.binvox'), occ)
    down = read_voxels(tmp_path / 'a.binvox', 16)  # box-filtered: the fraction of each 2^3 block
    assert down.shape == (16, 16, 16)
    assert np.abs(down / 255 - occ.reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))).max() <= 0.5 / 255


@pytest.mark.parametrize('content,message', [
    (b'PK\x03\x04 not a voxel file', 'not a binvox file'),
    (b'#binvox 1\ndim 4 4 4\ndata\n' + bytes([1, 30]), 'truncated or corrupt'),
    (b'#binvox 1\ndim 4 4 2\ndata\n' + bytes([0, 32]), 'not cubic'),
    (b'#binvox 1\ndim 4 4 4\n', 'truncated'),
])
def test_bad_binvox_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / 'bad.binvox'
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as e:
        read_binvox(path)
    assert str(path) in str(e.value)


def test_voxel_folder_splits_by_hash_and_reads_npy_without_pickle(tmp_path):
    root = tmp_path / 'shapenet'
    for c in ('chair', 'plane'):
        (root / c).mkdir(parents=True)
        for i in range(6):
            occ = voxelize_solids(1, i + (10 if c == 'plane' else 0), 16) > 127
            if i % 2:
                np.save(root / c / f'{i}.npy', occ)
            else:
                write_binvox(root / c / f'{i}.binvox', occ)
    train = load_dataset('voxels', 'train', 16, str(root), test_fraction=0.3, cache_dir=str(tmp_path / 'c'))
    test = load_dataset('voxels', 'test', 16, str(root), test_fraction=0.3, cache_dir=str(tmp_path / 'c'))
    assert len(train) + len(test) == 12 and len(test) >= 1 and train.data_kind == 'voxels'
    np.save(root / 'chair' / 'evil.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match='evil.npy'):
        read_voxels(root / 'chair' / 'evil.npy', 16)
    np.save(root / 'chair' / 'flat.npy', np.zeros((16, 16, 8), bool))
    with pytest.raises(ValueError, match='flat.npy.*cubic'):
        read_voxels(root / 'chair' / 'flat.npy', 16)


# --- the INR, its pictures -----------------------------------------------------------------------------------
def tiny_occ(resolution=16, patch=4):
    torch.manual_seed(0)
    return build_model('tiny', resolution, patch, 8.0, modality='occupancy')


def test_chunked_render_equals_one_pass_and_grids_match_points():
    model = tiny_occ()
    beta = torch.randn(2, 64, 64)
    grid = make_grid3(12)
    whole = model.inr.render(beta, grid)
    assert whole.shape == (2, 1, 12, 12, 12)
    assert torch.allclose(model.inr.render(beta, grid, chunk=100), whole, atol=1e-6)
    pts = grid.reshape(1, -1, 3)[:, [5, 77, 1000]]
    assert torch.allclose(model.inr.render(beta, pts), whole.flatten(2).transpose(1, 2)[:, [5, 77, 1000]], atol=1e-6)


def test_picture_of_a_sphere_is_a_shaded_disc_of_its_projected_size():
    grid = torch.from_numpy(voxelize([sphere(0.5)], 32))[None]
    pic = render_depth(to_float_voxels(grid), size=64)[0].double()
    hit = (pic < 250).any(-1)
    d = math.sqrt(sum(c * c for c in CAMERA_EYE))
    focal = 32 / math.tan(math.radians(22))
    radius_px = focal * 0.5 / math.sqrt(d ** 2 - 0.25)  # the silhouette of a sphere seen from distance d
    assert hit.sum().item() == pytest.approx(math.pi * radius_px ** 2, rel=0.1)
    ys, xs = torch.nonzero(hit, as_tuple=True)
    assert abs(ys.double().mean() - 31.5) < 1 and abs(xs.double().mean() - 31.5) < 1  # centred
    brightness = pic.sum(-1)
    assert brightness[32, 32] > brightness[hit].mean()  # facing the light at the centre: brightest
    empty = render_depth(-torch.ones(1, 1, 16, 16, 16))
    assert (empty == 255).all()


def test_gradients_reach_every_parameter_and_noise_is_not_shared():
    model = tiny_occ()
    for block in model.hyper.encoder:  # adaLN-Zero gates are 0 at init and block gradients to attention/FF
        torch.nn.init.normal_(block.ada[-1].weight, std=0.02)
    ds = VoxelDataset(np.stack([voxelize_solids(0, i, 16) for i in range(3)]))
    batch = model.inr.batch(ds, [0, 1, 2], {'points_per_object': 200}, torch.Generator().manual_seed(0),
                                  torch.Generator().manual_seed(1), 'cpu')
    assert batch['target'].shape == (3, 200, 1) and batch['query'].shape == (3, 200, 3) and not batch['shared_noise']
    near = ((batch['target'] > -1) & (batch['target'] < 1)).float().mean()  # partly filled voxels: the surface
    assert near > 0.2  # half the points are drawn next to the surface (under 5% of the voxels)
    cfg = LossConfig(d=1, t_eps1=100.0, t_eps2=100.0, P_mean=0.0, P_std=0.5, query_skip=False)
    loss, _ = INRCTLoss(cfg)(model, batch, 3, torch.Generator().manual_seed(0))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_tiny_model_overfits_one_shape():
    """The warm-up objective (reconstruction at t_min) fits one solid: IoU >= 0.9 in a few hundred steps."""
    model = tiny_occ()
    ds = VoxelDataset(voxelize_solids(0, 3, 16)[None])
    cfg = LossConfig(warmup_iters=10 ** 9, query_skip=False)
    loss_fn, opt = INRCTLoss(cfg), torch.optim.Adam(model.parameters(), lr=1e-3)
    g, g_cpu = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    x = to_float_voxels(ds.get([0]))
    for step in range(400):
        loss, _ = loss_fn(model, model.inr.batch(ds, [0], {'points_per_object': 1024}, g, g_cpu, 'cpu'), step, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert iou(model.inr.reconstruct(model, x, cfg), x).item() >= 0.9


# --- shape-generation metrics -----------------------------------------------------------------------------------
def test_chamfer_mmd_cov_and_1nna_against_hand_computed_values():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 0], [0, 2, 0], [1, 0, 0]])
    # a -> b: 0, 0; b -> a: 0, min(4, 5) = 4, 0: CD = 0 + 4/3
    assert chamfer(a, b) == pytest.approx(4 / 3)
    assert chamfer(a, a) == 0
    s = lambda dx: np.array([[dx, 0.0, 0.0]])  # noqa: E731  one-point shapes: CD = 2 dx^2
    gen, ref = [s(0.0), s(0.1)], [s(0.0), s(1.0), s(3.0)]
    m = shape_metrics(gen, ref)
    # nearest generated shape of each ref: 0 (CD 0); s(0.1) (2 * 0.81); s(0.1) (2 * 8.41)
    assert m['mmd_cd'] == pytest.approx((0 + 2 * 0.81 + 2 * 8.41) / 3)
    assert m['cov_cd'] == pytest.approx(1 / 3)  # both generated shapes' nearest ref is s(0.0)
    # leave-one-out 1-NN over {g0, g1, r0, r1, r2}: g0 -> r0 (CD 0) wrong; g1 -> g0 (0.02, tied with r0: the first
    # wins) right; r0 -> g0 (0) wrong; r1 -> g1 (1.62) wrong; r2 -> r1 (8) right
    assert m['1nna_cd'] == pytest.approx(2 / 5)


def test_surface_points_lie_on_the_boundary_and_an_empty_grid_has_no_surface():
    vol = to_float_voxels(torch.from_numpy(voxelize([sphere(0.5)], 32))[None])[0]
    pts = surface_points(vol, 500, 0)
    assert pts.shape == (500, 3)
    r = np.linalg.norm(pts, axis=1)
    assert np.abs(r - 0.5).max() < 3 * 2 / 32  # within the boundary voxels' reach
    assert np.array_equal(surface_points(-torch.ones(1, 8, 8, 8), 10, 0), np.zeros((10, 3)))


# --- through train.py and sample.py ----------------------------------------------------------------------------
def test_shapes_occ_trains_encodes_samples_and_scores_end_to_end(tmp_path):
    out = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    run = lambda args: subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,  # noqa: E731
                                      text=True, timeout=300)
    r = run(['train.py', '--dataset', 'shapes_occ', '--resolution', '16', '--patch', '4', '--batch_size', '2',
             '--points_per_object', '64', '--max_iters', '4', '--warmup_iters', '2', '--ect_d', '1',
             '--sample_interval', '4', '--max_minutes', '0', '--cache_dir', str(tmp_path / 'c'), '--out_dir', str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert all((out / f).stat().st_size > 0 for f in ('reconstructions.png', 'samples_1step.png', 'samples_2step.png'))
    assert any('test_iou' in json.loads(line) for line in open(out / 'log.jsonl'))
    ckpt, js = str(out / 'ckpt.pt'), str(tmp_path / 'm.json')
    r = run(['sample.py', '--ckpt', ckpt, '--encode', '--limit', '4', '--json', js, '--out', str(tmp_path / 'e.png')])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(js))
    assert m['n_objects'] == 4 and 0 <= m['iou'] <= 1 and 0 <= m['iou_2x'] <= 1
    r = run(['sample.py', '--ckpt', ckpt, '--n', '3', '--steps', '2', '--out', str(tmp_path / 's.png'),
             '--npz', str(tmp_path / 's.npz')])
    assert r.returncode == 0, r.stderr[-2000:]
    npz = np.load(tmp_path / 's.npz')
    assert npz['volumes'].shape == (3, 16, 16, 16) and npz['samples'].shape == (3, 64, 64, 3)
    r = run(['sample.py', '--ckpt', ckpt, '--score', '--limit', '4', '--json', js])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.load(open(js))
    assert set(m['generated']) == {'mmd_cd', 'cov_cd', '1nna_cd'} and m['n'] == 4
    # real shapes cover more test shapes than one shape repeated (on 4 shapes MMD alone can favour a central mean)
    assert m['train_shapes']['cov_cd'] > m['mean_shape']['cov_cd'] == 1 / 4
    r = run(['sample.py', '--ckpt', ckpt, '--denoise'])
    assert r.returncode != 0 and 'image checkpoint' in r.stderr

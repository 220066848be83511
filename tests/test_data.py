"""Every loader on fixtures in its real on-disk format, the embedded shapes set, and bad-data errors."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from data import FINE, SRNDataset, ShapesDataset, load_dataset, render_shapes, shape_mask, shape_params, write_shapes3d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data')


def test_shapes_are_deterministic_and_split():
    a, b = ShapesDataset('train', 32, seed=0), ShapesDataset('train', 32, seed=0)
    assert torch.equal(a.get([3, 7]), b.get([3, 7]))
    test = ShapesDataset('test', 32, seed=0)
    assert not torch.equal(a.get([0]), test.get([0]))  # test images are other indices of the same stream
    assert not torch.equal(a.get([0]), ShapesDataset('train', 32, seed=1).get([0]))
    x = a.get(range(8))
    assert x.shape == (8, 32, 32, 3) and x.dtype == torch.uint8
    assert x.float().std() > 20  # not blank


@pytest.mark.parametrize('res', [16, 32])
def test_shapes_pooled_2x_equals_1x_within_one_level(res):
    """The same continuous image at every resolution dividing FINE: 2x2-pooling 2R gives R within 1/255."""
    assert FINE % (2 * res) == 0
    for i in range(6):
        small = render_shapes(0, i, res).astype(np.float64)
        big = render_shapes(0, i, 2 * res).astype(np.float64)
        pooled = big.reshape(res, 2, res, 2, 3).mean(axis=(1, 3))
        assert np.abs(pooled - small).max() <= 1.0


def test_shapes_drawn_in_their_boxes_equal_the_whole_grid_composite():
    """render_shapes evaluates each primitive only inside its bounding box: nothing of it lies outside."""
    for res in (16, 32):
        n = FINE
        coord = (np.arange(n) * 2 + 1) / n - 1
        y, x = np.meshgrid(coord, coord, indexing='ij')
        for i in range(60):
            bg, angle, shapes = shape_params(0, i)
            g = (0.5 + 0.35 * (np.cos(angle) * x + np.sin(angle) * y))[..., None]
            img = bg[0] * (1 - g) + bg[1] * g
            for s in shapes:
                img = np.where(shape_mask(s, y, x)[..., None], s['colour'], img)
            ss = n // res
            ref = np.round(img.reshape(res, ss, res, ss, 3).mean(axis=(1, 3)) * 255).clip(0, 255).astype(np.uint8)
            assert np.abs(ref.astype(int) - render_shapes(0, i, res)).max() == 0, (res, i)


def test_shapes_cache_is_rendered_once_and_read_memory_mapped(tmp_path, monkeypatch):
    fresh = ShapesDataset('train', 16, n_train=40).get(range(40))
    a = ShapesDataset('train', 16, n_train=40, cache_dir=tmp_path)
    assert isinstance(a.array, np.memmap) and len(list(tmp_path.glob('shapes_*_16_0_40.npy'))) == 1
    assert torch.equal(a.get(range(40)), fresh) and torch.equal(a.get([7, 3, 7]), fresh[[7, 3, 7]])
    test = ShapesDataset('test', 16, n_train=40, n_test=8, cache_dir=tmp_path)
    assert torch.equal(test.get(range(8)), ShapesDataset('test', 16, n_train=40, n_test=8).get(range(8)))
    monkeypatch.setattr('data.render_shapes', lambda *_: 1 / 0)  # a second open must not render
    b = ShapesDataset('train', 16, n_train=40, cache_dir=tmp_path)
    assert torch.equal(b.get([5, 9]), fresh[[5, 9]])
    with pytest.raises(ZeroDivisionError):  # other resolutions are still rendered on demand
        b.get([0], 32)
    assert not list(tmp_path.glob('*.tmp*'))


def test_srn_view_cache_returns_the_decoded_views_and_follows_the_files(tmp_path):
    root = write_shapes3d(tmp_path / 'cars_train', n_objects=3, n_views=4, resolution=16)
    plain, cached = SRNDataset(root, 16), SRNDataset(root, 16, cache_dir=tmp_path / 'c')
    assert isinstance(cached.images, np.memmap) and cached.images.shape == (12, 16, 16, 3)
    for scene, views in ((0, [0, 3]), (2, [1, 1, 2])):
        for a, b in zip(plain.get(scene, views)[:2], cached.get(scene, views)[:2]):
            assert torch.equal(a, b)
    f = root / '00001' / 'rgb' / '000002.png'
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f)
    os.utime(f, (1, 1))  # a changed file is another cache
    again = SRNDataset(root, 16, cache_dir=tmp_path / 'c')
    assert (again.get(1, [2])[0] == 0).all() and len(list((tmp_path / 'c').glob('srn_*.npy'))) == 2
    f.write_bytes(b'not a png')
    with pytest.raises(ValueError, match='cannot read image .*000002.png'):
        SRNDataset(root, 16, cache_dir=tmp_path / 'c')
    assert not list((tmp_path / 'c').glob('*.tmp*'))  # a failed build leaves no partial file


def write_cifar(root, n_per_batch=5):
    d = root / 'cifar-10-batches-py'
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        with open(d / name, 'wb') as f:
            pickle.dump({b'data': data, b'labels': list(range(n_per_batch)), b'batch_label': name.encode()}, f)
    return d


def test_cifar10_pickle_batches(tmp_path):
    d = write_cifar(tmp_path)
    train, test = load_dataset('cifar10', 'train', 32, str(tmp_path)), load_dataset('cifar10', 'test', 32, str(tmp_path))
    assert len(train) == 25 and len(test) == 5
    with open(d / 'data_batch_1', 'rb') as f:
        row = pickle.load(f, encoding='bytes')[b'data'][2]
    img = train.get([2])[0].numpy()
    assert img.shape == (32, 32, 3)
    assert np.array_equal(img[..., 0].ravel(), row[:1024]) and np.array_equal(img[..., 2].ravel(), row[2048:])


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='cifar-10-batches-py'):
        load_dataset('cifar10', 'train', 32, str(tmp_path))
    d = write_cifar(tmp_path)
    with open(d / 'data_batch_3', 'wb') as f:
        pickle.dump({b'data': np.zeros((4, 100), np.uint8)}, f)
    with pytest.raises(ValueError, match='data_batch_3: expected rows of 3072 bytes'):
        load_dataset('cifar10', 'train', 32, str(tmp_path))
    with pytest.raises(ValueError, match='CIFAR-10 is 32x32'):
        load_dataset('cifar10', 'train', 64, str(tmp_path))


def write_images(root, n, size=(40, 30), ext='png'):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f'{i:05d}.{ext}')


def test_folder_centre_crops_resizes_and_splits(tmp_path):
    write_images(tmp_path / 'a', 6, ext='png')
    write_images(tmp_path / 'b', 4, size=(30, 40), ext='jpg')
    train = load_dataset('folder', 'train', 16, str(tmp_path), test_fraction=0.2)
    test = load_dataset('folder', 'test', 16, str(tmp_path), test_fraction=0.2)
    assert len(train) + len(test) == 10 and len(train) >= 1 and len(test) >= 1
    assert train.get([0]).shape == (1, 16, 16, 3)
    both = np.concatenate([train.array, test.array]).reshape(10, -1)
    assert len(np.unique(both, axis=0)) == 10  # the splits are disjoint and cover every file


def test_folder_split_is_a_stable_hash_that_samples_every_class_folder(tmp_path):
    """A class-per-folder tree (CIFAR-10 as JPEG folders): sorted order would test on the last class only."""
    from data import hash_split, list_images
    for c in range(10):
        (tmp_path / f'class{c}').mkdir()
        for i in range(100):
            (tmp_path / f'class{c}' / f'{i:04d}.png').write_bytes(b'')
    files = list_images(tmp_path)
    test = hash_split(files, tmp_path, 0.1)
    assert 70 <= test.sum() <= 130  # binomial(1000, 0.1): mean 100, sd 9.5
    per_class = [sum(t for f, t in zip(files, test) if f.parent.name == f'class{c}') for c in range(10)]
    assert min(per_class) >= 2 and max(per_class) <= 25
    # stable: new files and another location do not move the old ones between splits
    (tmp_path / 'class3' / 'new.png').write_bytes(b'')
    (tmp_path / 'class11').mkdir()
    (tmp_path / 'class11' / 'x.png').write_bytes(b'')
    again = dict(zip(list_images(tmp_path), hash_split(list_images(tmp_path), tmp_path, 0.1)))
    assert all(again[f] == t for f, t in zip(files, test))
    moved = tmp_path.parent / 'moved'
    tmp_path.rename(moved)
    assert list(hash_split([moved / f.relative_to(tmp_path) for f in files], moved, 0.1)) == list(test)
    # a tiny folder still gets one image on each side
    assert hash_split(files[:2], tmp_path, 0.01).sum() == 1 and hash_split(files[:2], tmp_path, 0.99).sum() == 1


def test_corrupt_image_is_named(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / '00001.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not a png')
    with pytest.raises(ValueError, match='00001.png'):
        load_dataset('folder', 'train', 16, str(tmp_path))


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_dataset('folder', 'train', 16, str(tmp_path / 'nope'))
    with pytest.raises(FileNotFoundError, match='no .png/.jpg/.jpeg images'):
        load_dataset('folder', 'train', 16, str(tmp_path))
    with pytest.raises(ValueError, match='pass --data_dir'):
        load_dataset('celeba', 'train', 64)


def test_celeba_cache_is_written_once_and_reused(tmp_path, capsys):
    write_images(tmp_path / 'hq', 10, size=(48, 48), ext='jpg')
    cache = tmp_path / 'cache'
    a = load_dataset('celeba', 'train', 16, str(tmp_path / 'hq'), cache_dir=str(cache))
    assert 'CelebA-HQ has 30,000 images, found 10' in capsys.readouterr().out
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].endswith('.npy')
    np.save(cache / files[0], np.zeros((9, 16, 16, 3), np.uint8))  # prove the second load reads the cache
    b = load_dataset('celeba', 'train', 16, str(tmp_path / 'hq'), cache_dir=str(cache))
    assert len(a) == 9 and a.get([0]).float().std() > 0 and b.get([0]).sum() == 0


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'celeba_sample')), reason='shared CelebA sample absent')
def test_real_celeba_sample_as_folder():
    d = os.path.join(SHARED, 'celeba_sample')
    train = load_dataset('folder', 'train', 64, d, test_fraction=0.125)
    test = load_dataset('folder', 'test', 64, d, test_fraction=0.125)
    assert len(train) + len(test) == 64 and 3 <= len(test) <= 14  # the hash split: binomial(64, 0.125), mean 8
    x = train.get(range(4)).float()
    assert x.shape == (4, 64, 64, 3) and 40 < x.mean() < 220 and x.std() > 20


class RunsCode:
    """A pickled object whose loading would run a shell command (touch a file)."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


def test_cifar10_batch_that_runs_code_is_refused_by_name(tmp_path):
    d = write_cifar(tmp_path)
    marker = tmp_path / 'pwned'
    with open(d / 'data_batch_2', 'wb') as f:
        pickle.dump({b'data': RunsCode(marker)}, f)
    with pytest.raises(ValueError, match=r'data_batch_2.*refusing to load (posix|os)\.system'):
        load_dataset('cifar10', 'train', 32, str(tmp_path))
    assert not marker.exists()
    r = subprocess.run([sys.executable, 'train.py', '--dataset', 'cifar10', '--preset', 'tiny', '--data_dir',
                        str(tmp_path), '--dry_run'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'refusing to load' in r.stderr and not marker.exists()


def test_cifar10_binary_layout_reads_the_same_images(tmp_path):
    (tmp_path / 'a').mkdir()
    py = write_cifar(tmp_path / 'a')
    b = tmp_path / 'b' / 'cifar-10-batches-bin'
    b.mkdir(parents=True)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(py / name, 'rb') as f:
            rows = pickle.load(f, encoding='bytes')[b'data']
        np.concatenate([np.arange(len(rows), dtype=np.uint8)[:, None], rows], 1).tofile(b / f'{name}.bin')
    for split in ('train', 'test'):
        a = load_dataset('cifar10', split, 32, str(tmp_path / 'a')).array
        assert np.array_equal(a, load_dataset('cifar10', split, 32, str(tmp_path / 'b')).array)
    with open(b / 'test_batch.bin', 'ab') as f:
        f.write(b'\x00' * 10)
    with pytest.raises(ValueError, match='3073-byte records'):
        load_dataset('cifar10', 'test', 32, str(tmp_path / 'b'))


@pytest.mark.parametrize('kind', ['images', 'scenes'])
def test_step_loader_reads_the_same_batches_with_workers_and_from_any_start(kind, tmp_path):
    """What step s reads is a pure function of (seed, step, slot): 2 worker processes give the batches one process
    reads, and a loader started at step 5 (a resumed run) reads what the one started at 3 reads from step 5 on."""
    from data import SRNDataset, ShapesDataset, step_loader, write_shapes3d
    from model import build_model
    if kind == 'images':
        ds, model = ShapesDataset('train', 16), build_model('tiny', 16, 4)
    else:
        ds, model = SRNDataset(write_shapes3d(tmp_path / 'train', 4, 4, 16), 16), build_model('tiny', 16, 4, modality='nerf')
    cfg = {'seed': 3, 'batch_size': 4, 'max_iters': 9, 'rays_per_object': 8, 'n_samples': 4}
    runs = {w: list(step_loader(model.inr, ds, {**cfg, 'num_workers': w}, [0, 1], 2, 3)) for w in (0, 2)}
    late = list(step_loader(model.inr, ds, {**cfg, 'num_workers': 0}, [0, 1], 2, 5))

    def flat(x):
        return [x] if torch.is_tensor(x) else [t for v in (x.values() if isinstance(x, dict) else x) for t in flat(v)]
    a, b, c = flat(runs[0]), flat(runs[2]), flat(runs[0][2:])
    assert len(runs[0]) == 6 and len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(torch.equal(u, v) for u, v in zip(c, flat(late)))
    assert not torch.equal(flat(runs[0][0])[0], flat(runs[0][1])[0])  # consecutive steps read other data

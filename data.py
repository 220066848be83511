"""Datasets: every image dataset is a `get(indices) -> uint8 (B, H, W, 3)` over a fixed train/test split.

shapes   the embedded default: procedural images drawn from (seed, index), rendered once into the cache; no files.
cifar10  the python pickle batches (cifar-10-batches-py/data_batch_1..5, test_batch), 50k/10k, 32^2.
celeba   CelebA-HQ from an image folder, sorted, first 27,000 train / last 3,000 test, cached as .npy.
folder   any directory tree of png/jpg images, centre-cropped and resized; a file is in the test split when a hash
         of its path relative to data_dir falls below test_fraction (stable as files come and go, every class
         folder represented).
SRNDataset / write_shapes3d: multi-view sets in SRN Cars' on-disk layout (real SRN Cars, or generated offline).
shapes_occ  the embedded 3D default: procedural solids voxelised as occupancy grids `get -> uint8 (B, D, D, D)`.
voxels   a folder of .binvox (ShapeNet's format) or .npy occupancy grids, class folders allowed, hash split as folder.
"""
import codecs
import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from nerf import check_pose, get_rays, hemisphere_poses, srn_to_opengl

IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
VOXEL_EXTS = ('.binvox', '.npy')
DATASETS = ('shapes', 'cifar10', 'celeba', 'folder', 'shapes3d', 'srn_cars', 'shapes_occ', 'voxels')


# --- shapes: the embedded default -------------------------------------------------------------------
FINE = 128  # sub-pixel samples per axis over the whole image: every resolution dividing 128 sees the same
            # continuous image box-filtered over its pixels, so pooling the 2x image gives the 1x image


def shape_params(seed, index):
    """Per-image parameters: a two-colour linear background and 1-3 coloured primitives."""
    rng = np.random.default_rng([seed, index])
    bg = rng.uniform(0, 1, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    shapes = []
    for _ in range(rng.integers(1, 4)):
        kind = ['disc', 'square', 'triangle', 'ring'][rng.integers(4)]
        colour = rng.uniform(0, 1, 3)
        if np.abs(colour - bg.mean(0)).max() < 0.35:  # keep every shape visible against the background
            colour = 1 - colour
        shapes.append(dict(kind=kind, colour=colour, centre=rng.uniform(-0.55, 0.55, 2),
                           size=rng.uniform(0.2, 0.45), rot=rng.uniform(0, 2 * np.pi)))
    return bg, angle, shapes


def shape_mask(s, y, x):
    """Inside-mask of one primitive at coordinates y, x in (-1, 1) (row, col)."""
    dy, dx = y - s['centre'][0], x - s['centre'][1]
    c, sn = np.cos(s['rot']), np.sin(s['rot'])
    u, v = c * dx + sn * dy, -sn * dx + c * dy   # rotated frame
    rad = np.sqrt(dx ** 2 + dy ** 2)
    if s['kind'] == 'disc':
        return rad < s['size']
    if s['kind'] == 'ring':
        return (rad < s['size']) & (rad > 0.55 * s['size'])
    if s['kind'] == 'square':
        return (np.abs(u) < 0.8 * s['size']) & (np.abs(v) < 0.8 * s['size'])
    # equilateral triangle: inside all three half-planes at distance size/2 from the centre
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = 2 * np.pi * k / 3
        inside &= (np.cos(a) * u + np.sin(a) * v) < 0.5 * s['size']
    return inside


SHAPE_EXTENT = 1.2  # every primitive lies within this many sizes of its centre (a square's corner: 0.8 * sqrt 2)


def shape_box(centre, radius, n):
    """[lo, hi) of the n fine samples (centres at (2i + 1) / n - 1) that may lie within radius of centre, with a
    margin."""
    lo = int(np.floor((centre - radius + 1) * n / 2 - 1))
    return max(0, lo), min(n, int(np.ceil((centre + radius + 1) * n / 2 + 1)))


def render_shapes(seed, index, resolution, blobs=False):
    """One shapes image, box-filtered over each pixel with FINE/resolution sub-samples per axis -> uint8 (R, R, 3).

    blobs: every primitive drawn as a soft round blob of its colour, centre and size instead (a reference set
    for fid.py's shape features: right colours and layout, no shapes)."""
    ss = max(1, FINE // resolution)
    n = resolution * ss
    coord = (np.arange(n) * 2 + 1) / n - 1
    y, x = np.meshgrid(coord, coord, indexing='ij')
    bg, angle, shapes = shape_params(seed, index)
    g = 0.5 + 0.35 * (np.cos(angle) * x + np.sin(angle) * y)
    img = bg[0][:, None, None] * (1 - g) + bg[1][:, None, None] * g  # channels first: numpy is slow on a last axis of 3
    for s in shapes:
        colour = s['colour'][:, None, None]
        if blobs:
            a = np.exp(-((y - s['centre'][0]) ** 2 + (x - s['centre'][1]) ** 2) / (0.6 * s['size']) ** 2)
            img = a * colour + (1 - a) * img
            continue
        box = tuple(slice(*shape_box(c, SHAPE_EXTENT * s['size'], n)) for c in s['centre'])  # the rest is outside
        img[(slice(None),) + box] = np.where(shape_mask(s, y[box], x[box]), colour, img[(slice(None),) + box])
    img = img.reshape(3, resolution, ss, resolution, ss).mean(axis=(2, 4)).transpose(1, 2, 0)
    return np.round(img * 255).clip(0, 255).astype(np.uint8)


SHAPES_VERSION = 'v1'  # part of the cache name: bump it whenever shape_params or render_shapes changes


class ShapesDataset:
    """Procedural images: train = indices [0, n_train), test = [n_train, n_train + n_test) of one seed.

    cache_dir: the split is rendered once at its resolution into a uint8 .npy there (tqdm bar) and read memory-mapped
    (DataLoader workers and DDP ranks share the pages); other resolutions are rendered on demand. None: no cache."""
    any_resolution = True   # get(indices, resolution) renders the same images at any size (encoding at 2x, 4x)
    reference_size = 10000  # images in an FID reference: the train split is endless in principle

    def __init__(self, split='train', resolution=32, seed=0, n_train=50000, n_test=500, cache_dir=None):
        self.resolution, self.seed = resolution, seed
        self.offset, self.n = (0, n_train) if split == 'train' else (n_train, n_test)
        self.array = None
        if cache_dir is not None:
            path = Path(cache_dir) / f'shapes_{SHAPES_VERSION}_s{seed}_{resolution}_{self.offset}_{self.n}.npy'
            self.array = cached_array(path, lambda: self.render(tqdm(range(self.n), desc=f'rendering shapes {split}',
                                                                     leave=False), resolution), mmap=True)

    def __len__(self):
        return self.n

    def render(self, indices, resolution):
        return np.stack([render_shapes(self.seed, self.offset + int(i), resolution) for i in indices])

    def get(self, indices, resolution=None):
        res = resolution or self.resolution
        if self.array is not None and res == self.resolution:
            return torch.from_numpy(self.array[np.asarray(indices, dtype=np.int64)])
        return torch.from_numpy(self.render(indices, res))


class ArrayDataset:
    """A dataset held in memory as a uint8 array (N, H, W, 3), or (N, D, D, D) for voxel grids."""

    def __init__(self, array):
        self.array = array
        self.resolution = array.shape[1]

    def __len__(self):
        return len(self.array)

    def get(self, indices, resolution=None):
        if resolution not in (None, self.resolution):
            raise ValueError(f"this dataset is stored at {self.resolution} per side; it has no {resolution} version")
        return torch.from_numpy(self.array[np.asarray(indices)])


# --- CIFAR-10 -----------------------------------------------------------------------------------------
class CifarUnpickler(pickle.Unpickler):
    """Unpickles what CIFAR-10's python batches hold (dicts, lists, bytes, str, numpy arrays and dtypes) and
    refuses every other global by name: pickle.load on a downloaded file would run whatever code it names."""
    ALLOWED = {('numpy.core.multiarray', '_reconstruct'): np.zeros(0).__reduce__()[0],  # numpy 1 and 2 pickles
               ('numpy._core.multiarray', '_reconstruct'): np.zeros(0).__reduce__()[0],
               ('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
               ('_codecs', 'encode'): codecs.encode}  # how protocol-2 pickles from Python 3 store bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only dicts, "
                                         f"lists, bytes and numpy arrays")
        return self.ALLOWED[(module, name)]


def cifar_rows(path):
    """One python batch file -> uint8 (N, 3072) rows, read with CifarUnpickler."""
    try:
        with open(path, 'rb') as f:
            batch = CifarUnpickler(f, encoding='bytes').load()
        return np.asarray(batch[b'data'], dtype=np.uint8)
    except Exception as e:
        raise ValueError(f"{path} is not a CIFAR-10 python pickle batch ({e})") from e


def load_cifar10(data_dir, split):
    """CIFAR-10 from cifar-10-batches-py (pickles) or cifar-10-batches-bin (label byte + 3072 bytes a record)."""
    root = Path(data_dir)
    binary = not (root / 'cifar-10-batches-py').is_dir() and (root / 'cifar-10-batches-bin').is_dir()
    if (root / 'cifar-10-batches-py').is_dir() or binary:
        root = root / ('cifar-10-batches-bin' if binary else 'cifar-10-batches-py')
    else:  # data_dir is the batch folder itself
        binary = (root / 'test_batch.bin').is_file()
    names = [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']
    arrays = []
    for name in names:
        path = root / (name + '.bin' if binary else name)
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 file {path} not found. Expected the python version "
                f"<data_dir>/cifar-10-batches-py/{{data_batch_1..5, test_batch}} (cifar-10-python.tar.gz, unpacked) "
                f"or the binary one <data_dir>/cifar-10-batches-bin/{{data_batch_1..5, test_batch}}.bin")
        if binary:
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size % 3073:
                raise ValueError(f"{path}: {raw.size} bytes is not a whole number of 3073-byte records "
                                 f"(1 label byte + 3 x 32 x 32)")
            data = raw.reshape(-1, 3073)[:, 1:]
        else:
            data = cifar_rows(path)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: expected rows of 3072 bytes (3 x 32 x 32), got array of shape {data.shape}")
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(arrays))


# --- image folders (CelebA-HQ, anything) ----------------------------------------------------------------
def list_images(data_dir):
    return list_files(data_dir, IMAGE_EXTS, 'images')


def list_files(data_dir, exts, what='files'):
    """Every file under data_dir (recursively, sorted) whose extension is one of exts."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist; pass --data_dir pointing at a directory "
                                f"of {'/'.join(exts)} files (searched recursively)")
    files = sorted(p for p in root.rglob('*') if p.suffix.lower() in exts)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(exts)} {what} under {root}")
    return files


def open_rgb(path):
    """Decode an image file into 8-bit RGB (to_rgb); a file that cannot be decoded is named."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {e}. Remove or replace the file.") from e


def load_image(path, resolution):
    """Decode, centre-crop to a square, resize with antialiasing -> uint8 (R, R, 3)."""
    im = open_rgb(path)
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != resolution:
        im = im.resize((resolution, resolution), Image.BICUBIC, reducing_gap=None)  # PIL filters when shrinking
    return np.asarray(im, dtype=np.uint8)


BACKGROUND = (255, 255, 255)  # transparent pixels show white, as in SRN and most rendered datasets


def to_rgb(im):
    """A PIL image of any mode -> 8-bit RGB: 16-bit values rescaled (not clipped), transparency composited on
    BACKGROUND (not dropped, which would show whatever colour the transparent pixels hold)."""
    if im.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N'):  # 16-bit grey (PNG): 0..65535
        a = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.round(a / 257), 0, 255).astype(np.uint8)).convert('RGB')
    if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info):
        rgba = im.convert('RGBA')
        canvas = Image.new('RGBA', rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert('RGB')
    return im.convert('RGB')


def files_fingerprint(root, files=None):
    """Hash of each file's path (relative to root), size and mtime: changes when the data does. files: the
    paths to hash (default: every file under root)."""
    if files is None:
        files = sorted(Path(d) / n for d, _, names in os.walk(root) for n in names)
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f'{os.path.relpath(f, root)}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
    return h.hexdigest()[:16]


def hash_split(files, root, test_fraction):
    """Test membership of each file: the first 8 bytes of sha1(path relative to root) as a fraction of 2^64,
    below test_fraction. Sorting by name would put whole class folders (the last ones) in the test split. At
    least one file lands on each side."""
    u = np.array([int(hashlib.sha1(Path(f).relative_to(root).as_posix().encode()).hexdigest()[:16], 16) / 2 ** 64
                  for f in files])
    test = u < test_fraction
    if not test.any():
        test[u.argmin()] = True
    if test.all():
        test[u.argmax()] = False
    return test


def cached_array(path, build, mmap=False):
    """build() once: np.load(path) when the cache exists, else build, then write it atomically (a killed conversion
    never leaves a truncated cache; another process's tmp never clashes). path None: build, no cache.
    mmap: return the file memory-mapped read-only (processes reading it share one copy in the page cache)."""
    if path is not None and path.is_file():
        return np.load(path, mmap_mode='r' if mmap else None, allow_pickle=False)
    out = build()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f'.tmp{os.getpid()}.npy')
        np.save(tmp, out)
        os.replace(tmp, path)
        if mmap:
            return np.load(path, mmap_mode='r', allow_pickle=False)
    return out


def load_folder(files, resolution, cache_dir=None, desc='images', read=None):
    """Load files into uint8 (N, R, R, 3) (or with read, e.g. read_voxels, (N, R, R, R)) once: a .npy cache keyed
    by the files (name, size, mtime) and resolution."""
    read = read or load_image
    cache = Path(cache_dir) / f'{desc}_{resolution}_{files_fingerprint("/", files)}.npy' if cache_dir else None
    return cached_array(cache, lambda: np.stack([read(f, resolution)
                                                 for f in tqdm(files, desc=f'loading {desc}', leave=False)]))


def step_generator(seed, step, slot, device):
    """The RNG of one micro-batch: a pure function of (seed, step, slot), slot = rank * accum + micro-step,
    so N processes draw exactly the noise one process draws with N micro-steps."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 4099 + slot)


def batch_indices(seed, step, batch, n):
    """The global batch of dataset indices at this step (shared by every rank)."""
    g = torch.Generator().manual_seed(seed * 7919 + step)
    return torch.randint(0, n, (batch,), generator=g)


class StepBatches(torch.utils.data.Dataset):
    """Item `step`: this process's micro-batches of that training step as the modality reads them on the CPU
    (inr.read_batch). A pure function of (seed, step, slot), so DataLoader workers may run ahead, N processes read
    exactly the slots one process reads with N micro-steps, and a resumed run reads what the uninterrupted one did."""

    def __init__(self, inr, dataset, cfg, slots, micro):
        self.inr, self.dataset, self.cfg, self.slots, self.micro = inr, dataset, cfg, slots, micro

    def __len__(self):
        return self.cfg['max_iters']

    def __getitem__(self, step):
        cfg = self.cfg
        idx = batch_indices(cfg['seed'], step, cfg['batch_size'], len(self.dataset))
        return [self.inr.read_batch(self.dataset, idx[s * self.micro:(s + 1) * self.micro].tolist(), cfg,
                                    step_generator(cfg['seed'], step, s + 65536, 'cpu')) for s in self.slots]


def one_thread(_):
    torch.set_num_threads(1)  # a worker reads data; the training process keeps the cores' math threads


def step_loader(inr, dataset, cfg, slots, micro, start, pin_memory=False):
    """An iterator over the steps from `start` on, each a list of the slots' CPU micro-batches: cfg['num_workers']
    processes prepare the next batches while the model trains (0: read in this process, between steps); pinned
    memory lets the copies to a GPU overlap."""
    workers = cfg['num_workers']
    return iter(torch.utils.data.DataLoader(
        StepBatches(inr, dataset, cfg, slots, micro), batch_size=None, sampler=range(start, cfg['max_iters']),
        num_workers=workers, pin_memory=pin_memory, worker_init_fn=one_thread if workers else None,
        prefetch_factor=4 if workers else None, persistent_workers=False))


def load_split(cfg, split='test'):
    """The train or test split of the dataset a training config names (train.py's, or a checkpoint's 'config')."""
    return load_dataset(cfg['dataset'], split, cfg['resolution'], cfg['data_dir'], cfg['seed'], cfg['test_fraction'],
                        cfg['cache_dir'])


def load_dataset(name, split, resolution, data_dir='', seed=0, test_fraction=0.1, cache_dir=''):
    """Dataset by name; see the module docstring for layouts and splits."""
    if split not in ('train', 'test'):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == 'shapes':
        return ShapesDataset(split, resolution, seed, cache_dir=cache_root(cache_dir))
    if name == 'shapes_occ':
        return ShapesOccDataset(split, resolution, seed, cache_dir=cache_dir)
    if not data_dir and name != 'shapes3d':
        raise ValueError(f"--dataset {name} reads from disk: pass --data_dir PATH (README: 'CIFAR-10, CelebA-HQ')")
    if name == 'cifar10':
        if resolution != 32:
            raise ValueError(f"CIFAR-10 is 32x32; got --resolution {resolution}")
        return ArrayDataset(load_cifar10(data_dir, split))
    if name in ('folder', 'celeba'):
        files = list_images(data_dir)
        if len(files) < 2:
            raise ValueError(f"{data_dir} holds {len(files)} image; a train and a test split need at least 2")
    if name == 'folder':
        test = hash_split(files, data_dir, test_fraction)
        files = [f for f, is_test in zip(files, test) if is_test == (split == 'test')]
        return ArrayDataset(load_folder(files, resolution, None, f'{name}_{split}'))
    if name == 'celeba':
        if len(files) == 30000:
            n_train = 27000  # the Functa / mNIF split
        else:
            print(f"warning: CelebA-HQ has 30,000 images, found {len(files)}; using the last "
                  f"{test_fraction:.0%} as test")
            n_train = len(files) - max(1, int(round(test_fraction * len(files))))
        files = files[:n_train] if split == 'train' else files[n_train:]
        return ArrayDataset(load_folder(files, resolution, cache_root(cache_dir), f'{name}_{split}'))
    if name == 'shapes3d':
        cache = shapes3d_cache(cache_dir, resolution, seed)
        if not (cache / split).is_dir():
            tmp = cache / f'{split}.tmp{os.getpid()}'
            n_objects, n_views = (200, 24) if split == 'train' else (16, 24)
            write_shapes3d(tmp, n_objects, n_views, resolution, seed, test=split == 'test')
            try:  # atomic: an interrupted generation is redone, never half-used
                os.replace(tmp, cache / split)
            except OSError:  # another process (a DDP rank) finished the same deterministic set first
                shutil.rmtree(tmp)
        return SRNDataset(cache / split, resolution, cache_root(cache_dir))
    if name == 'srn_cars':
        return SRNDataset(Path(data_dir) / f'cars_{split}', resolution, cache_root(cache_dir))
    if name == 'voxels':
        files = list_files(data_dir, VOXEL_EXTS, 'grids')
        if len(files) < 2:
            raise ValueError(f"{data_dir} holds {len(files)} .binvox/.npy grid; a train and a test split need at least 2")
        test = hash_split(files, data_dir, test_fraction)
        files = [f for f, is_test in zip(files, test) if is_test == (split == 'test')]
        return VoxelDataset(load_folder(files, resolution, cache_root(cache_dir), f'voxels_{split}', read_voxels))
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# --- SRN camera files (the NeRF loaders build on these) ------------------------------------------------------
def read_srn_pose(path):
    """pose/*.txt: 16 numbers, a row-major 4x4 OpenCV-style camera-to-world matrix -> float32 tensor (4, 4)."""
    try:
        values = np.array(Path(path).read_text().split(), dtype=np.float64)
    except Exception as e:
        raise ValueError(f"cannot read pose file {path}: {e}") from e
    if values.size != 16:
        raise ValueError(f"pose file {path} holds {values.size} numbers; expected 16 (a 4x4 camera-to-world matrix)")
    return torch.from_numpy(values.reshape(4, 4)).float()


def read_srn_intrinsics(path):
    """intrinsics.txt: first line 'f cx cy 0' (pixels) -> (f, cx, cy)."""
    try:
        with open(path) as f:
            first = f.readline().split()
        focal, cx, cy = (float(v) for v in first[:3])
    except Exception as e:
        raise ValueError(f"cannot read intrinsics {path} (expected a first line 'f cx cy 0'): {e}") from e
    if not (np.isfinite([focal, cx, cy]).all() and focal > 0 and cx > 0 and cy > 0):
        raise ValueError(f"intrinsics {path}: focal {focal}, cx {cx}, cy {cy}; expected positive pixels")
    return focal, cx, cy


class SRNDataset:
    """SRN layout: root/<scene>/{rgb/*.png, pose/*.txt, intrinsics.txt}. Every scene's poses, intrinsics and views
    are checked when the dataset opens (text files only), so bad data stops a run before it starts, not mid-run.
    cache_dir: the views are decoded once into a memory-mapped uint8 cache there (keyed by the files' names, sizes and
    mtimes); None: decoded on demand.

    get(scene, views) -> (uint8 images (V, R, R, 3), OpenGL poses (V, 4, 4), (f, cx, cy) at resolution R).
    """
    data_kind = 'scenes'  # what a modality's INR checks (image datasets have no such attribute)

    def __init__(self, root, resolution, cache_dir=None):
        self.root, self.resolution = Path(root), resolution
        if not self.root.is_dir():
            raise FileNotFoundError(f"SRN folder {self.root} does not exist; expected "
                                    f"<data_dir>/cars_train/<scene>/{{rgb/*.png, pose/*.txt, intrinsics.txt}}")
        self.scenes = sorted(p for p in self.root.iterdir() if (p / 'rgb').is_dir())
        if not self.scenes:
            raise FileNotFoundError(f"no scenes with an rgb/ folder under {self.root}")
        self.views, self.poses, self.intrinsics = [], [], []
        for s in tqdm(self.scenes, desc=f'checking {self.root.name}', leave=False, disable=len(self.scenes) < 200):
            rgb = sorted((s / 'rgb').glob('*.png'))
            if not rgb:
                raise ValueError(f"{s / 'rgb'}/ holds no .png views; remove the scene or restore its images")
            poses = []
            for f in rgb:
                pose_file = s / 'pose' / f'{f.stem}.txt'
                if not pose_file.is_file():
                    raise FileNotFoundError(f"{pose_file} is missing (every rgb/*.png needs its pose/*.txt)")
                pose = srn_to_opengl(read_srn_pose(pose_file))
                check_pose(pose, str(pose_file))
                poses.append(pose)
            if not (s / 'intrinsics.txt').is_file():
                raise FileNotFoundError(f"{s / 'intrinsics.txt'} is missing")
            self.views.append(rgb)
            self.poses.append(torch.stack(poses))
            self.intrinsics.append(read_srn_intrinsics(s / 'intrinsics.txt'))

        self.images = None
        if cache_dir is not None:  # every view decoded once into one memory-mapped uint8 array (N views, R, R, 3)
            files = [f for views in self.views for f in views]
            path = Path(cache_dir) / f'srn_{self.root.name}_{resolution}_{files_fingerprint(self.root, files)}.npy'
            self.first = np.cumsum([0] + [len(v) for v in self.views])
            self.images = cached_views(path, files, resolution)

    def __len__(self):
        return len(self.scenes)

    def get(self, scene, views):
        if self.images is not None:
            images = self.images[self.first[scene] + np.asarray(views, dtype=np.int64)]
        else:
            images = np.stack([read_view(self.views[scene][v], self.resolution) for v in views])
        focal, cx, cy = self.intrinsics[scene]
        scale = self.resolution / (2 * cx)  # intrinsics may be stored for another image size
        return torch.from_numpy(images), self.poses[scene][list(views)], (focal * scale, cx * scale, cy * scale)


def read_view(f, resolution):
    """One SRN view -> uint8 (R, R, 3); a file that cannot be decoded or has another size is named."""
    im = open_rgb(f)
    if im.size != (resolution, resolution):
        raise ValueError(f"{f} is {im.size[0]}x{im.size[1]}, expected {resolution}x{resolution} "
                         f"(set --resolution to the dataset's size)")
    return np.asarray(im, dtype=np.uint8)


def cached_views(path, files, resolution):
    """The views decoded once into path (written through a memory map, so a 6 GB split never sits in memory, then
    renamed into place: a killed build is redone), opened memory-mapped read-only."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f'.tmp{os.getpid()}.npy')
        out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(len(files), resolution, resolution, 3))
        try:
            bar = tqdm(files, desc=f'caching {path.name[:40]}', leave=False, disable=len(files) < 1000)
            for i, f in enumerate(bar):
                out[i] = read_view(f, resolution)
            out.flush()
        except BaseException:
            del out
            tmp.unlink()
            raise
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode='r', allow_pickle=False)


# --- shapes3d: the offline multi-view default, written in the SRN layout --------------------------------------
SHAPES3D_FOCAL = 1.2              # focal length in image widths
SHAPES3D_TEST_OFFSET = 1_000_000  # test objects are object numbers from here on: never drawn for training
SHAPES3D_VERSION = 'v2'           # part of the cache name: bump it whenever the generator changes (v2: centred)

def _hit_sphere(o, d, c, r):
    oc = o - c
    b = (oc * d).sum(-1)
    disc = b ** 2 - ((oc ** 2).sum(-1) - r ** 2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    p = o + t[..., None] * d
    return np.where(disc > 0, t, np.inf), (p - c) / r


def _hit_box(o, d, c, h):
    with np.errstate(divide='ignore', invalid='ignore'):
        t1, t2 = (c - h - o) / d, (c + h - o) / d
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near, t_far = tmin.max(-1), tmax.min(-1)
    axis = tmin.argmax(-1)
    n = -np.sign(np.take_along_axis(d, axis[..., None], -1)) * np.eye(3)[axis]
    return np.where((t_near < t_far) & (t_near > 0), t_near, np.inf), n


def _hit_cylinder(o, d, c, r, h):
    """Vertical (z) capped cylinder: side and caps."""
    oc = o - c
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = oc[..., 0] * d[..., 0] + oc[..., 1] * d[..., 1]
    disc = b ** 2 - a * (oc[..., 0] ** 2 + oc[..., 1] ** 2 - r ** 2)
    with np.errstate(divide='ignore', invalid='ignore'):
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
        ts = np.where((disc > 0) & (np.abs(oc[..., 2] + ts * d[..., 2]) < h) & (ts > 0), ts, np.inf)
        tc = np.minimum(*[np.where(((oc[..., :2] + ((s - oc[..., 2]) / d[..., 2])[..., None] * d[..., :2]) ** 2)
                                    .sum(-1) < r ** 2, (s - oc[..., 2]) / d[..., 2], np.inf) for s in (-h, h)])
    tc = np.where(tc > 0, tc, np.inf)
    p = oc + np.minimum(ts, tc)[..., None] * d
    side = np.concatenate([p[..., :2] / r, np.zeros_like(p[..., :1])], -1)
    cap = np.zeros_like(p)
    cap[..., 2] = np.sign(p[..., 2])
    return np.minimum(ts, tc), np.where((ts <= tc)[..., None], side, cap)


def shapes3d_parts(seed, obj):
    """Object `obj`: 1-3 coloured spheres, boxes and vertical cylinders, their mean centre at the origin."""
    rng = np.random.default_rng([seed, obj])
    parts = []
    for _ in range(rng.integers(1, 4)):
        parts.append(dict(kind=['sphere', 'box', 'cylinder'][rng.integers(3)], centre=rng.uniform(-0.2, 0.2, 3),
                          size=rng.uniform(0.12, 0.25), colour=rng.uniform(0.1, 0.9, 3),
                          half=rng.uniform(0.08, 0.22, 3)))
    mid = np.mean([p['centre'] for p in parts], 0)  # centred at the origin, as SRN's cars are: one view then
    for p in parts:                                  # leaves no doubt where the object sits, only its shape
        p['centre'] = p['centre'] - mid
    return parts


@np.errstate(invalid='ignore', divide='ignore')
def render_shapes3d(seed, obj, pose, focal, resolution, ss=2):
    """One shaded view (uint8 R x R x 3, white background) of object `obj`, supersampled ss x ss per pixel."""
    parts = shapes3d_parts(seed, obj)
    n = resolution * ss
    o, d = (x.numpy().astype(np.float64) for x in get_rays(pose, focal * ss, n / 2, n / 2, n, n))
    depth, img = np.full((n, n), np.inf), np.ones((n, n, 3))
    light = np.array([0.4, 0.3, 0.87])
    for p in parts:  # misses give inf/nan normals; they are masked out by `closer` below
        if p['kind'] == 'sphere':
            t, nrm = _hit_sphere(o, d, p['centre'], p['size'])
        elif p['kind'] == 'box':
            t, nrm = _hit_box(o, d, p['centre'], p['half'])
        else:
            t, nrm = _hit_cylinder(o, d, p['centre'], p['size'], p['half'][2])
        shade = 0.35 + 0.65 * np.clip((nrm * light).sum(-1), 0, 1)
        closer = t < depth
        depth = np.where(closer, t, depth)
        img = np.where(closer[..., None], p['colour'] * shade[..., None], img)
    img = img.reshape(resolution, ss, resolution, ss, 3).mean((1, 3))
    return np.round(img * 255).clip(0, 255).astype(np.uint8)


def write_shapes3d(out, n_objects, n_views, resolution=32, seed=0, test=False):
    """Write the offline multi-view set in the SRN layout (OpenCV poses, 'f cx cy 0' intrinsics) under out/.

    Train objects get random upper-hemisphere views; test objects (other seeds) a fixed spiral of views."""
    out = Path(out)
    focal = SHAPES3D_FOCAL * resolution
    split = 'test' if test else 'train'
    offset = SHAPES3D_TEST_OFFSET if test else 0
    for obj in tqdm(range(n_objects), desc=f'shapes3d {split}', leave=False):
        scene = out / f'{obj:05d}'
        (scene / 'rgb').mkdir(parents=True, exist_ok=True)
        (scene / 'pose').mkdir(exist_ok=True)
        poses = hemisphere_poses(n_views, seed=None if test else [seed, obj])
        for v, pose in enumerate(poses):
            Image.fromarray(render_shapes3d(seed, offset + obj, pose, focal, resolution)).save(scene / 'rgb' / f'{v:06d}.png')
            np.savetxt(scene / 'pose' / f'{v:06d}.txt', srn_to_opengl(pose).numpy().reshape(1, 16))  # back to OpenCV
        (scene / 'intrinsics.txt').write_text(f'{focal} {resolution / 2} {resolution / 2} 0.\n0. 0. 0.\n1.\n'
                                              f'{resolution} {resolution}\n')
    return out


# --- shapes_occ and voxels: 3D occupancy grids ------------------------------------------------------------
TORUS_TUBE = 0.4  # a torus's tube radius, as a share of its ring radius times aspect[1]
OCC_SPAN = 0.9  # share of the cube an object's longest side spans (ShapeNet's normalisation)
OCC_FINE = 64  # sub-voxel samples per axis over the cube: every resolution dividing 64 is the same solids
               # box-filtered over its voxels, so pooling the 2x grid 2x2x2 gives the 1x grid


def solid_params(seed, index):
    """Per-object parameters: 1-3 solids (sphere, box, cylinder, torus), each placed, sized and rotated; then the
    union is normalised as ShapeNet's voxels are: centred, scaled so its bounding box's longest side spans
    OCC_SPAN of the cube (objects a few voxels wide would make any grid a coarser one)."""
    rng = np.random.default_rng([seed, 3, index])  # a stream apart from the 2D shapes'
    solids = []
    for _ in range(rng.integers(1, 4)):
        rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random orthonormal frame
        solids.append(dict(kind=['sphere', 'box', 'cylinder', 'torus'][rng.integers(4)], rot=rot,
                           centre=rng.uniform(-0.35, 0.35, 3), size=rng.uniform(0.25, 0.5),
                           aspect=rng.uniform(0.5, 1.0, 3)))
    lo, hi = np.min([s['centre'] - solid_extent(s) for s in solids], 0), np.max([s['centre'] + solid_extent(s)
                                                                                  for s in solids], 0)
    scale = 2 * OCC_SPAN / (hi - lo).max()
    for s in solids:
        s['centre'], s['size'] = (s['centre'] - (lo + hi) / 2) * scale, s['size'] * scale
    return solids


def solid_extent(s):
    """Half-extent of a solid's axis-aligned bounding box (3,): its own-frame box through the rotation."""
    r, a = s['size'], s['aspect']
    local = {'sphere': np.full(3, r), 'box': r * a, 'cylinder': r * np.array([a[0], a[0], a[2]]),
             'torus': np.array([r * (1 + TORUS_TUBE * a[1])] * 2 + [TORUS_TUBE * r * a[1]])}[s['kind']]
    return np.abs(s['rot']) @ local


def solid_mask(s, points):
    """Inside-mask of one solid at points (..., 3) in (-1, 1)^3 (axis 0 = x, 1 = y, 2 = z)."""
    q = (points - s['centre']) @ s['rot']  # the solid's own frame
    r, a = s['size'], s['aspect']
    if s['kind'] == 'sphere':
        return (q ** 2).sum(-1) < r ** 2
    if s['kind'] == 'box':
        return (np.abs(q) < r * a).all(-1)
    radial = np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2)
    if s['kind'] == 'cylinder':
        return (radial < r * a[0]) & (np.abs(q[..., 2]) < r * a[2])
    return (radial - r) ** 2 + q[..., 2] ** 2 < (TORUS_TUBE * r * a[1]) ** 2  # torus: tube 0.2-0.4 of the ring


def voxelize_solids(seed, index, resolution):
    """One shapes_occ object -> uint8 (D, D, D)."""
    return voxelize(solid_params(seed, index), resolution)


def voxelize(solids, resolution):
    """The fraction of each voxel inside the union of solids, from OCC_FINE/resolution sub-samples per axis
    -> uint8 (D, D, D), 255 = fully inside."""
    ss = max(1, OCC_FINE // resolution)
    n = resolution * ss
    coord = ((np.arange(n) * 2 + 1) / n - 1).astype(np.float32)
    inside = np.zeros((n, n, n), bool)
    for s in solids:  # only the sub-samples within the solid's bounding box
        e = solid_extent(s)
        lo = np.clip(np.floor((s['centre'] - e + 1) * n / 2).astype(int), 0, n)
        hi = np.clip(np.ceil((s['centre'] + e + 1) * n / 2).astype(int), 0, n)
        box = np.stack(np.meshgrid(*[coord[a:b] for a, b in zip(lo, hi)], indexing='ij'), -1)
        inside[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= solid_mask(s, box)
    occ = inside.reshape(resolution, ss, resolution, ss, resolution, ss).mean(axis=(1, 3, 5))
    return np.round(occ * 255).astype(np.uint8)


class VoxelDataset(ArrayDataset):
    """Occupancy grids held in memory as uint8 (N, D, D, D), 255 = occupied."""
    data_kind = 'voxels'


class ShapesOccDataset(VoxelDataset):
    """Procedural solids: train = objects [0, n_train), test = [n_train, n_train + n_test) of one seed, voxelised
    once into the cache (a tqdm bar); get(indices, resolution) voxelises the same objects at any other size."""
    any_resolution = True

    def __init__(self, split='train', resolution=32, seed=0, n_train=4000, n_test=200, cache_dir=''):
        self.seed = seed
        self.offset, n = (0, n_train) if split == 'train' else (n_train, n_test)
        path = cache_root(cache_dir) / f'shapes_occ_v2_{resolution}_s{seed}_{split}_{n}.npy'
        array = cached_array(path, lambda: np.stack([voxelize_solids(seed, self.offset + i, resolution)
                                                     for i in tqdm(range(n), desc=f'voxelising shapes_occ {split}')]))
        super().__init__(array)

    def get(self, indices, resolution=None):
        if resolution in (None, self.resolution):
            return super().get(indices)
        return torch.from_numpy(np.stack([voxelize_solids(self.seed, self.offset + int(i), resolution)
                                          for i in indices]))


def read_binvox(path):
    """A .binvox file (header '#binvox 1', 'dim D D D', ..., 'data', then (value, count) byte pairs in x-z-y
    order) -> bool (D, D, D) indexed (x, y, z). Bad files raise an error that names them."""
    with open(path, 'rb') as f:
        head = f.readline().strip()
        if not head.startswith(b'#binvox'):
            raise ValueError(f"{path}: not a binvox file (it starts {head[:16]!r}, expected b'#binvox 1')")
        dims = None
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: the binvox header never reaches its 'data' line; the file is truncated")
            line = line.strip()
            if line.startswith(b'dim'):
                dims = [int(v) for v in line.split()[1:]]
            elif line == b'data':
                break
        raw = np.frombuffer(f.read(), dtype=np.uint8)
    if dims is None or len(dims) != 3:
        raise ValueError(f"{path}: the binvox header has no 'dim D D D' line")
    if len(set(dims)) != 1:
        raise ValueError(f"{path}: the grid is {'x'.join(map(str, dims))}, not cubic; re-voxelise it with binvox -d N")
    counts = raw[1::2].astype(np.int64)
    if len(raw) % 2 or counts.sum() != np.prod(dims):
        raise ValueError(f"{path}: the run-length data covers {counts.sum()} voxels but the header says "
                         f"{'x'.join(map(str, dims))} = {np.prod(dims)}; the file is truncated or corrupt")
    return np.repeat(raw[0::2] > 0, counts).reshape(dims).transpose(0, 2, 1)


def write_binvox(path, occupied):
    """bool (D, D, D) indexed (x, y, z) -> a .binvox file (tests write fixtures in the real format with this)."""
    flat = np.asarray(occupied, bool).transpose(0, 2, 1).reshape(-1).astype(np.uint8)
    runs, i = bytearray(), 0
    while i < len(flat):
        j = i
        while j < len(flat) and j - i < 255 and flat[j] == flat[i]:
            j += 1
        runs += bytes([flat[i], j - i])
        i = j
    D = occupied.shape[0]
    Path(path).write_bytes(f'#binvox 1\ndim {D} {D} {D}\ntranslate 0 0 0\nscale 1\ndata\n'.encode() + bytes(runs))


def read_voxels(path, resolution):
    """One .binvox or .npy grid -> uint8 (R, R, R) occupancy: larger grids are box-filtered to R (fractions),
    smaller ones repeated; .npy holds bool, uint8 0-255 or floats in [0, 1] (loaded without pickle)."""
    if str(path).endswith('.binvox'):
        grid = read_binvox(path).astype(np.float32)
    else:
        try:
            grid = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a plain .npy array ({e}); save grids with np.save(path, array)") from None
        if grid.ndim != 3 or len(set(grid.shape)) != 1:
            raise ValueError(f"{path}: expected a cubic grid D x D x D, got shape {grid.shape}")
        grid = grid.astype(np.float32) / (255.0 if grid.dtype == np.uint8 else 1.0)
        if grid.min() < 0 or grid.max() > 1:
            raise ValueError(f"{path}: occupancy values must lie in [0, 1] (or 0-255 as uint8)")
    D = grid.shape[0]
    if D % resolution == 0:
        k = D // resolution
        grid = grid.reshape(resolution, k, resolution, k, resolution, k).mean(axis=(1, 3, 5))
    elif resolution % D == 0:
        k = resolution // D
        grid = grid.repeat(k, 0).repeat(k, 1).repeat(k, 2)
    else:
        raise ValueError(f"{path}: a {D}^3 grid cannot be resampled to --resolution {resolution}; use a resolution "
                         f"that divides {D} or that {D} divides")
    return np.round(grid * 255).astype(np.uint8)


def cache_root(cache_dir=''):
    """Where converted datasets are kept: --cache_dir, or ~/.cache/inrct when it is ''."""
    return Path(cache_dir or os.path.join(os.path.expanduser('~'), '.cache', 'inrct'))


def shapes3d_cache(cache_dir, resolution, seed):
    """The folder load_dataset writes shapes3d's train/ and test/ into, named by the generator's version."""
    return cache_root(cache_dir) / f'shapes3d_{SHAPES3D_VERSION}_{resolution}_s{seed}'

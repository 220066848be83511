"""Write data in each on-disk layout train.py reads, sized for timing the data path (bench.py --dataset), under OUT:

    OUT/cifar/cifar-10-batches-py/   5 + 1 python batches of random 32^2 images (the real pickle layout)
    OUT/folder/                      2,000 random 64^2 PNGs in 4 class folders (folder, and celeba's loader)
    OUT/srn/cars_train/              50 scenes x 50 views of 128^2 PNGs with poses (the SRN Cars layout)

    python tools/data_fixtures.py /tmp/fixtures
"""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import write_shapes3d  # noqa: E402


def main(out):
    out, rng = Path(out), np.random.default_rng(0)
    cifar = out / 'cifar' / 'cifar-10-batches-py'
    cifar.mkdir(parents=True, exist_ok=True)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        batch = {b'data': rng.integers(0, 256, (2000, 3072), dtype=np.uint8), b'labels': [0] * 2000}
        with open(cifar / name, 'wb') as f:
            pickle.dump(batch, f)
    for i in range(2000):
        d = out / 'folder' / f'class{i % 4}'
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f'{i:05d}.png')
    write_shapes3d(out / 'srn' / 'cars_train', 50, 50, 128)
    print(f"wrote {out}/cifar, {out}/folder, {out}/srn")


if __name__ == '__main__':
    main(sys.argv[1])

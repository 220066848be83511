"""Why shapes3d centres its objects: what a depth one view cannot see would cost (docs/design-notes.md).

    python tools/depth_ambiguity.py
"""
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import SHAPES3D_FOCAL, SHAPES3D_TEST_OFFSET, render_shapes3d  # noqa: E402
from inr import psnr  # noqa: E402
from nerf import hemisphere_poses  # noqa: E402


def shapes3d_depth_ambiguity(shifts=(0.05, 0.1, 0.2), n_objects=16, n_views=24, resolution=32, seed=0):
    """Why shapes3d centres its objects: what a depth that one view cannot see would cost. Mean PSNR of views
    1, 3, ... of the test objects when the object sits `shift` further along the support camera's axis (one wrong
    guess), and when those views are averaged over 9 depths in [-shift, shift] (a model that knows the depth only
    to +-shift and hedges; with the truth in the middle, the best case) -> {shift: (wrong guess dB, hedged dB)}."""
    poses, focal = hemisphere_poses(n_views), SHAPES3D_FOCAL * resolution   # the test cameras of write_shapes3d
    axis = -poses[0][:3, 2]                                      # OpenGL cameras look down their -z

    def view(obj, v, d):  # moving the object by d * axis = moving the camera by -d * axis
        pose = poses[v].clone()
        pose[:3, 3] -= d * axis
        return render_shapes3d(seed, SHAPES3D_TEST_OFFSET + obj, pose, focal, resolution) / 255.0

    out = {}
    for s in tqdm(shifts, desc='depth shifts', leave=False):
        triples = [(view(o, v, 0.0), view(o, v, s), np.mean([view(o, v, d) for d in np.linspace(-s, s, 9)], 0))
                   for o in range(n_objects) for v in range(1, n_views, 2)]
        gt, wrong, hedged = (torch.from_numpy(np.stack(x)) * 2 - 1 for x in zip(*triples))  # [-1, 1] for psnr
        out[s] = (psnr(wrong, gt).mean().item(), psnr(hedged, gt).mean().item())
    return out


if __name__ == '__main__':
    print("shapes3d centres every object at the origin; were it anywhere in [-0.2, 0.2]^3 (as before v2), one view\n"
          "could not tell how far away it is. What that would cost:")
    for s, (wrong, hedged) in shapes3d_depth_ambiguity().items():
        print(f"  object {s:.2f} further along the support camera's axis: novel views {wrong:.2f} dB; "
              f"averaged over +-{s:.2f} around the truth: {hedged:.2f} dB")

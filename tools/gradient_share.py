"""Which noise levels a run trains: the share of the pull on the rendered INR by range of t.

    python tools/gradient_share.py [P_mean lambda_recon stage [query_skip [P_std]]]     # default -1.1 1 4
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from losses import LossConfig, c_out, diff_mask, loss_weight, loss_weights, r_of_t, recon_mask, sample_t  # noqa: E402


def render_gradient_scale(t, step, cfg):
    """How hard one sample pulls on the rendered INR: the norm of d(loss term)/d(render) summed over the terms,
    w(t) (l1 c_out + l3 c_out [t < t_eps2] + l2 [t < t_eps1]) (each L2-norm distance has a unit gradient).
    Exact where the terms pull one way (stage 0 without recon), an upper bound otherwise. Summed over
    many draws of t it says which noise levels a short run actually trains (`python tools/gradient_share.py`)."""
    l1, l2, l3 = loss_weights(step, cfg)
    co = c_out(t, cfg)
    return (l1 * co + l3 * co * diff_mask(t, cfg) + l2 * recon_mask(t, cfg)) * loss_weight(t, r_of_t(t, step, cfg), cfg)


if __name__ == '__main__':
    args = sys.argv[1:] if len(sys.argv) > 3 else ['-1.1', '1', '4']
    p_mean, l_recon, stage = float(args[0]), float(args[1]), int(args[2])
    skip = len(args) < 4 or args[3].lower() in ('1', 'true')
    p_std = float(args[4]) if len(args) > 4 else 2.0
    cfg = LossConfig(P_mean=p_mean, P_std=p_std, lambdas=(1.0, l_recon, 1.0), d=1, query_skip=skip)
    t = sample_t(1_000_000, stage, cfg, torch.Generator().manual_seed(0)).double()
    g = render_gradient_scale(t, stage, cfg)
    print(f"P_mean {p_mean}, P_std {p_std}, lambda_recon {l_recon}, stage {stage}, query_skip {skip}: "
          "share of the pull on the render by t")
    for lo, hi in ((0, cfg.t_eps1), (cfg.t_eps1, cfg.t_eps2), (cfg.t_eps2, 1), (1, 10), (10, 81)):
        m = (t >= lo) & (t < hi)
        print(f"  t in [{lo:g}, {hi:g}): {100 * m.double().mean():6.2f}% of samples, "
              f"{100 * g[m].sum() / g.sum():8.4f}% of the pull")

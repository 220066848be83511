"""Preconditioning, ECT schedule, masks, ETS warm-up and the composed loss, against SPEC formulas/values."""
import copy
import dataclasses
import math

import pytest
import torch

from losses import (INRCTLoss, LossConfig, c_in, c_noise, c_out, c_skip, consistency_fn, diff_mask, distance,
                    posterior_mean_distance, RAdam, ect_stage, loss_weight, loss_weights, r_of_t, recon_mask, sample_t,
                    step_lr, train_step)

# SPEC section 3 reference table (sigma_data 0.5, t_min 0.003)
PRECOND = [  # t, c_skip, c_out, c_in, c_noise, c_skip shifted, c_out shifted
    (0.003, 0.999964, 0.00299995, 1.99996, -1.45229, 1.0, 0.0),
    (0.0865, 0.970941, 0.0852339, 1.97073, -0.611903, 0.972868, 0.0822778),
    (0.821, 0.270551, 0.427039, 1.04029, -0.049308, 0.271998, 0.425479),
    (80.0, 3.9061e-05, 0.49999, 0.0124998, 1.09551, 3.90639e-05, 0.499971),
]


@pytest.mark.parametrize('row', PRECOND)
def test_preconditioning_matches_spec_table(row):
    t, skip, out, cin, cnoise, skip_s, out_s = row
    tt = torch.tensor([t], dtype=torch.float64)
    plain, shifted = LossConfig(shift_precond=False), LossConfig(shift_precond=True)
    assert c_skip(tt, plain).item() == pytest.approx(skip, rel=1e-4)
    assert c_out(tt, plain).item() == pytest.approx(out, rel=1e-4)
    assert c_in(tt, plain).item() == pytest.approx(cin, rel=1e-4)
    assert c_noise(tt).item() == pytest.approx(cnoise, rel=1e-4)
    assert c_skip(tt, shifted).item() == pytest.approx(skip_s, rel=1e-4, abs=1e-12)
    assert c_out(tt, shifted).item() == pytest.approx(out_s, rel=1e-4, abs=1e-12)


def test_shifted_boundary_is_exact_and_unshifted_follows_formula():
    cfg = LossConfig(shift_precond=True)
    t = torch.tensor([cfg.t_min])
    assert c_skip(t, cfg).item() == 1.0 and c_out(t, cfg).item() == 0.0
    plain = LossConfig(shift_precond=False, sigma_data=0.7)
    t = torch.tensor([0.3, 2.0], dtype=torch.float64)
    sd = 0.7
    assert torch.allclose(c_skip(t, plain), sd ** 2 / (t ** 2 + sd ** 2))
    assert torch.allclose(c_out(t, plain), t * sd / (t ** 2 + sd ** 2).sqrt())


# r(t) at stage a from SPEC: {a: [(t, r)]}
R_TABLE = {1: [(1, 0.0), (2, 0.0463766), (10, 4.99818), (80, 40.0)],
           3: [(0.01, 0.003775), (0.5, 0.24873), (2, 1.51159)],
           8: [(0.01, 0.00980547), (1, 0.987689), (80, 79.6875)]}


@pytest.mark.parametrize('a', sorted(R_TABLE))
def test_r_of_t_matches_spec_values_and_formula(a):
    cfg = LossConfig(d=10, warmup_iters=5)
    step = 5 + 10 * a + 3  # 3 steps into stage a
    assert ect_stage(step, cfg) == a
    for t, r in R_TABLE[a]:
        tt = torch.tensor([t], dtype=torch.float64)
        got = r_of_t(tt, step, cfg).item()
        n = 1 + 8 / (1 + math.exp(t))  # 1 + k sigmoid(-b t), direct evaluation
        assert got == pytest.approx(max(0.0, t * (1 - n / 2 ** a)), rel=1e-9, abs=1e-12)
        assert got == pytest.approx(r, rel=1e-4, abs=1e-6)


def test_stage_zero_is_pure_denoising_and_late_stage_ratio():
    cfg = LossConfig(d=100, warmup_iters=50)
    t = torch.logspace(-3, 2, 50, dtype=torch.float64)
    for step in (0, 49, 50, 149):  # warm-up and stage 0
        assert torch.all(r_of_t(t, step, cfg) == 0)
    step = 50 + 100 * 9  # stage 9
    n = 1 + 8 * torch.sigmoid(-t)
    assert torch.allclose((t - r_of_t(t, step, cfg)) / t, n / 2 ** 9)


def test_masks_at_exact_boundaries():
    cfg = LossConfig()
    t = torch.tensor([cfg.t_eps1, math.nextafter(cfg.t_eps1, 0), cfg.t_eps2, math.nextafter(cfg.t_eps2, 0)],
                     dtype=torch.float64)
    assert recon_mask(t, cfg).tolist() == [0, 1, 0, 0]
    assert diff_mask(t, cfg).tolist() == [1, 1, 0, 1]


def test_warmup_sampling_range_and_weights():
    cfg = LossConfig(warmup_iters=100)
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, 99, cfg, g)
    assert t.min() >= cfg.t_min and t.max() < cfg.t_eps1
    # uniform: mean and sd of U(a, b)
    a, b = cfg.t_min, cfg.t_eps1
    assert t.mean().item() == pytest.approx((a + b) / 2, rel=0.01)
    assert t.std().item() == pytest.approx((b - a) / math.sqrt(12), rel=0.02)
    assert loss_weights(99, cfg) == (0.0, 1.0, 0.0)
    assert loss_weights(100, cfg) == (1.0, 1.0, 1.0)


def test_lognormal_after_warmup_matches_spec_probabilities():
    cfg = LossConfig(warmup_iters=0)
    t = sample_t(200000, 0, cfg, torch.Generator().manual_seed(1))
    assert t.min() >= cfg.t_min and t.max() <= cfg.t_max
    assert (t < 0.007).float().mean().item() == pytest.approx(0.0267, abs=0.002)
    assert (t < 0.0865).float().mean().item() == pytest.approx(0.2502, abs=0.004)
    assert torch.log(t).median().item() == pytest.approx(-1.1, abs=0.02)  # clamping leaves the median alone
    assert (torch.log(t) < -1.1 + 2.0).float().mean().item() == pytest.approx(0.8413, abs=0.003)  # +1 sd


def test_distance_is_plain_l2_norm_and_pseudo_huber():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    b[0, 0, 0, 0], b[0, 1, 2, 3] = 3.0, 4.0
    assert distance(a, b, LossConfig()).tolist() == pytest.approx([5.0, 0.0], abs=1e-6)
    assert distance(a, b, LossConfig(huber_c=1.0)).tolist() == pytest.approx([math.sqrt(26) - 1, 0.0], abs=1e-6)
    assert distance(a, b, LossConfig(metric='mse')).tolist() == pytest.approx([25 / 48, 0.0], abs=1e-6)


def test_mse_metric_learns_the_mean_and_the_norm_the_median():
    """What a denoiser fitted with each metric returns for a posterior of three images, two alike: the norm's
    minimiser is the geometric median (the majority image, the third one dropped), the mse's the mean."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 4, 4, generator=g), torch.rand(1, 3, 4, 4, generator=g)
    targets = torch.cat([a, a, b])
    for metric, expected in (('l2', a[0]), ('mse', targets.mean(0))):
        x = targets.mean(0, keepdim=True).clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.01)
        for _ in range(1500):
            opt.zero_grad()
            distance(x.expand_as(targets), targets, LossConfig(metric=metric)).sum().backward()
            opt.step()
        assert (x.detach()[0] - expected).abs().max() < 0.02, metric


def test_stage0_mse_learns_the_mean_with_the_norms_pull_at_the_gaussian_error():
    """stage0_metric 'mse' (posterior_mean_distance): its minimiser over the same three-image posterior is the mean;
    at an error of the size a Gaussian posterior leaves at t, c_out(t) per value, its pull is the norm's, 1."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 4, 4, generator=g), torch.rand(1, 3, 4, 4, generator=g)
    targets, t, cfg = torch.cat([a, a, b]), torch.full((3,), 0.3), LossConfig()
    x = targets.mean(0, keepdim=True).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(1500):
        opt.zero_grad()
        posterior_mean_distance(x.expand_as(targets), targets, t, cfg).sum().backward()
        opt.step()
    assert (x.detach()[0] - targets.mean(0)).abs().max() < 0.02
    for t in (0.01, 0.3, 5.0):
        c_out = t * 0.5 / (t ** 2 + 0.25) ** 0.5
        e = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)
        e = (c_out * 48 ** 0.5 * e / e.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).requires_grad_(True)
        posterior_mean_distance(e, torch.zeros_like(e), torch.full((2,), t, dtype=torch.float64), cfg).sum().backward()
        assert torch.allclose(e.grad.flatten(1).norm(dim=1), torch.ones(2, dtype=torch.float64))
        n = posterior_mean_distance(2 * e.detach(), torch.zeros_like(e), torch.full((2,), t, dtype=torch.float64), cfg)
        assert torch.allclose(n, 2.5 * e.detach().flatten(1).norm(dim=1))  # twice that error: pull 2, the norm's 1


def test_distance_gradient_matches_finite_differences():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: distance(x, y, LossConfig()), (x,))
    assert torch.autograd.gradcheck(lambda x: distance(x, y, LossConfig(huber_c=0.3)), (x,))
    assert torch.autograd.gradcheck(lambda x: distance(x, y, LossConfig(metric='mse')), (x,))


class LinearNet(torch.nn.Module):
    """A stand-in net(support, c_noise, query) -> render, simple enough to recompute the loss by hand."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, support, cn, query):
        return self.a * support + self.b * cn[:, None, None, None]


def loss_and_draws(cfg, net, support, target, step, seed=3, shared=True):
    """The loss on one batch, and its draws recomputed in the same order: t, then the support noise z."""
    out = INRCTLoss(cfg)(net, {'support': support, 'target': target, 'query': None, 'shared_noise': shared}, step,
                         torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    t = sample_t(len(support), step, cfg, g).double()
    z = torch.randn(support.shape, generator=g).double()
    return out, t, z, r_of_t(t, step, cfg)


def eq17_by_hand(f, target, t, r, step, cfg):
    """Eq. 17 recomputed from f(s) -> (f, raw render) at the loss's own draws t and r (boundary: r <= t_min)."""
    with torch.no_grad():
        f_t, raw_t = f(t)
        boundary = r <= cfg.t_min
        f_r = torch.where(boundary[:, None, None, None], target,
                          f(torch.where(boundary, torch.full_like(r, cfg.t_min), r))[0])
        norm = lambda d: d.flatten(1).norm(dim=1)  # noqa: E731
        l1, l2, l3 = loss_weights(step, cfg)
        return (1 / (t - r) * (l1 * norm(f_t - f_r) + l2 * norm(raw_t - target) * (t < cfg.t_eps1)
                               + l3 * norm(f_t - target) * (t < cfg.t_eps2))).mean()


@pytest.mark.parametrize('step', [0, 10, 35])  # warm-up, stage 0, stage 2
def test_loss_composes_the_three_terms_as_eq17(step):
    cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5)
    net = LinearNet()
    x = torch.randn(16, 3, 4, 4, dtype=torch.float64)
    (loss, parts), t, z, r = loss_and_draws(cfg, net, x, x, step)

    def f(s):
        s4 = s[:, None, None, None]
        raw = net.a * c_in(s4, cfg) * (x + s4 * z) + net.b * c_noise(s4)
        return c_skip(s4, cfg) * (x + s4 * z) + c_out(s4, cfg) * raw, raw

    assert loss.item() == pytest.approx(eq17_by_hand(f, x, t, r, step, cfg).item(), rel=1e-5)
    assert parts['stage'] == ect_stage(step, cfg) and parts['warmup'] == int(step < 10)
    assert parts['frac_recon'] == pytest.approx((t < cfg.t_eps1).double().mean().item())


class Constant(torch.nn.Module):
    """A stand-in denoiser that renders one fixed image, whatever it reads."""

    def __init__(self, image):
        super().__init__()
        self.image = image

    def forward(self, support, cn, query):
        return self.image.expand_as(support)


def test_distill_follows_the_denoisers_ode_and_with_the_exact_one_is_consistency_training():
    """CD's target input is the Euler step x_t + (r - t)(x_t - D(x_t, t))/t. For a dataset of one image x0 the exact
    denoiser is D = x0, and the step lands on x0 + r z, CT's own point: the two losses agree. With D = 0 (the mean of
    zero-mean data) the step is x_t r/t, and the loss is Eq. 17 with the teacher read there."""
    cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5, query_skip=False)
    cd = dataclasses.replace(cfg, distill=True)
    net, step = LinearNet(), 35  # stage 2
    x0 = torch.randn(1, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = x0.expand(16, -1, -1, -1).clone()
    batch = {'support': x, 'target': x, 'query': None, 'shared_noise': True}
    (ct_loss, _), t, z, r = loss_and_draws(cfg, net, x, x, step)
    cd_loss, _ = INRCTLoss(cd, Constant(x0))(net, batch, step, torch.Generator().manual_seed(3))
    assert (r > cfg.t_min).any() and cd_loss.item() == pytest.approx(ct_loss.item(), rel=1e-9)

    y = torch.randn(16, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    zero, _ = INRCTLoss(cd, Constant(torch.zeros(1, 3, 4, 4, dtype=torch.float64)))(
        net, {**batch, 'support': y, 'target': y}, step, torch.Generator().manual_seed(3))

    def f(s, inp):  # f = the render alone without the query skip
        s4 = s[:, None, None, None]
        return net.a * c_in(s4, cfg) * inp + net.b * c_noise(s4)
    with torch.no_grad():
        t4, r4, boundary = t[:, None, None, None], r[:, None, None, None], r <= cfg.t_min
        x_t = y + t4 * z
        f_r = torch.where(boundary[:, None, None, None], y, f(r.clamp(min=cfg.t_min), x_t * r4 / t4))
        norm = lambda d: d.flatten(1).norm(dim=1)  # noqa: E731
        f_t = f(t, x_t)
        by_hand = (1 / (t - r) * (norm(f_t - f_r) + norm(f_t - y) * (t < cfg.t_eps1)
                                  + norm(f_t - y) * (t < cfg.t_eps2))).mean()
    assert zero.item() == pytest.approx(by_hand.item(), rel=1e-6)  # t is drawn in float32
    # and CT's loss on the same draws is another number, told apart well beyond the tolerance above (the step's
    # change of x_r, y (1 - r/t), is small at stage 2, and the small-t anchor terms, alike in both, dominate)
    assert abs(zero.item() - loss_and_draws(cfg, net, y, y, step)[0][0].item()) > 1e-4 * zero.item()
    with pytest.raises(ValueError, match='distill needs a frozen denoiser'):
        INRCTLoss(cd)(net, batch, step, torch.Generator().manual_seed(3))


def test_a_guided_denoiser_steps_the_ode_of_d_guide_plus_w_times_the_difference():
    """With a guide, CD's ODE step uses D = D_guide + w (D - D_guide): for constant stand-ins D = a, D_guide = b it is
    the step of the constant b + w (a - b); at w = 1 the guide changes nothing."""
    cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5, query_skip=False, distill=True)
    g = torch.Generator().manual_seed(6)
    a, b, y = (torch.randn(1 if i < 2 else 16, 3, 4, 4, dtype=torch.float64, generator=g) for i in range(3))
    batch, step = {'support': y, 'target': y, 'query': None, 'shared_noise': True}, 35
    net = LinearNet()

    def loss(w, denoiser, guide=None):
        return INRCTLoss(dataclasses.replace(cfg, guide_w=w), denoiser, guide)(
            net, batch, step, torch.Generator().manual_seed(3))[0].item()
    plain = loss(1.0, Constant(a))
    assert loss(1.0, Constant(a), Constant(b)) == pytest.approx(plain, rel=1e-12)
    for w in (0.0, 2.5):
        assert loss(w, Constant(a), Constant(b)) == pytest.approx(loss(1.0, Constant(b + w * (a - b))), rel=1e-12)
    assert abs(loss(2.5, Constant(a), Constant(b)) - plain) > 1e-3 * plain  # the guide does reach the target


# stage 0 (every term pulls towards the clean target), stage 2; without the query skip only stage 0, since the
# stand-in render below does not depend on t, so f(t) = f(r) and L_gene pulls on nothing
@pytest.mark.parametrize('step,query_skip', [(10, True), (35, True), (10, False)])
def test_render_gradient_scale_matches_autograd(step, query_skip):
    from tools.gradient_share import render_gradient_scale
    """Per-sample norm of d loss / d render against render_gradient_scale: equal in stage 0 without recon
    samples (the terms pull one way), equal for samples with gene only, never above it."""
    cfg = LossConfig(warmup_iters=10, d=10, lambdas=(1.0, 3.0, 2.0), query_skip=query_skip)
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    raw = torch.zeros(64, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    net = lambda support, cn, query: raw + 0 * support  # noqa: E731  the render is a leaf: its grad is exact
    batch = {'support': x, 'target': x, 'query': None, 'shared_noise': True}
    loss, _ = INRCTLoss(cfg)(net, batch, step, torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad(loss, raw)
    got = grad.flatten(1).norm(dim=1) * 64  # the loss is a batch mean
    t = sample_t(64, step, cfg, torch.Generator().manual_seed(5)).double()
    want = render_gradient_scale(t, step, cfg)
    assert (got <= want * (1 + 1e-5)).all()  # t is float32 in the loss
    exact = (t >= cfg.t_eps1) & ((t >= cfg.t_eps2) | (ect_stage(step, cfg) == 0))
    assert exact.sum() > 20
    assert torch.allclose(got[exact], want[exact], rtol=1e-5)


@pytest.mark.parametrize('step', [10, 35])
def test_noise_sharing_is_the_batch_flag_not_tensor_identity(step):
    """Eq. 13's one noise z for support and query is asked for by batch['shared_noise']: a copy of the images gives
    the same loss as the images themselves; without the flag the query set gets its own draw (a NeRF batch)."""
    cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5)
    x = torch.randn(16, 3, 4, 4, dtype=torch.float64)
    same = loss_and_draws(cfg, LinearNet(), x, x, step)[0][0]
    copied = loss_and_draws(cfg, LinearNet(), x, x.clone(), step)[0][0]
    apart = loss_and_draws(cfg, LinearNet(), x, x.clone(), step, shared=False)[0][0]
    assert copied.item() == same.item()
    assert abs(apart.item() - same.item()) > 1e-3 * abs(same.item())


def test_query_skip_off_makes_f_the_render_alone():
    """Eq. 12 passes the noisy query set through c_skip; with query_skip False (NeRF: the query view is one the
    network never sees) f is the render, whatever the query noise."""
    net = LinearNet()
    support = torch.randn(4, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 2.0, 80.0], dtype=torch.float64)
    q1, q2 = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    paper, off = LossConfig(), LossConfig(query_skip=False)
    with torch.no_grad():
        f1, raw = consistency_fn(net, support, q1, t, None, paper)
        f2, _ = consistency_fn(net, support, q2, t, None, paper)
        g1, raw_off = consistency_fn(net, support, q1, t, None, off)
        g2, _ = consistency_fn(net, support, q2, t, None, off)
    assert torch.allclose(f1 - f2, c_skip(t, paper)[:, None, None, None] * (q1 - q2))
    assert torch.equal(g1, raw_off) and torch.equal(g1, g2) and torch.equal(raw_off, raw)


@pytest.mark.parametrize('step', [10, 35])  # stage 0 (r = 0: the clean target), stage 2
def test_loss_without_query_skip_matches_eq17_with_f_the_render(step):
    """Support and query are different tensors (a NeRF batch): noise z_s on the support, z_q on the query; with
    query_skip False every term compares the render itself, so z_q drops out."""
    cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5, query_skip=False, lambdas=(1.0, 2.0, 3.0))
    net = LinearNet()
    support, target = torch.randn(2, 16, 3, 4, 4, dtype=torch.float64)
    (loss, _), t, z, r = loss_and_draws(cfg, net, support, target, step, shared=False)

    def f(s):  # the render alone: z_q appears nowhere
        s4 = s[:, None, None, None]
        raw = net.a * c_in(s4, cfg) * (support + s4 * z) + net.b * c_noise(s4)
        return raw, raw

    assert loss.item() == pytest.approx(eq17_by_hand(f, target, t, r, step, cfg).item(), rel=1e-5)


def test_stage_zero_length_and_stage_cap_follow_their_keys():
    """ect_stage0 sets how long r = 0 (denoising at every t) lasts after the warm-up; max_stage stops the tightening."""
    cfg = LossConfig(d=10, warmup_iters=5, stage0_iters=40, max_stage=3)
    assert [ect_stage(s, cfg) for s in (0, 4, 5, 44, 45, 54, 55, 64, 65, 1000)] == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    t = torch.logspace(-2, 1.9, 30, dtype=torch.float64)
    assert torch.all(r_of_t(t, 44, cfg) == 0) and r_of_t(t, 45, cfg)[-1] > 0  # stage 1: r(80) = 40
    assert torch.equal(r_of_t(t, 1000, cfg), r_of_t(t, 65, cfg))
    default = LossConfig(d=10, warmup_iters=5)  # stage0_iters 0: stage 0 lasts d, as ECT's a = floor(steps / d)
    assert [ect_stage(s, default) for s in range(5, 60)] == [(s - 5) // 10 for s in range(5, 60)]


@pytest.mark.parametrize('query_skip', [True, False])
def test_weightings_against_their_formulas(query_skip):
    t = torch.logspace(-2.5, 1.9, 40, dtype=torch.float64)
    for step in (5, 35):  # stage 0 and stage 3
        cfg = LossConfig(d=10, warmup_iters=5, query_skip=query_skip)
        r = r_of_t(t, step, cfg)
        w = {k: loss_weight(t, r, LossConfig(d=10, warmup_iters=5, query_skip=query_skip, weighting=k))
             for k in ('inv_dt', 'ect', 'uniform')}
        assert torch.allclose(w['inv_dt'], 1 / (t - r))
        ect = 1 / (t - r) if query_skip else t * 0.5 / (t ** 2 + 0.25).sqrt() / (t - r)
        assert torch.allclose(w['ect'], ect)
        n = 1 + 8 * torch.sigmoid(-t)
        assert torch.allclose(w['uniform'], 2 ** ect_stage(step, cfg) / (n if step > 15 else 1 + 0 * t))
    with pytest.raises(ValueError, match='weighting'):
        loss_weight(t, 0 * t, LossConfig(weighting='edm'))


def test_uniform_gene_weights_the_consistency_term_uniformly_and_the_anchors_by_inv_dt():
    """The loss under 'uniform_gene' = mean(t/(t - r) l1 L_gene + 1/(t - r) (l2 L_recon + l3 L_diff)), recomputed from
    the per-term losses of 'uniform' and 'inv_dt' runs on the same draws (each is one weight times the terms)."""
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    step = 35  # stage 2: every term is active
    parts = {}
    for k in ('uniform_gene', 'uniform', 'inv_dt'):
        for lam in ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)):
            cfg = LossConfig(warmup_iters=10, d=10, t_eps2=0.5, weighting=k, lambdas=lam)
            parts[k, lam] = loss_and_draws(cfg, LinearNet(), x, x, step)[0][0].item()
    gene, anchors = (1.0, 0.0, 0.0), (0.0, 1.0, 1.0)
    assert parts['uniform_gene', gene] == pytest.approx(parts['uniform', gene], rel=1e-9)
    assert parts['uniform_gene', anchors] == pytest.approx(parts['inv_dt', anchors], rel=1e-9)
    assert parts['uniform', anchors] < parts['inv_dt', anchors] / 2  # what 'uniform' takes from the anchors


def test_boundary_sigma_makes_f_the_input_at_t_min_and_nothing_of_it_beyond():
    """query_skip False with boundary_sigma s: c_skip = s^2/((t - t_min)^2 + s^2), c_out = 1 - c_skip, so
    f(x, t_min) = x whatever the network draws, while the input noise c_skip t z it lets into f stays below s/2."""
    cfg = LossConfig(query_skip=False, boundary_sigma=0.02)
    t = torch.logspace(math.log10(0.003), math.log10(80), 400, dtype=torch.float64)
    assert torch.allclose(c_skip(t, cfg), 0.02 ** 2 / ((t - 0.003) ** 2 + 0.02 ** 2))
    assert torch.allclose(c_out(t, cfg), 1 - c_skip(t, cfg))
    assert (c_skip(t, cfg) * t).max() < 0.02 / 2 + 0.003
    net = lambda s, c, q: torch.full_like(s, 0.7)  # a network that ignores its input
    x = torch.rand(3, 3, 4, 4) * 2 - 1
    f, raw = consistency_fn(net, x, x, torch.full((3,), 0.003), None, cfg)
    assert torch.equal(f, x) and torch.all(raw == 0.7)
    f_off, _ = consistency_fn(net, x, x, torch.full((3,), 0.003), None, LossConfig(query_skip=False))
    assert torch.all(f_off == 0.7)  # without it the boundary rests on the loss alone


# --- the optimiser step: torch's RAdam arithmetic, gated on the device, nothing read back by the host ----------
def radam_pair():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.GELU(), torch.nn.Linear(9, 2))
    b = copy.deepcopy(a)
    return a, b, torch.optim.RAdam(a.parameters(), lr=3e-2), RAdam(b.parameters(), lr=3e-2)


def test_gated_radam_is_torch_radam_bitwise_and_a_non_finite_step_changes_nothing():
    a, b, opt_a, opt_b = radam_pair()
    for i in range(10):  # steps 1-5 un-rectified (rho_t <= 5), then rectified
        x = torch.randn(4, 6)
        for net, opt in ((a, opt_a), (b, opt_b)):
            net(x).square().sum().backward()
            opt.step() if opt is opt_a else opt.step(torch.tensor(True))
            opt.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    opt_a.load_state_dict(opt_b.state_dict())  # the same state: checkpoints load into either
    before = copy.deepcopy(opt_b.state_dict()['state'])
    weights = [p.clone() for p in b.parameters()]
    b(torch.randn(4, 6)).sum().backward()
    next(b.parameters()).grad[0, 0] = float('nan')
    opt_b.step(torch.tensor(False))
    assert all(torch.equal(p, w) for p, w in zip(b.parameters(), weights))
    for k, s in opt_b.state_dict()['state'].items():
        assert torch.equal(s['exp_avg'], before[k]['exp_avg']) and torch.equal(s['exp_avg_sq'], before[k]['exp_avg_sq'])


def test_train_step_reads_nothing_back_from_the_device(monkeypatch):
    """No .item(), bool() or float() of a tensor inside the step but the optimiser's CPU step counters: on a GPU each
    would stall the queue. A non-finite gradient is skipped all the same (weights and EMA unchanged)."""
    import train
    from model import build_model
    from data import ShapesDataset
    cfg = {**train.defaults(), 'batch_size': 4, 'warmup_iters': 1, 'ect_d': 1, 'num_workers': 0}
    torch.manual_seed(0)
    model = build_model('tiny', 16, 4)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt, loss_fn = RAdam(model.parameters(), lr=1e-3), INRCTLoss(train.loss_config(cfg))
    raw = model.inr.read_batch(ShapesDataset('train', 16), [0, 1, 2, 3], cfg, None)

    def micro_batch(m):
        g = torch.Generator().manual_seed(m)
        return model.inr.train_batch(raw, cfg, g, 'cpu'), g

    read = []
    for name in ('item', '__bool__', '__float__', '__int__', 'tolist'):
        real = getattr(torch.Tensor, name)

        def spy(self, *args, _real=real, _name=name):
            if not any(self is s['step'] for s in opt.state.values()):
                read.append((_name, tuple(self.shape)))
            return _real(self, *args)
        monkeypatch.setattr(torch.Tensor, name, spy)
    for step in (0, 3):  # warm-up, then stage > 0 with the teacher pass and the EMA
        finite, parts, _ = train_step(model, model, ema, None, opt, loss_fn, micro_batch, 1, step, cfg)
    monkeypatch.undo()
    assert read == [] and isinstance(finite, torch.Tensor) and bool(finite)
    assert all(isinstance(parts[k], torch.Tensor) for k in ('loss', 'L_gene', 'L_recon', 'L_diff'))
    weights, averaged = [p.clone() for p in model.parameters()], [p.clone() for p in ema.parameters()]

    def poisoned(m):
        batch, g = micro_batch(m)
        return {**batch, 'support': batch['support'] * float('nan')}, g
    finite, _, _ = train_step(model, model, ema, None, opt, loss_fn, poisoned, 1, 4, cfg)
    assert not bool(finite)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert all(torch.equal(p, w) for p, w in zip(ema.parameters(), averaged))


def test_stage0_edm_is_edm_pretraining_in_stage_0_and_the_plain_config_after():
    """stage0_edm: in stage 0 (after the warm-up) t ~ LogNormal(-1.2, 1.2) and every term weighs 1, exactly the loss of
    weighting 'uniform' with EDM's p(t); from stage 1 on, the loss of the config without it."""
    base = dict(d=4, stage0_iters=6, warmup_iters=2, weighting='uniform_gene', query_skip=False, boundary_sigma=0.02)
    edm = LossConfig(**base, stage0_edm=True)
    x = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    for step, same_as in ((0, LossConfig(**base)), (5, LossConfig(**{**base, 'weighting': 'uniform'}, P_mean=-1.2,
                                                                      P_std=1.2)), (9, LossConfig(**base))):
        assert ect_stage(step, edm) == ect_stage(step, same_as)
        got = loss_and_draws(edm, LinearNet(), x, x, step)[0][0]
        want = loss_and_draws(same_as, LinearNet(), x, x, step)[0][0]
        assert got.item() == want.item(), step
    t = sample_t(20000, 5, edm, torch.Generator().manual_seed(0)).double()
    assert t.log().median().item() == pytest.approx(-1.2, abs=0.03)
    assert t.log().std().item() == pytest.approx(1.2, abs=0.03)
    assert loss_and_draws(edm, LinearNet(), x, x, 5)[0][0].item() != loss_and_draws(LossConfig(**base), LinearNet(), x, x,
                                                                                      5)[0][0].item()


def test_step_lr_by_phase():
    lcfg = LossConfig(d=4, stage0_iters=6, warmup_iters=2)
    cfg = {'warmup_iters': 2, 'lr': 1e-3, 'lr_full': 1e-4, 'stage0_lr': 5e-4}
    assert [step_lr(s, cfg, lcfg) for s in (0, 1, 2, 7, 8, 20)] == [1e-3, 1e-3, 5e-4, 5e-4, 1e-4, 1e-4]
    assert [step_lr(s, {**cfg, 'stage0_lr': 0.0}, lcfg) for s in (1, 2, 8)] == [1e-3, 1e-4, 1e-4]
    assert [step_lr(s, {**cfg, 'stage0_lr': 0.0, 'lr_full': 0.0}, lcfg) for s in (1, 2, 8)] == [1e-3, 1e-3, 1e-3]
    # stage0_decay 3: stage 0 is steps 2-7, so steps 5, 6, 7 (3, 2, 1 steps left) fall linearly towards lr_full
    decay = [step_lr(s, {**cfg, 'stage0_decay': 3}, lcfg) for s in (4, 5, 6, 7, 8)]
    assert decay == pytest.approx([5e-4, 5e-4, 1e-4 + 4e-4 * 2 / 3, 1e-4 + 4e-4 / 3, 1e-4], rel=1e-12)


def test_autoguidance_extrapolates_from_the_weaker_denoiser():
    """tools/autoguidance: D = D_bad + w (D_good - D_bad): w = 1 is the good denoiser itself (one evaluation),
    w = 0 the weak one, w = 2 past the good one by the same distance."""
    from tools.autoguidance import guided
    good, bad = (lambda x, t: 0.8 * x + t), (lambda x, t: 0.5 * x)
    x = torch.randn(2, 3, 4, 4)
    assert guided(good, bad, 1.0) is good
    torch.testing.assert_close(guided(good, bad, 0.0)(x, 0.3), bad(x, 0.3))
    torch.testing.assert_close(guided(good, bad, 2.0)(x, 0.3), 1.1 * x + 0.6)

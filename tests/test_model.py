"""Hyper-network, image INR and their training signal: identities at init, LAL, any-resolution rendering,
gradient flow through every loss term, and a tiny model overfitting one batch."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from data import ShapesDataset
from inr import ImageINR, jitter_grid, localised_attention, make_grid, positional_encoding, psnr, to_float
from losses import INRCTLoss, LossConfig
from model import HyperConfig, HyperNetwork, TokenConv, build_model, count_params


def test_paper_preset_counts_145_5M_within_5_percent():
    n = count_params(build_model('paper', 64, 4, 64.0))
    assert abs(n - 145.5e6) / 145.5e6 < 0.05, n


def test_every_adaln_zero_block_is_the_identity_at_init():
    torch.manual_seed(0)
    net = HyperNetwork(HyperConfig(token_dim=12, grid=4, dim=64, ff_dim=128, heads=4, enc_depth=3, dec_depth=1,
                                   inr_tokens=16, inr_token_dim=32))
    x, c = torch.randn(2, 16, 64), net.time(torch.tensor([-1.0, 0.5]))
    for block in net.encoder:
        assert torch.equal(block(x, c), x)


def test_hypernetwork_output_shape_and_time_dependence():
    torch.manual_seed(0)
    m = build_model('tiny', 32, 4, 32.0)
    for block in m.hyper.encoder:  # leave the zero init so the time embedding reaches the output
        torch.nn.init.normal_(block.ada[-1].weight, std=0.05)
    x = torch.randn(2, 3, 32, 32)
    b1 = m.encode(x, torch.tensor([-1.0, -1.0]))
    b2 = m.encode(x, torch.tensor([1.0, 1.0]))
    assert b1.shape == (2, 64, 64)
    assert not torch.allclose(b1, b2)


def test_local_query_start_is_scaled_by_the_signal_share_of_the_input():
    """Gate sigma_d^2 / (t^2 + sigma_d^2): the local start passes at t_min and is shut at T, where it carried noise."""
    torch.manual_seed(0)
    gated = build_model('tiny', 32, 4, 32.0)
    for block in gated.hyper.encoder:  # leave the zero init so the encoder output depends on t
        torch.nn.init.normal_(block.ada[-1].weight, std=0.05)
    plain = copy.deepcopy(gated)
    plain.hyper.cfg.local_gate = 0.0
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.002, 80.0])
    c = torch.log(t) / 4
    assert torch.allclose(gated.hyper.local_gate(c).flatten(), 0.25 / (t ** 2 + 0.25), rtol=1e-6)
    b_gated, b_plain = gated.encode(x, c), plain.encode(x, c)
    plain.hyper.local_features = lambda feats: 0.0
    b_none = plain.encode(x, c)
    effect = (b_plain - b_none).abs().amax(dim=(1, 2))   # what the ungated local start adds, per t
    assert effect.min() > 0.1 * b_plain.abs().max()
    assert (b_gated[0] - b_plain[0]).abs().max() < 1e-3 * effect[0]  # t_min: the ungated model
    assert (b_gated[1] - b_none[1]).abs().max() < 1e-2 * effect[1]   # T: as if there were no local start
    for power in (0.5, 2.0):  # local_gate is the power of the share: 0.5 damps mid t less, 2 more
        gated.hyper.cfg.local_gate = power
        assert torch.allclose(gated.hyper.local_gate(c).flatten(), (0.25 / (t ** 2 + 0.25)) ** power, rtol=1e-5)


def test_conv_stem_starts_as_no_change_and_reads_pixels_where_they_are():
    """--conv_stem: zero at init (the linear-embedding model); its convolutions act on the pixel grid the tokens came
    from, so a pixel changes the stem's features of its own patch and its neighbours', not of a far or transposed one."""
    torch.manual_seed(0)
    m = build_model('tiny', 32, 4, 32.0, conv_stem=8)
    x, c = torch.randn(2, 3, 32, 32), torch.tensor([-1.0, 0.5])
    with_stem = m.encode(x, c)
    stem, m.hyper.stem = m.hyper.stem, None
    assert torch.equal(with_stem, m.encode(x, c))
    torch.nn.init.normal_(stem.out.weight, std=0.1)
    tokens, emb = m.inr.tokenize(x), m.hyper.time(c)
    y = x.clone()
    y[:, :, 1, 20] += 1.0                                    # row 1, column 20: the left edge of patch (0, 5)
    change = (stem(m.inr.tokenize(y), emb) - stem(tokens, emb)).abs().amax(dim=(0, 2))  # per token
    far = max(change[0], change[40])  # far away; and where a transposed layout would put the pixel (GroupNorm: > 0)
    assert min(change[5], change[4]) > 20 * far              # its patch and the one across the border
    with pytest.raises(ValueError, match='conv_stem'):
        build_model('tiny', 8, 2, modality='occupancy', conv_stem=8)


def test_token_conv_starts_as_no_change_and_mixes_only_grid_neighbours():
    """--token_conv: zero at init (the model without it); it mixes a token with its grid neighbours only, in the
    row-major layout of patchify, per view (NeRF: views one after another), and on 3D grids (voxels) as well."""
    torch.manual_seed(0)
    m = build_model('tiny', 32, 4, 32.0, token_conv=3)
    x, c = torch.randn(2, 3, 32, 32), torch.tensor([-1.0, 0.5])
    with_conv = m.encode(x, c)
    for block in [*m.hyper.encoder, *m.hyper.decoder]:
        block.ff.conv = None
    assert torch.equal(with_conv, m.encode(x, c))
    for side, dims, views in ((8, 2, 1), (8, 2, 2), (4, 3, 1)):
        conv = TokenConv(5, side, dims, 3)
        torch.nn.init.normal_(conv.conv.weight)
        h = torch.randn(1, views * side ** dims, 5)
        pos = (1, 2, 1)[:dims]                               # not symmetric: a transposed layout moves it
        i = (views - 1) * side ** dims + sum(p * side ** (dims - 1 - k) for k, p in enumerate(pos))  # the last view's
        g = h.clone()
        g[0, i] += 1.0
        changed = set(((conv(g) - conv(h)).abs().amax(-1)[0] > 1e-6).nonzero().flatten().tolist())
        offsets = [sum(d * side ** k for k, d in enumerate(ds)) for ds in itertools.product((-1, 0, 1), repeat=dims)]
        assert changed == {i + o for o in offsets}


def test_bench_counts_a_grouped_conv_at_its_true_cost():
    """bench.py's FLOP count: a depthwise conv's backward (grad-input and grad-weight) costs two of its forwards, where
    torch's counter alone counts it as ungrouped; an ordinary conv keeps torch's count."""
    from torch.utils.flop_counter import FlopCounterMode
    from bench import count_flops
    depthwise, x = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64), torch.randn(2, 64, 8, 8, requires_grad=True)
    forward = 2 * (2 * 64 * 8 * 8) * 9                       # 2 * outputs * (in channels per group * kernel)
    assert count_flops(lambda: depthwise(x).sum().backward()) == 3 * forward
    dense = torch.nn.Conv2d(64, 32, 3, padding=1)
    with FlopCounterMode(display=False) as torch_count:
        dense(x).sum().backward()
    assert count_flops(lambda: dense(x).sum().backward()) == torch_count.get_total_flops() == 3 * 2 * (2 * 32 * 64) * 64 * 9


def test_wrong_resolution_is_a_clear_error():
    m = build_model('tiny', 32, 4, 32.0)
    with pytest.raises(ValueError, match='32x32'):
        m.encode(torch.randn(1, 3, 64, 64), torch.zeros(1))


def test_grid_is_pixel_centres():
    g = make_grid(2, 4)
    assert g.shape == (2, 4, 2)
    assert g[:, 0, 0].tolist() == [-0.5, 0.5]            # rows
    assert g[0, :, 1].tolist() == [-0.75, -0.25, 0.25, 0.75]  # cols


def test_variational_jitter_is_bounded_and_nonzero():
    g = make_grid(16, 8)
    j = jitter_grid(g, torch.Generator().manual_seed(0)) - g
    n = 1 / 16
    assert j.abs().max() <= n / 2 + 1e-7 and j.abs().mean() > 0.1 * n
    assert j.std().item() == pytest.approx(0.3 * n, rel=0.15)


def test_positional_encoding_frequencies():
    x = torch.tensor([[0.25, -0.5]])
    pe = positional_encoding(x, 3, 4.0)  # w = 1, 2, 4
    xw = torch.tensor([0.25, 0.5, 1.0, -0.5, -1.0, -2.0])
    assert torch.allclose(pe, torch.cat([torch.cos(torch.pi * xw), torch.sin(torch.pi * xw)])[None], atol=1e-6)


@pytest.mark.parametrize('scale', [1e-6, 1.0, 1e4])
def test_localised_attention_rows_are_finite_and_sum_to_one(scale):
    torch.manual_seed(0)
    K = 64
    q, k = torch.randn(2, 2, 50, 8) * scale, torch.randn(2, 2, K, 8) * scale
    v = torch.eye(K)[None, None, :, :].expand(2, 2, K, K)  # identity values: the output rows are the weights
    a = localised_attention(q, k, v, tau=0.384 / K)
    assert torch.isfinite(a).all()
    assert torch.allclose(a.sum(-1), torch.ones(2, 2, 50), atol=1e-4)
    assert (a >= 0).all()


def test_localised_attention_gradient_matches_finite_differences():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: localised_attention(q, k, v, tau=0.05), (q, k, v))


@pytest.mark.parametrize('hw', [(32, 32), (17, 45), (64, 64)])
def test_image_inr_renders_any_size(hw):
    inr = ImageINR(width=32, depth=3, heads=2, tokens=16, pe_sigma=8.0, resolution=32, patch=4)
    out = inr.render(torch.randn(3, 16, 32), make_grid(*hw), chunk=100)
    assert out.shape == (3, 3, *hw) and torch.isfinite(out).all()


def test_chunked_render_equals_one_pass():
    torch.manual_seed(0)
    inr = ImageINR(width=32, depth=3, heads=2, tokens=16, pe_sigma=8.0)
    beta = torch.randn(2, 16, 32)
    assert torch.allclose(inr.render(beta, make_grid(20, 20), chunk=37), inr.render(beta, make_grid(20, 20)),
                          atol=1e-6)


def test_render_at_2x_pooled_matches_native_for_a_smooth_inr():
    torch.manual_seed(0)
    inr = ImageINR(width=32, depth=3, heads=2, tokens=16, pe_sigma=2.0)  # low frequencies: a smooth function
    beta = torch.randn(2, 16, 32)
    native = inr.render(beta, make_grid(32, 32))
    pooled = F.avg_pool2d(inr.render(beta, make_grid(64, 64)), 2)
    err = (pooled - native).abs().max() / (native.max() - native.min())
    assert err < 0.003, err  # measured 8e-4 of the image's range
    # and the comparison has teeth: a half-pixel shift of the native grid moves it far more
    shifted = inr.render(beta, make_grid(32, 32) + 1 / 32)
    assert (shifted - native).abs().max() / (native.max() - native.min()) > 5 * err


def small_model():
    torch.manual_seed(0)
    return build_model('tiny', 32, 4, 32.0)


def batch_of(n):
    x = to_float(ShapesDataset('train', 32).get(range(n)))
    return {'support': x, 'target': x, 'query': make_grid(32, 32), 'shared_noise': True}


@pytest.mark.parametrize('term', ['gene', 'recon', 'diff'])
def test_gradients_reach_every_parameter_through_each_loss_term(term):
    net = small_model()
    for block in net.hyper.encoder:  # adaLN-Zero gates are 0 at init and block gradients to attention/FF
        torch.nn.init.normal_(block.ada[-1].weight, std=0.02)
    lam = {'gene': (1.0, 0.0, 0.0), 'recon': (0.0, 1.0, 0.0), 'diff': (0.0, 0.0, 1.0)}[term]
    # every sample inside the term's mask; stage 3 so the gene target is a real teacher pass at r > 0
    cfg = LossConfig(d=1, lambdas=lam, t_eps1=100.0, t_eps2=100.0, P_mean=0.0, P_std=0.5)
    loss, _ = INRCTLoss(cfg)(net, batch_of(4), 3, torch.Generator().manual_seed(0))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name} through L_{term}"


def test_tiny_model_overfits_one_batch():
    """Reconstruction (the ETS warm-up objective) drives PSNR on one fixed batch above 25 dB."""
    net = small_model()
    batch = batch_of(4)
    cfg = LossConfig(warmup_iters=10 ** 9)
    loss_fn, opt = INRCTLoss(cfg), torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x, grid, best = batch['target'], batch['query'], 0.0
    for step in range(600):
        b = dict(batch, query=jitter_grid(grid.expand(4, 32, 32, 2), g))
        loss, _ = loss_fn(net, b, step, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            with torch.no_grad():
                t = torch.full((4,), cfg.t_min)
                rec = net(x * (1 / (t[0] ** 2 + 0.25) ** 0.5), torch.log(t) / 4, grid)
            best = max(best, psnr(rec, x).mean().item())
            if best > 25:
                break
    assert best > 25, f"PSNR only reached {best:.2f} dB"


def roughness_in_t(model, t):
    """Total variation of the output along a sweep of the time label (input held fixed) over its end-to-end change."""
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = torch.cat([model.encode(x, torch.log(ti).view(1) / 4) for ti in t]).flatten(1)  # (len(t), K * C)
    return ((out[1:] - out[:-1]).norm(dim=1).sum() / (out[-1] - out[0]).norm()).item()


@pytest.mark.parametrize('kind,scale,smooth', [('positional', 1.0, True), ('fourier', 1.0, True),
                                               ('positional', 1000.0, False)])
def test_output_is_smooth_in_t_at_initialisation(kind, scale, smooth):
    """Consistency training asks f(x, t) to change little between neighbouring t: with the input fixed, a fine sweep
    of t over the generation range [10, 80] and over the whole range must move the untrained network's output along
    a near-straight path (total variation within 3x the end-to-end change). DiT's integer-step ladder fed 1000 c_noise
    (the ablation) fails the same test by far."""
    torch.manual_seed(0)
    m = build_model('tiny', 32, 4, 32.0, time_embed=kind, time_scale=scale)
    for block in m.hyper.encoder:  # leave the zero init so the time embedding reaches the encoder too
        torch.nn.init.normal_(block.ada[-1].weight, std=0.05)
    for t in (torch.linspace(10, 80, 300), torch.logspace(math.log10(0.003), math.log10(80), 300)):
        ratio = roughness_in_t(m, t)
        assert (ratio < 3) if smooth else (ratio > 20), (kind, scale, ratio)


def test_pixel_head_puts_each_token_on_its_own_patch():
    """--inr pixels: token (i, j) of the 8 x 8 grid draws exactly pixels [4i, 4i+4) x [4j, 4j+4), and off the
    training grid the render is the bilinear resize of that image."""
    m = build_model('tiny', 32, 4, 32.0, inr='pixels')
    beta = torch.randn(1, 64, 64, requires_grad=True)
    img = m.inr.render(beta, make_grid(32, 32))
    assert img.shape == (1, 3, 32, 32)
    for k, (r, c) in enumerate([(0, 0), (13, 5), (31, 30)]):
        g, = torch.autograd.grad(img[0, k, r, c], beta, retain_graph=True)
        touched = g.abs().sum(-1).flatten().nonzero().flatten().tolist()
        assert touched == [(r // 4) * 8 + c // 4], (r, c, touched)
    big = m.inr.render(beta, make_grid(64, 64))
    assert torch.allclose(big, F.interpolate(img, size=(64, 64), mode='bilinear', align_corners=False), atol=1e-6)


def test_every_inr_answers_the_modality_interface_with_one_signature():
    """train.py, sample.py and fid.py call only inr.Modality's methods: each INR class has all of them, with the
    same parameters, so a script never needs to know which modality it drives."""
    import inspect
    from inr import ImageINR, PixelINR
    from nerf import NeRFINR
    from occupancy import OccupancyINR
    names = ['check_dataset', 'read_batch', 'train_batch', 'write_progress', 'evaluate_encoding', 'write_samples', 'sample_arrays',
             'reference_split', 'reference_arrays', 'nfe']
    for name in names:
        sigs = {cls.__name__: list(inspect.signature(getattr(cls, name)).parameters)
                for cls in (ImageINR, PixelINR, NeRFINR, OccupancyINR)}
        want = sigs['ImageINR']
        assert all(s[:len(want)] == want for s in sigs.values()), (name, sigs)  # extras only after, with defaults
    kinds = {cls.data_kind for cls in (ImageINR, NeRFINR, OccupancyINR)}
    assert kinds == {'images', 'scenes', 'voxels'} and PixelINR.data_kind == 'images'

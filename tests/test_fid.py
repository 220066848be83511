"""fid.py: the InceptionV3 against pytorch-fid test vectors (recipe weights), and every metric against
cases whose answer is known in closed form."""
import json
import math
import os

import warnings

import numpy as np
import pytest
import torch

import fid

REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'data', 'fid_reference')
needs_ref = pytest.mark.skipif(not os.path.isdir(REF), reason='shared fid_reference vectors absent')


def recipe_state_dict(model):
    """Deterministic weights by the recipe in fid_reference/README.md (float32, one seeded generator per key)."""
    state = model.state_dict()
    keys = sorted(k for k in state if not k.endswith('num_batches_tracked'))
    out = {}
    for i, k in enumerate(keys):
        s = state[k].shape
        g = torch.Generator().manual_seed(1000 + i)
        if 'running_var' in k:
            out[k] = 0.5 + torch.rand(s, generator=g)
        elif 'running_mean' in k:
            out[k] = 0.1 * torch.randn(s, generator=g)
        elif k.endswith('weight') and len(s) == 1:
            out[k] = 1 + 0.1 * torch.randn(s, generator=g)
        elif k.endswith('bias'):
            out[k] = 0.05 * torch.randn(s, generator=g)
        else:
            out[k] = torch.randn(s, generator=g) * math.sqrt(2.0 / (state[k].numel() / s[0]))
    return out


@pytest.fixture(scope='module')
def ref():
    return np.load(os.path.join(REF, 'fid_inception_reference.npz'))


@pytest.fixture(scope='module')
def recipe_net():
    net = fid.InceptionV3()
    net.load_state_dict(recipe_state_dict(net), strict=False)
    return net


@needs_ref
def test_state_dict_matches_manifest_key_for_key(ref):
    manifest = json.load(open(os.path.join(REF, 'state_dict_manifest.json')))
    state = fid.InceptionV3().state_dict()
    assert list(state) == [e['key'] for e in manifest['entries']] == list(ref['state_dict_keys'])
    for e in manifest['entries']:
        assert list(state[e['key']].shape) == e['shape'], e['key']
    assert sum(v.numel() for k, v in state.items() if v.is_floating_point()) == manifest['num_float_params']


@needs_ref
def test_recipe_weights_match_manifest_checksums(recipe_net):
    manifest = json.load(open(os.path.join(REF, 'state_dict_manifest.json')))
    state = recipe_net.state_dict()
    for e in manifest['entries']:
        if 'sum' not in e:
            continue
        w = state[e['key']].double()
        assert w.sum().item() == pytest.approx(e['sum'], rel=1e-6, abs=1e-6), e['key']
        assert w.flatten()[:4].tolist() == pytest.approx(e['first4'], rel=1e-6), e['key']


def run_images(net, images, dtype):
    x = torch.as_tensor(images).permute(0, 3, 1, 2).to(dtype) / 255  # /255 in the working dtype (README)
    with torch.no_grad():
        pool3, logits = net.to(dtype)(x)
    return pool3.double().numpy(), logits.double().numpy()


@needs_ref
def test_features_and_logits_match_pytorch_fid_float64(ref, recipe_net):
    """README tolerance for float64: atol 1e-9 (pool3 and logits), including the non-square 320x384 image."""
    p32, l32 = run_images(recipe_net, ref['images_32'], torch.float64)
    p64, l64 = run_images(recipe_net, ref['images_64'], torch.float64)
    pe, le = run_images(recipe_net, ref['images_extra_320x384'], torch.float64)
    np.testing.assert_allclose(np.concatenate([p32, p64]), ref['pool3'], rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([l32, l64]), ref['logits'], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pe, ref['extra_pool3'], rtol=0, atol=1e-9)
    np.testing.assert_allclose(le, ref['extra_logits'], rtol=0, atol=1e-9)


@needs_ref
def test_features_match_in_float32(ref, recipe_net):
    """README tolerance for float32 code against the float64 arrays: atol 1e-4."""
    p, lg = run_images(recipe_net, ref['images_32'], torch.float32)
    np.testing.assert_allclose(p, ref['pool3'][:4], rtol=0, atol=1e-4)
    np.testing.assert_allclose(lg, ref['logits'][:4], rtol=0, atol=1e-4)
    recipe_net.double()


@needs_ref
def test_frechet_distance_matches_reference_value(ref):
    fd = fid.frechet_distance(ref['fd_mu1'], ref['fd_sigma1'], ref['fd_mu2'], ref['fd_sigma2'])
    assert fd == pytest.approx(float(ref['fd_value']), rel=1e-9)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16))
    sigma = a @ a.T / 16 + 0.1 * np.eye(16)
    mu = rng.normal(size=16)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # diagonal Gaussians: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations
    s1, s2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    expect = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert fid.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) == pytest.approx(expect, rel=1e-9)


def test_statistics_warn_below_the_feature_dimension_and_refuse_one_sample():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match=r'fewer samples \(100\) than feature dimensions \(2048\)'):
        fid.statistics(rng.normal(size=(100, 2048)))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        mu, sigma = fid.statistics(rng.normal(size=(100, 4)))
    assert mu.shape == (4,) and sigma.shape == (4, 4)
    with pytest.raises(ValueError, match='at least 2 samples, got 1'):
        fid.statistics(rng.normal(size=(1, 4)))


def test_inception_score_on_uniform_and_confident_logits():
    assert fid.inception_score(np.zeros((1000, 1008)))[0] == pytest.approx(1.0, abs=1e-9)
    C = 10
    logits = np.full((1000, C), -1e4)
    logits[np.arange(1000), np.arange(1000) % C] = 0.0  # one-hot, classes balanced in every split
    mean, std = fid.inception_score(logits)
    assert mean == pytest.approx(C, rel=1e-6) and std < 1e-6


def test_precision_recall_on_known_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    assert fid.precision_recall(x, x.copy()) == pytest.approx((1.0, 1.0, 1.0))
    p, r, f1 = fid.precision_recall(x, x + 100.0)
    assert (p, r, f1) == (0.0, 0.0, 0.0)
    # half of the fakes on the real manifold, half far away
    fake = np.concatenate([x[:100], x[100:] + 100.0])
    p, r, _ = fid.precision_recall(x, fake)
    assert p == pytest.approx(0.5) and 0.4 < r <= 1.0


def test_missing_inception_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='pt_inception-2015-12-05-6726825d.pth'):
        fid.load_inception(str(tmp_path / 'nope.pth'))


def test_pixel_features_and_npz_cli(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / 'a.npz', samples=a)
    np.savez(tmp_path / 'b.npz', samples=a.copy())
    out = tmp_path / 'm.json'
    with pytest.warns(UserWarning):
        fid.main([str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz'), '--features', 'pixels', '--json', str(out)])
    m = json.load(open(out))
    assert m['fd_pixels'] == pytest.approx(0.0, abs=1e-6) and m['precision'] == 1.0 and m['recall'] == 1.0


def test_shape_net_is_the_same_net_on_any_thread_count():
    """The cached shape net is trained once per machine; trained on the caller's threads its sums ran in another
    order per thread count and the nets differed (0.08 in a weight after 30 steps; a U-Net's recall 0.47 vs 0.63).
    It must come out bitwise the same whatever the caller's thread count, which is left as it was."""
    threads = torch.get_num_threads()
    nets = []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            nets.append(fid.train_shape_net(n_images=300, iters=30))
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k


def test_the_shipped_shape_net_is_used_and_never_retrained(tmp_path, monkeypatch):
    """With assets/ present every machine scores with the same weights: nothing is trained or cached, and the
    reference statistics are keyed by those weights (a cache made with a machine-trained net is not reused)."""
    if not fid.SHIPPED_SHAPE_NET.is_file():
        pytest.skip('no shipped shape net')
    monkeypatch.setattr(fid, 'train_shape_net', lambda *a, **k: pytest.fail('trained although weights are shipped'))
    net = fid.load_shape_net(cache_dir=str(tmp_path))
    shipped = torch.load(fid.SHIPPED_SHAPE_NET, map_location='cpu', weights_only=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, shipped[k]), k
    assert list(tmp_path.iterdir()) == []
    other = fid.ShapeFeatureNet()
    assert fid.Features('shapes').fingerprint != fid.Features('shapes', shape_net=other).fingerprint


@pytest.mark.parametrize('which', ['small', 'shipped'])
def test_shape_features_rank_reference_sets_in_order(which):
    """--features shapes must tell shapes from blobs, which pixel features cannot: against real shapes images,
    other real images < blurred by 1 px < {blurred by 2 px, same-colour blobs} < the mean image < noise, each
    step clearly apart. Checked for the shipped network and for a small fast one trained here (fewer images and
    steps), which shows that train_shape_net itself makes a net that ranks."""
    if which == 'shipped' and not fid.SHIPPED_SHAPE_NET.is_file():
        pytest.skip('no shipped shape net')
    net = fid.train_shape_net(n_images=4000, iters=600) if which == 'small' else fid.load_shape_net()
    extractor = fid.Features('shapes', shape_net=net)
    rows = fid.validate_shape_metric(extractor, n=300)
    fd = {k: v['fd_shapes'] for k, v in rows.items()}
    assert fd['real (other images)'] * 3 < fd['blurred 1 px'], fd
    assert fd['blurred 1 px'] * 1.5 < min(fd['blurred 2 px'], fd['blobs']), fd
    assert max(fd['blurred 2 px'], fd['blobs']) * 1.5 < fd['mean image'] < fd['noise'], fd
    # recall: real images are covered, blobs far less (the small net's blob recall moves with the CPU: 0.30 on one)
    recall = {k: v['recall'] for k, v in rows.items()}
    assert recall['real (other images)'] > 0.6 and recall['blobs'] < 0.5 * recall['real (other images)'], recall
    assert recall['blobs'] < recall['blurred 1 px'] and recall['mean image'] < 0.05, recall
    # pixel features barely tell blobs from a 1 px blur (measured: FD 4.4 against 3.0); shape features must, by far
    pfd = {k: v['fd_pixels'] for k, v in fid.validate_shape_metric(fid.Features('pixels'), n=300).items()}
    assert fd['blobs'] / fd['blurred 1 px'] > 1.5 * pfd['blobs'] / pfd['blurred 1 px'], (fd, pfd)

"""Preconditioning, the ECT continuous-time schedule, and the INRCT losses (paper Eq. 3, 12-17, App. B.1).

Everything is a pure function of (t, step) so that a resumed run repeats the uninterrupted one.
The loss is a callable: loss_fn(net, batch, step) -> (scalar, dict of parts for logging, 0-dim tensors).
"""
import dataclasses
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch


@dataclass
class LossConfig:
    sigma_data: float = 0.5
    t_min: float = 0.003
    t_max: float = 80.0
    P_mean: float = -1.1
    P_std: float = 2.0
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    d: int = 1000               # ECT stage length in steps (stages 1, 2, ...)
    stage0_iters: int = 0       # steps of stage 0 (r = 0: denoising at every t) after the warm-up; 0: d
    max_stage: int = 0          # stop tightening dt at this stage (paper: "stop when dt is too small"); 0: never
    weighting: str = 'inv_dt'   # 'inv_dt': w = 1/(t - r); 'ect': c_out(t)/(t - r) without the query skip (ECT's
                                # pull on its network output); 'uniform': t/(t - r), every t pulls alike (loss_weight);
                                # 'uniform_gene': that for L_gene only, 1/(t - r) for the anchors (anchor_weight)
    t_eps1: float = 0.007       # L_recon below this t
    t_eps2: float = 0.0865      # L_diff below this t (first 25% of LogNormal(-1.1, 2))
    warmup_iters: int = 0       # ETS: reconstruction-only steps before full training
    shift_precond: bool = True  # ECT: c_skip, c_out use (t - t_min) so f(x, t_min) = x exactly
    huber_c: float = 0.0        # 0: plain L2 norm; >0: pseudo-Huber sqrt(|x|^2 + c^2) - c
    metric: str = 'l2'          # 'l2': the L2 norm (paper); 'mse': mean squared error, whose minimiser is the
                                # posterior mean E[x | x_t] the probability-flow ODE needs (EDM's loss; no huber_c)
    lambdas: tuple = (1.0, 1.0, 1.0)  # (l1, l2, l3) of full training (paper: robust to 0.1x-10x)
    query_skip: bool = True     # Eq. 12's c_skip O_q_t term; False: c_skip 0, c_out 1 (NeRF, see consistency_fn)
    boundary_sigma: float = 0.0 # query_skip False: > 0 keeps a narrow skip so f(x, t_min) = x exactly (c_skip)
    stage0_edm: bool = False    # stage 0 as EDM pretraining: t ~ LogNormal(EDM_P), every term weighted 1 (edm_stage)
    stage0_metric: str = 'l2'   # L_gene's distance in that stage: 'l2' (the norm) | 'mse' (posterior_mean_distance)
    t_mid: float = 0.821        # 2-step sampling: the noise level the 1-step sample is noised back to (ECT, iCT)
    distill: bool = False       # from stage 1 on, the target's input at r is one Euler step of a frozen denoiser's ODE
                                # from x_t (consistency distillation, CD), not x_t's own noise scaled to r (CT)
    guide_w: float = 1.0        # with a guide: that ODE's denoiser is D_guide + w (D - D_guide) (autoguidance)


EDM_P = (-1.2, 1.2)  # EDM's training LogNormal(P_mean, P_std) of t


# --- preconditioning (EDM / ECT form) --------------------------------------------------------------
def c_skip(t, cfg):
    if not cfg.query_skip:  # f = the render alone (consistency_fn), or with a skip that only acts near t_min
        b = cfg.boundary_sigma
        return b ** 2 / ((t - cfg.t_min) ** 2 + b ** 2) if b > 0 else 0 * t
    s = t - cfg.t_min if cfg.shift_precond else t
    return cfg.sigma_data ** 2 / (s ** 2 + cfg.sigma_data ** 2)


def c_out(t, cfg):
    if not cfg.query_skip:
        return 1 - c_skip(t, cfg)
    s = t - cfg.t_min if cfg.shift_precond else t
    return s * cfg.sigma_data / (t ** 2 + cfg.sigma_data ** 2) ** 0.5


def c_in(t, cfg):
    return 1 / (t ** 2 + cfg.sigma_data ** 2) ** 0.5


def c_noise(t):
    return torch.log(t) / 4


def bcast(v, x):
    """(B,) -> (B, 1, 1, ...) to broadcast against x."""
    return v.reshape(-1, *([1] * (x.dim() - 1)))


def consistency_fn(net, support_t, query_t, t, query, cfg):
    """f(O_s_t, O_q_t, t) = c_skip O_q_t + c_out render(M_G(c_in O_s_t, c_noise)) (Eq. 12); also the raw render.

    With cfg.query_skip False, c_skip = 0 and c_out = 1, so f = the render alone. For images O_q_t is the tensor
    the network reads, so the skip term can be cancelled; for a NeRF it is another view the network never sees,
    and c_skip O_q_t puts noise into f that nothing can predict. The boundary f(x, ~0) = O_q then rests on the
    loss (L_recon, L_diff, the clean target where r = 0) instead of on the parameterisation (docs/nerf.md).
    """
    raw = net(*net_inputs(support_t, t, cfg), query)
    return bcast(c_skip(t, cfg), raw) * query_t + bcast(c_out(t, cfg), raw) * raw, raw


def net_inputs(x_t, t, cfg):
    """What the network reads of a noisy observation at t: (c_in(t) x_t, c_noise(t))."""
    return bcast(c_in(t, cfg), x_t) * x_t, c_noise(t)


# --- sampling with the consistency function: shared by every modality ------------------------------
def t_mid_error(t_mid, lcfg=LossConfig):
    """What is wrong with a 2-step noise level outside (t_min, t_max] ('' when nothing is)."""
    return '' if lcfg.t_min < t_mid <= lcfg.t_max else f"--t_mid must be in ({lcfg.t_min}, {lcfg.t_max}], got {t_mid}"


def with_t_mid(lcfg, t_mid):
    """The loss config with another 2-step noise level (sample.py, fid.py --t_mid; 0: unchanged)."""
    error = t_mid and t_mid_error(t_mid, lcfg)
    if error:
        raise ValueError(error)
    return dataclasses.replace(lcfg, t_mid=t_mid) if t_mid else lcfg


def t_full(t, n, device):
    return torch.full((n,), t, device=device)


@torch.no_grad()
def encode(model, observations, cfg, query=None):
    """beta = G(O, t_min) (Eq. 7): clean observations in [-1, 1] -> INR tokens (query: NeRF support rays)."""
    return model.encode(*net_inputs(observations, t_full(cfg.t_min, len(observations), observations.device), cfg),
                        query)


def per_image_noise(seeds, shape, device):
    """One N(0, I) draw per sample from its own seed: samples do not depend on the batch size."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def second_step_noise(seeds, shape, device):
    """The fresh noise of the second step, from seeds disjoint from the first step's."""
    return per_image_noise([s + 1_000_000_007 for s in seeds], shape, device)


def reencodes(steps, cfg):
    """Whether a generated INR needs one more pass, an encode at t_min: at 2 steps under Eq. 12, f(x, t_mid) keeps
    c_skip(t_mid) = 27% of its noisy input, so it is an image, not a render; without the query skip it is M_beta."""
    return steps == 2 and cfg.query_skip


def karras_times(n, t_max=80.0, t_min=0.002, rho=7.0):
    """EDM's n noise levels from t_max to t_min (denser near t_min), then 0."""
    i = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    t = (t_max ** (1 / rho) + i * (t_min ** (1 / rho) - t_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)]).tolist()


def ode_sample(denoise, x, times):
    """Euler steps of the probability-flow ODE dx/dt = (x - D(x, t)) / t from times[0] to times[-1]."""
    for t, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t) * (x - denoise(x, t)) / t
    return x


def autoguide(d, d_guide, w):
    """Autoguidance (Karras et al. 2024): D_guide + w (D - D_guide), D_guide a weaker model of the same data (an earlier
    snapshot), so that w > 1 extrapolates past what it gets wrong; w = 1 is D itself."""
    return d_guide + w * (d - d_guide)


def ode_step(denoiser, x_t, t, r, query, cfg, guide=None):
    """One Euler step of the probability-flow ODE dx/dt = (x - D(x, t)) / t from t to r (EDM), D the denoiser's f,
    guided by guide's f with weight cfg.guide_w when given (autoguide)."""
    d, _ = consistency_fn(denoiser, x_t, x_t, t, query, cfg)
    if guide is not None:
        d = autoguide(d, consistency_fn(guide, x_t, x_t, t, query, cfg)[0], cfg.guide_w)
    return x_t + bcast((r - t) / t, x_t) * (x_t - d)


# --- time schedule (ECT continuous time) -------------------------------------------------------------
def stage1_start(cfg):
    """The first step of stage 1: after the warm-up and stage 0's stage0_iters (0: d) steps."""
    return cfg.warmup_iters + (cfg.stage0_iters or cfg.d)


def ect_stage(step, cfg):
    """0 during warm-up and the stage0_iters after it, then 1 + floor(steps since / d), capped at max_stage."""
    s = step - stage1_start(cfg)
    a = 0 if s < 0 else 1 + s // cfg.d
    return min(a, cfg.max_stage) if cfg.max_stage > 0 else a


def r_of_t(t, step, cfg):
    """r = clamp(t (1 - n(t) / q^a), 0), n(t) = 1 + k sigmoid(-b t)."""
    n = 1 + cfg.k * torch.sigmoid(-cfg.b * t)
    return (t * (1 - n / cfg.q ** ect_stage(step, cfg))).clamp(min=0)


def edm_stage(step, cfg):
    """True in the stage 0 that stage0_edm makes EDM pretraining (after the warm-up, before stage 1)."""
    return cfg.stage0_edm and step >= cfg.warmup_iters and ect_stage(step, cfg) == 0


def sample_t(batch_size, step, cfg, generator=None, device=None):
    """ETS warm-up: t ~ U(t_min, t_eps1); afterwards t ~ LogNormal(P_mean, P_std) (EDM_P in an edm_stage) clamped
    to [t_min, t_max]."""
    u = torch.rand(batch_size, generator=generator, device=device, dtype=torch.float64)
    if step < cfg.warmup_iters:
        t = cfg.t_min + (cfg.t_eps1 - cfg.t_min) * u
    else:  # inverse CDF of the normal keeps one uniform draw per sample in both phases
        p_mean, p_std = EDM_P if edm_stage(step, cfg) else (cfg.P_mean, cfg.P_std)
        t = torch.exp(p_mean + p_std * math.sqrt(2) * torch.erfinv(2 * u - 1))
    return t.clamp(cfg.t_min, cfg.t_max).float()


def loss_weights(step, cfg):
    """(l1, l2, l3) for (L_gene, L_recon, L_diff): (0, 1, 0) in the ETS warm-up, then cfg.lambdas (1, 1, 1)."""
    return (0.0, 1.0, 0.0) if step < cfg.warmup_iters else tuple(cfg.lambdas)


def loss_weight(t, r, cfg):
    """w(t) of Eq. 17. 'inv_dt': 1/(t - r) (ECT). Each L2-norm distance pulls on its output with unit force, so
    the pull on the network is w c_out under Eq. 12 (ECT) but w alone without the query skip (f = render), where
    1/t hands the whole batch to its smallest t. 'ect' restores ECT's c_out(t)/(t - r) there; 'uniform' is
    t/(t - r) = 2^a / n(t): within a stage every noise level pulls alike (1 in stage 0)."""
    if cfg.weighting == 'inv_dt' or (cfg.weighting == 'ect' and cfg.query_skip):
        return 1 / (t - r)
    if cfg.weighting == 'ect':
        return t * cfg.sigma_data / (t ** 2 + cfg.sigma_data ** 2) ** 0.5 / (t - r)
    if cfg.weighting in ('uniform', 'uniform_gene'):
        return t / (t - r)
    raise ValueError(f"weighting must be 'inv_dt', 'ect', 'uniform' or 'uniform_gene', got {cfg.weighting!r}")


def anchor_weight(t, r, cfg):
    """The weight of L_recon and L_diff, the terms that tie f to the clean signal: w(t) itself, except under
    'uniform_gene', where only L_gene pulls alike at every t and the anchors keep 1/(t - r) (under 'uniform' they
    lose that weight at small t, and the input-ignoring solution of L_gene wins)."""
    return 1 / (t - r) if cfg.weighting == 'uniform_gene' else loss_weight(t, r, cfg)


def recon_mask(t, cfg):
    """Samples that get L_recon: t < t_eps1 (strict)."""
    return (t < cfg.t_eps1).float()


def diff_mask(t, cfg):
    """Samples that get L_diff: t < t_eps2 (strict)."""
    return (t < cfg.t_eps2).float()


def distance(a, b, cfg):
    """Per-sample L2 norm sqrt(sum (a - b)^2) (not squared, not averaged), pseudo-Huber, or the mean squared error.

    The norm pulls every sample with unit force, so a denoiser trained with it learns the geometric median of
    p(x | x_t), which drops a feature the posterior gives less than half its mass; 'mse' learns the mean."""
    sq = ((a - b) ** 2).flatten(1).sum(1)
    if cfg.metric == 'mse':
        return sq / a[0].numel()
    if cfg.metric != 'l2':
        raise ValueError(f"metric must be 'l2' or 'mse', got {cfg.metric!r}")
    if cfg.huber_c > 0:
        return (sq + cfg.huber_c ** 2).sqrt() - cfg.huber_c
    return sq.clamp(min=1e-20).sqrt()  # the clamp keeps the gradient finite at a perfect match


def posterior_mean_distance(a, b, t, cfg):
    """The L2 norm's quadratic expansion about the error a Gaussian posterior leaves at t, s = c_out(t) sqrt(D)
    (EDM's c_out: t sigma_d / sqrt(t^2 + sigma_d^2) per value): |a - b|^2 / (2 s) + s / 2.

    At that error it pulls with the norm's unit force, so every t still pulls about alike; but its weight depends on
    t alone, so its minimiser is the posterior mean E[x | x_t] that the probability-flow ODE needs, where the norm's
    is the geometric median, which drops a shape the posterior gives less than half its mass."""
    sq = ((a - b) ** 2).flatten(1).sum(1)
    s = t * cfg.sigma_data / (t ** 2 + cfg.sigma_data ** 2) ** 0.5 * a[0].numel() ** 0.5
    return sq / (2 * s) + s / 2


# --- the INRCT loss (Eq. 13, 15, 16, 17; Algorithm 1) ---------------------------------------------------
class INRCTLoss:
    """loss_fn(net, batch, step): batch = {'support', 'target', 'query', 'shared_noise'} with 'target' = clean O_q.

    shared_noise True (images: support and target are the same signal): one noise z for both, O_s_t = O_q_t (Eq. 13);
    False (NeRF: the query rays are another view): an independent draw for the target.
    teacher: the network used for the no-grad target at r (default: net itself, ECT/iCT).
    denoiser: with cfg.distill, the frozen network whose ODE step from x_t gives the target's input at r (train.py
    sets it to the EMA weights at the start of stage 1); guide: optionally an earlier frozen snapshot that guides it
    (ode_step).
    """

    def __init__(self, cfg: LossConfig, denoiser=None, guide=None):
        self.cfg, self.denoiser, self.guide = cfg, denoiser, guide

    def __call__(self, net, batch, step, generator=None, teacher=None):
        cfg = self.cfg
        support, target, query = batch['support'], batch['target'], batch['query']
        B, dev = target.shape[0], target.device
        t = sample_t(B, step, cfg, generator, dev)
        r = r_of_t(t, step, cfg)
        z_s = torch.randn(support.shape, generator=generator, device=dev)
        z_q = z_s if batch['shared_noise'] else torch.randn(target.shape, generator=generator, device=dev)
        l1, l2, l3 = loss_weights(step, cfg)

        # grad forward at t; remember the RNG so the teacher pass draws the same dropout mask
        rng = torch.random.get_rng_state(), (torch.cuda.get_rng_state() if dev.type == 'cuda' else None)
        support_t = support + bcast(t, z_s) * z_s
        f_t, raw_t = consistency_fn(net, support_t, target + bcast(t, z_q) * z_q, t, query, cfg)

        # no-grad target at r; r <= t_min is the boundary f(x, ~0) = clean O_q (always so in stage 0)
        f_r = target
        boundary = r <= cfg.t_min
        if l1 > 0 and ect_stage(step, cfg) > 0:  # stage 0: r = 0 everywhere (read from the schedule: no device sync)
            r_safe = torch.where(boundary, torch.full_like(r, cfg.t_min), r)
            if cfg.distill:  # CD: the point the denoiser's ODE reaches from x_t, so f follows that ODE's trajectories
                if self.denoiser is None or not batch['shared_noise']:
                    raise ValueError("distill needs a frozen denoiser (INRCTLoss(cfg, denoiser)) and a signal that is "
                                     "both what the network reads and the target (images)")
                with torch.no_grad():
                    support_r = target_r = ode_step(self.denoiser, support_t, t, r_safe, query, cfg, self.guide)
            else:  # CT: x_t's own noise scaled to r
                support_r, target_r = support + bcast(r_safe, z_s) * z_s, target + bcast(r_safe, z_q) * z_q
            torch.random.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1])
            with torch.no_grad():
                f_r, _ = consistency_fn(teacher or net, support_r, target_r, r_safe, query, cfg)
            f_r = torch.where(bcast(boundary, target), target, f_r)

        m_recon, m_diff = recon_mask(t, cfg), diff_mask(t, cfg)
        if edm_stage(step, cfg) and cfg.stage0_metric == 'mse':
            L_gene = posterior_mean_distance(f_t, f_r.detach(), t, cfg)
        elif cfg.stage0_metric not in ('l2', 'mse'):
            raise ValueError(f"stage0_metric must be 'l2' or 'mse', got {cfg.stage0_metric!r}")
        else:
            L_gene = distance(f_t, f_r.detach(), cfg)
        L_recon = distance(raw_t, target, cfg) * m_recon
        L_diff = distance(f_t, target, cfg) * m_diff
        w_gene, w_anchor = (1.0, 1.0) if edm_stage(step, cfg) else (loss_weight(t, r, cfg), anchor_weight(t, r, cfg))
        loss = (w_gene * l1 * L_gene + w_anchor * (l2 * L_recon + l3 * L_diff)).mean()
        parts = {  # 0-dim device tensors, read by the host only when it logs (no synchronisation per step)
            'L_gene': L_gene.detach().mean(), 'L_recon': L_recon.detach().sum() / m_recon.sum().clamp(min=1),
            'L_diff': L_diff.detach().sum() / m_diff.sum().clamp(min=1),
            'frac_recon': m_recon.float().mean(), 'frac_diff': m_diff.float().mean(),
            'stage': ect_stage(step, cfg), 'warmup': int(step < cfg.warmup_iters),
        }
        return loss, parts


# --- one optimisation step: train.py's loop and bench.py run this same function ---------------------------
@torch.no_grad()
def update_ema(ema, model, decay, finite=None):
    """ema <- lerp(ema, model, 1 - decay), one foreach call; finite (0-dim bool tensor): only where it is true."""
    targets, sources = list(ema.parameters()), list(model.parameters())
    if finite is None:
        torch._foreach_lerp_(targets, sources, 1 - decay)
    else:  # a tensor weight per tensor: a 0-dim tensor passed as one Scalar would be read back by the host
        torch._foreach_lerp_(targets, sources, [finite * (1 - decay)] * len(targets))


class RAdam(torch.optim.RAdam):
    """torch.optim.RAdam's update (its single-tensor arithmetic and state, so checkpoints load either way) that a
    0-dim bool tensor `finite` gates on the device: a step with a non-finite gradient leaves weights and moments as
    they were, and the host never has to wait for the gradient norm to decide. The step count moves on regardless."""

    def __init__(self, params, lr=1e-3):
        super().__init__(params, lr=lr, foreach=False)

    @torch.no_grad()
    def step(self, finite=None):
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group['betas'], group['lr'], group['eps']
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state['step'] += 1
                step = state['step'].item()  # a CPU tensor: no device synchronisation
                m = state['exp_avg'].lerp(p.grad, 1 - beta1)
                v = state['exp_avg_sq'].mul(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
                rho_inf = 2 / (1 - beta2) - 1
                rho_t = rho_inf - 2 * step * (beta2 ** step) / bc2
                if rho_t > 5.0:
                    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
                    new_p = p - m / bc1 * lr * ((bc2 ** 0.5) / v.sqrt().add_(eps)) * rect
                else:
                    new_p = p - m / bc1 * lr
                for old, new in ((p, new_p), (state['exp_avg'], m), (state['exp_avg_sq'], v)):
                    old.copy_(new if finite is None else torch.where(finite, new, old))


def step_lr(step, cfg, lcfg):
    """lr in the warm-up, stage0_lr in stage 0 after it (if set), lr_full from then on (0: lr). stage0_decay > 0: over
    stage 0's last stage0_decay steps its lr falls linearly towards the consistency stages' lr (a cool-down)."""
    if step < cfg['warmup_iters']:
        return cfg['lr']
    after = cfg['lr_full'] or cfg['lr']
    if cfg.get('stage0_lr') and ect_stage(step, lcfg) == 0:
        left = stage1_start(lcfg) - step  # steps of stage 0 from this one on, >= 1
        n = cfg.get('stage0_decay', 0)
        if left > n:
            return cfg['stage0_lr']
        return after + (cfg['stage0_lr'] - after) * left / n
    return after


def train_step(net, model, ema, teacher, opt, loss_fn, micro_batch, accum, step, cfg, autocast=nullcontext(),
               ddp=False):
    """One optimiser step (bench.py times this very function): the INRCT loss and backward over `accum` micro-batches
    (micro_batch(m) -> (batch, generator)), the clip, RAdam at this phase's lr and the EMA, both gated on the device by
    the gradient norm being finite (a non-finite step changes nothing). No host-device synchronisation: the loss parts
    and the finite flag come back as 0-dim device tensors for the caller to read when it logs.
    -> (finite, mean loss parts, lr)."""
    warm = step < cfg['warmup_iters']
    parts_mean = {}
    for m in range(accum):
        batch, g = micro_batch(m)
        sync = m == accum - 1 or not ddp
        with (net.no_sync() if ddp and not sync else nullcontext()), autocast:
            # the teacher pass runs on the unwrapped model: no DDP hooks or collectives in it
            loss, parts = loss_fn(net, batch, step, g, teacher or model)
            (loss / accum).backward()
        for k, v in {**parts, 'loss': loss.detach()}.items():
            parts_mean[k] = parts_mean.get(k, 0.0) + v / accum
    # the all-reduced gradient norm: every rank sees the same value, so all skip or step together
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg['grad_clip'] or math.inf)
    finite = torch.isfinite(norm)
    lr = step_lr(step, cfg, loss_fn.cfg)
    try:
        for group in opt.param_groups:
            group['lr'] = lr
        opt.step(finite)
        opt.zero_grad(set_to_none=True)
        if not warm:  # no EMA during warm-up; the first full step copies the weights (decay 0)
            first = step == cfg['warmup_iters']
            update_ema(ema, model, 0.0 if first else cfg['ema_decay'], finite)
            if teacher is not None:
                update_ema(teacher, model, 0.0 if first else cfg['teacher_ema'], finite)
    except BaseException as e:  # the weights are part-updated: not a state to checkpoint
        e.inside_update = True
        raise
    return finite, parts_mean, lr

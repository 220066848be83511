"""Train INRCT: ETS warm-up (reconstruction only), then consistency training, with EMA.

    python train.py                                   # embedded default: shapes 32^2, tiny model, CPU ok
    python train.py --dataset cifar10 --data_dir ~/data --batch_size=64
    torchrun --nproc_per_node=4 train.py --dataset celeba --data_dir ~/data/celeba_hq
    python train.py --resume                          # continue out_dir/ckpt.pt exactly

Every schedule (ETS phase, ECT stage, EMA, data order, noise) is a pure function of the step.
"""
import atexit
import copy
from dataclasses import asdict
import difflib
import glob
import json
import math
import os
import resource
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import DATASETS, load_split, step_generator, step_loader
from losses import INRCTLoss, LossConfig, RAdam, stage1_start, t_mid_error, train_step
from model import MODALITIES, INRCT_models, build_model, count_params, pick_device, read_checkpoint, save_checkpoint

# -----------------------------------------------------------------------------
# defaults (each can be overridden by configs/<dataset>.py, then by --key=value or --key value)
dataset = 'shapes'        # images: shapes | cifar10 | celeba | folder; NeRF: shapes3d | srn_cars; 3D: shapes_occ | voxels
modality = 'image'        # what the INR represents: 'image' | 'nerf' | 'occupancy' (set by the dataset's config)
config = ''               # preset file configs/<config>.py ('' = configs/<dataset>.py), e.g. --config shapes_gen
data_dir = ''
cache_dir = ''            # where celeba's .npy cache goes ('' = ~/.cache/inrct)
resolution = 32
test_fraction = 0.1       # folder: share of files (by a hash of their path) in the test split
preset = 'tiny'           # model size, see model.INRCT_models
patch = 4
pe_sigma = 32.0           # highest positional-encoding frequency of the image INR
dropout = 0.0
time_embed = 'positional' # noise-level features: 'positional' (EDM, sinusoids of c_noise) | 'fourier' (iCT)
time_scale = 1.0          # positional: c_noise multiplier (1000 = DiT's integer-step ladder); fourier: frequency std
inr_tokens = 0            # number of INR tokens; 0: the preset's (tiny: 64, one per 4 x 4 pixels at 32^2)
inr_heads = 0             # attention heads of the ANR INR (must divide its width); 0: the preset's (tiny: 2)
inr = 'anr'               # images: 'anr' (the ANR INR) | 'pixels' (tokens -> patches: pixel-space ECT, the baseline)
conv_stem = 0             # channels of a full-resolution 3x3 conv stem added to the patch embedding; 0: off (DiT's)
token_conv = 0            # kernel of a depthwise conv over the token grids in every feed-forward; 0: off (DiT's)
local_gate = 1.0          # decoder queries start from the encoder's local features scaled by the signal share to this power; 0: off
near = 0.8                # NeRF: ray interval and samples per ray (SRN Cars 0.8 / 1.8)
far = 1.8
n_samples = 64
rays_per_object = 512     # NeRF: query rays per object per step, from one view other than the support view
num_workers = 2           # processes that read and decode the next batches while the model trains (0: between steps)
points_per_object = 2048  # occupancy: query points per object per step, half of them next to the surface
batch_size = 32           # global batch, over all processes and accumulation steps
micro_batch = 0           # per-process forward size (0 = the whole per-process batch)
lr = 1e-4
lr_full = 0.0             # lr from the end of the warm-up on (0 = lr); the CPU default warms up faster than it trains
grad_clip = 1.0           # global grad-norm clip (0 = off): tames RAdam's un-rectified first steps, keeps
                          # consistency training stable and the NeRF's ReLU density alive (docs/design-notes.md)
max_iters = 1500
warmup_iters = 800        # ETS reconstruction-only steps
ect_d = 100               # ECT stage length in steps
ect_stage0 = 0            # steps of stage 0 (r = 0, plain denoising at every t) after the warm-up (0 = ect_d)
ect_max_stage = 0         # stop tightening dt after this stage (0 = never)
stage0_edm = False        # stage 0 as EDM pretraining (ECT starts from such a model): t ~ LogNormal(-1.2, 1.2),
                          # every term weighted alike; p_mean, p_std and weighting then apply from stage 1 on
stage0_metric = 'l2'      # L_gene's distance in that stage: 'l2' (the norm, whose minimiser is the posterior's median)
                          # | 'mse' (a t-weighted squared error with the norm's pull, whose minimiser is the mean)
stage0_lr = 0.0           # lr of stage 0 (0 = lr_full): denoising takes a higher lr than the consistency stages
stage0_decay = 0          # steps at the end of stage 0 over which its lr falls linearly to lr_full (0 = none)
distill = False           # consistency distillation from stage 1 on: the target follows the ODE of the EMA denoiser
                          # frozen at stage 1's start (saved in the checkpoint), not x_t's own noise (images only)
guide_step = 0            # --distill: the EMA frozen at this earlier step guides that denoiser (autoguidance; 0 = off)
guide_w = 2.0             # the guided denoiser D_guide + guide_w (D - D_guide): w > 1 extrapolates past the guide
weighting = 'inv_dt'      # w(t) = 1/(t - r) | 'ect': times c_out(t) without query_skip | 'uniform': t/(t - r)
                          # | 'uniform_gene': t/(t - r) for L_gene, 1/(t - r) for L_recon and L_diff
ema_decay = 0.9999
teacher_ema = 0.0         # 0: the teacher is the current weights (ECT); >0: an EMA teacher (Algorithm 1)
sigma_data = 0.5
shift_precond = True
query_skip = True         # Eq. 12's c_skip O_q_t; False: f = the render alone (the CPU demos configs/shapes{,3d}.py)
boundary_sigma = 0.0      # query_skip False: c_skip = s^2/((t - t_min)^2 + s^2), f(x, t_min) = x exactly (0 = off)
huber_c = 0.0
metric = 'l2'             # distance of every loss term: 'l2' (the paper's L2 norm) | 'mse' (EDM: the posterior mean)
p_mean = -1.1             # full-training t ~ LogNormal(P_mean, P_std) (ECT)
p_std = 2.0
lambda_gene = 1.0         # loss weights of full training (Eq. 17); warm-up uses (0, 1, 0)
lambda_recon = 1.0
lambda_diff = 1.0
t_mid = 0.821             # 2-step samples (training grids): noise the 1-step sample back to this t (ECT, iCT)
seed = 0
out_dir = 'out'
resume = False
overwrite = False         # start over in an out_dir that holds a checkpoint (it and log.jsonl are replaced)
max_minutes = 0.0         # wall-clock budget (0 = none); a checkpoint is written on exit
nonfinite_limit = 20      # stop when a log step sees this many non-finite steps in a row (skipped, never saved)
log_interval = 50
sample_interval = 250     # sample/reconstruction grids and a test score (PSNR, IoU)
ckpt_interval = 250
device = 'auto'           # auto | cpu | cuda
compile = False           # torch.compile the model (GPU)
dry_run = False           # build everything, print the config and parameter count, exit
upgrade_checkpoint = ''   # PATH: give an older checkpoint its model and loss settings (for sample.py, fid.py), exit
# -----------------------------------------------------------------------------
# architecture keys: a checkpoint can only be resumed or sampled with the same values
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
ARCH_KEYS = ('dataset', 'resolution', 'preset', 'patch', 'pe_sigma', 'inr', 'inr_tokens', 'time_embed', 'time_scale',
             'conv_stem', 'inr_heads', 'token_conv')


def defaults():
    return {k: v for k, v in globals().items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str)) and k.islower()}


def parse_value(key, text, default):
    if isinstance(default, bool):
        if text.lower() in ('1', 'true', 'yes'):
            return True
        if text.lower() in ('0', 'false', 'no'):
            return False
        raise ValueError(f"--{key} takes true/false, got {text!r}")
    try:
        return type(default)(float(text)) if isinstance(default, int) and '.' not in text and 'e' in text.lower() \
            else type(default)(text)
    except ValueError:
        raise ValueError(f"--{key} takes a {type(default).__name__} (default {default!r}), got {text!r}") from None


def parse_config(argv):
    """nanoGPT-style: defaults above, then configs/<dataset>.py, then command-line overrides."""
    cfg = defaults()
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith('--'):
            raise ValueError(f"unexpected argument {arg!r}; options look like --key=value or --key value")
        if '=' in arg:
            key, val = arg[2:].split('=', 1)
        elif arg[2:] in cfg and isinstance(cfg[arg[2:]], bool) and (i + 1 == len(argv) or argv[i + 1].startswith('--')):
            key, val = arg[2:], 'true'  # bare flag: --resume, --dry_run
        else:
            if i + 1 == len(argv):
                raise ValueError(f"{arg} needs a value")
            key, val, i = arg[2:], argv[i + 1], i + 1
        if key not in cfg:
            close = difflib.get_close_matches(key, list(cfg), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ''
            raise ValueError(f"unknown config key --{key}{hint}")
        pairs.append((key, val))
        i += 1
    name = dict(pairs).get('config') or dict(pairs).get('dataset', cfg['dataset'])
    preset_file = os.path.join(CONFIG_DIR, f'{name}.py')
    if dict(pairs).get('config') and not os.path.isfile(preset_file):
        raise ValueError(f"--config {name}: no preset file {preset_file}")
    if os.path.isfile(preset_file):
        scope = {}
        exec(open(preset_file).read(), scope)  # our own preset files, never data
        for k, v in scope.items():
            if k.startswith('_'):
                continue
            if k not in cfg:
                raise ValueError(f"{preset_file} sets unknown key {k!r}")
            cfg[k] = preset_value(preset_file, k, v, cfg[k])
    for key, val in pairs:
        cfg[key] = parse_value(key, val, cfg[key])
    check_config(cfg)
    return cfg


def preset_value(path, key, value, default):
    """A preset's value with its default's type; refuse what would be coerced silently ('False' -> True)."""
    kind = type(default).__name__
    ok = {bool: lambda v: type(v) is bool,
          int: lambda v: type(v) is int or (type(v) is float and v.is_integer()),
          float: lambda v: type(v) in (int, float),
          str: lambda v: type(v) is str}[type(default)]
    if not ok(value):
        raise ValueError(f"{path}: {key} = {value!r} must be a{'n' if kind == 'int' else ''} {kind} "
                         f"like its default {default!r}")
    return type(default)(value)


CHOICES = {'dataset': DATASETS, 'modality': MODALITIES, 'inr': ('anr', 'pixels'), 'time_embed': ('positional', 'fourier'),
           'weighting': ('inv_dt', 'ect', 'uniform', 'uniform_gene'), 'metric': ('l2', 'mse'), 'stage0_metric': ('l2', 'mse'),
           'device': ('auto', 'cpu', 'cuda')}
POSITIVE_INTS = ('resolution', 'patch', 'batch_size', 'n_samples', 'rays_per_object', 'points_per_object', 'ect_d', 'log_interval',
                 'sample_interval', 'ckpt_interval', 'nonfinite_limit')
NON_NEGATIVE = ('inr_tokens', 'inr_heads', 'conv_stem', 'token_conv', 'micro_batch', 'num_workers', 'max_iters', 'warmup_iters', 'ect_stage0', 'stage0_decay', 'guide_step', 'ect_max_stage', 'lr_full',
                'stage0_lr', 'grad_clip', 'huber_c', 'boundary_sigma', 'lambda_gene', 'lambda_recon', 'lambda_diff',
                'max_minutes')
POSITIVE = ('lr', 'guide_w', 'sigma_data', 'p_std', 'pe_sigma', 'time_scale', 'near', 'far')
UNIT_INTERVAL = ('ema_decay', 'teacher_ema', 'dropout')  # [0, 1)


def check_config(cfg):
    """Every value a run cannot use, all reported at once, before anything is built or read."""
    bad = []
    for k, choices in {**CHOICES, 'preset': tuple(INRCT_models)}.items():
        if cfg[k] not in choices:
            bad.append(f"--{k} {cfg[k]!r} is not one of {', '.join(choices)}")
    bad += [f"--{k} must be a positive integer, got {cfg[k]}" for k in POSITIVE_INTS if cfg[k] < 1]
    bad += [f"--{k} must be >= 0, got {cfg[k]}" for k in NON_NEGATIVE if not cfg[k] >= 0]
    bad += [f"--{k} must be > 0, got {cfg[k]}" for k in POSITIVE if not cfg[k] > 0]
    bad += [f"--{k} must be in [0, 1), got {cfg[k]}" for k in UNIT_INTERVAL if not 0 <= cfg[k] < 1]
    if not 0 < cfg['test_fraction'] < 1:
        bad.append(f"--test_fraction must be in (0, 1), got {cfg['test_fraction']}")
    bad += [e for e in [t_mid_error(cfg['t_mid'])] if e]
    if cfg['near'] >= cfg['far']:
        bad.append(f"--near {cfg['near']} must be below --far {cfg['far']}")
    if cfg['resolution'] >= 1 and cfg['patch'] >= 1 and cfg['resolution'] % cfg['patch']:
        bad.append(f"--resolution {cfg['resolution']} must be a multiple of --patch {cfg['patch']}")
    if cfg['micro_batch'] > cfg['batch_size']:
        bad.append(f"--micro_batch {cfg['micro_batch']} is larger than --batch_size {cfg['batch_size']}")
    if cfg['device'] == 'cuda' and not torch.cuda.is_available():
        bad.append(f"--device cuda: no CUDA device is visible (torch {torch.__version__}); use --device cpu or auto")
    if cfg['token_conv'] % 2 == 0 and cfg['token_conv']:
        bad.append(f"--token_conv {cfg['token_conv']}: the kernel must be odd (3, 5, ...) to keep the token grid's "
                   f"size; 0 turns it off")
    stage1 = stage1_start(loss_config(cfg))
    if cfg['guide_step'] and not (cfg['distill'] and cfg['guide_step'] < stage1):
        bad.append(f"--guide_step {cfg['guide_step']} guides --distill's denoiser (frozen at stage 1's start, step "
                   f"{stage1}) with an earlier snapshot: set --distill true and a step below {stage1}, or 0 for none")
    if cfg['stage0_decay'] and not cfg['stage0_lr']:
        bad.append("--stage0_decay cools stage 0's own lr down: set --stage0_lr too (or --stage0_decay 0)")
    if cfg['resume'] and cfg['overwrite']:
        bad.append("--resume and --overwrite exclude each other: continue the checkpoint, or start over")
    if bad:
        raise ValueError('bad options:\n  ' + '\n  '.join(bad))


def loss_config(cfg):
    """The LossConfig a config describes (the one place that maps config keys to the loss)."""
    cfg = {**defaults(), **cfg}  # configs of checkpoints from before a key existed get its default
    return LossConfig(sigma_data=cfg['sigma_data'], d=cfg['ect_d'], warmup_iters=cfg['warmup_iters'],
                      stage0_iters=cfg['ect_stage0'], max_stage=cfg['ect_max_stage'], weighting=cfg['weighting'],
                      shift_precond=cfg['shift_precond'], huber_c=cfg['huber_c'], metric=cfg['metric'],
                      query_skip=cfg['query_skip'], boundary_sigma=cfg['boundary_sigma'],
                      P_mean=cfg['p_mean'], P_std=cfg['p_std'], stage0_edm=cfg['stage0_edm'], t_mid=cfg['t_mid'],
                      stage0_metric=cfg['stage0_metric'], distill=cfg['distill'], guide_w=cfg['guide_w'],
                      lambdas=(cfg['lambda_gene'], cfg['lambda_recon'], cfg['lambda_diff']))


def model_args(cfg):
    """build_model's arguments for a config (the one place that maps config keys to the model); checkpoints
    store them, so sample.py and fid.py rebuild the model from the checkpoint alone."""
    return dict(preset=cfg['preset'], resolution=cfg['resolution'], patch=cfg['patch'], pe_sigma=cfg['pe_sigma'],
                dropout=cfg['dropout'], modality=cfg['modality'], near=cfg['near'], far=cfg['far'],
                n_samples=cfg['n_samples'], local_gate=cfg['local_gate'], sigma_data=cfg['sigma_data'],
                time_embed=cfg['time_embed'], time_scale=cfg['time_scale'], inr=cfg['inr'], inr_tokens=cfg['inr_tokens'],
                conv_stem=cfg['conv_stem'], inr_heads=cfg['inr_heads'], token_conv=cfg['token_conv'])


def frozen_copy(module):
    """A copy for no-grad use only (the EMA, --distill's denoiser and guide): no gradients, eval mode (no dropout)."""
    return copy.deepcopy(module).requires_grad_(False).eval()


def frozen_snapshot(ckpt, key, like):
    """The frozen weights a checkpoint keeps under key (--distill's denoiser, its guide) as a frozen_copy of like, or
    None where it holds none."""
    if ckpt.get(key) is None:
        return None
    snapshot = frozen_copy(like)
    snapshot.load_state_dict(ckpt[key])
    return snapshot


def load_checkpoint(path, cfg=None):
    """Load a checkpoint on CPU; with cfg, refuse one whose architecture keys differ."""
    ckpt = read_checkpoint(path)
    if cfg is not None:
        old = {**defaults(), **ckpt['config']}  # a key newer than the checkpoint had its default's meaning
        diff = {k: (old[k], cfg[k]) for k in ARCH_KEYS if old[k] != cfg[k]}
        if diff:
            raise ValueError(f"checkpoint {path} was trained with another config "
                             + ', '.join(f"{k}={a!r} (now {b!r})" for k, (a, b) in diff.items())
                             + "; pass the same values or use another --out_dir")
    return ckpt


def add_model_settings(path):
    """Give a checkpoint from before self-describing checkpoints its model_args and loss settings, in place."""
    ckpt = read_checkpoint(path)
    patch, channels = ckpt['config']['patch'], ckpt['model']['hyper.embed.weight'].shape[1]
    legacy = {'time_scale': 1000.0,  # what those checkpoints were trained with before the keys existed
              'modality': 'nerf' if channels == 9 * patch ** 2 else 'image'}  # NeRF tokens: [rgb, origin, dir]
    cfg = {**defaults(), **legacy, **ckpt['config']}
    ckpt.update(config=cfg, model_args=model_args(cfg), loss=asdict(loss_config(cfg)))
    save_checkpoint(ckpt, path)
    print(f"{path}: model_args and loss settings written (step {ckpt['step']})")


def main(argv):
    cfg = parse_config(argv)
    if cfg['upgrade_checkpoint']:
        return add_model_settings(cfg['upgrade_checkpoint'])

    # --- processes and devices ---
    ddp = 'RANK' in os.environ
    rank, world, local_rank = (int(os.environ['RANK']), int(os.environ['WORLD_SIZE']),
                               int(os.environ['LOCAL_RANK'])) if ddp else (0, 1, 0)
    dev = pick_device(cfg['device'], local_rank)
    use_cuda = dev.type == 'cuda'
    per_rank = cfg['batch_size'] // world
    if per_rank * world != cfg['batch_size']:
        raise ValueError(f"--batch_size {cfg['batch_size']} must be a multiple of the {world} processes")
    micro = cfg['micro_batch'] or per_rank
    accum = per_rank // micro
    if accum * micro != per_rank:
        raise ValueError(f"the per-process batch {per_rank} must be a multiple of --micro_batch {micro}")
    if use_cuda:
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if ddp:
        dist.init_process_group('nccl' if use_cuda else 'gloo')
    master = rank == 0
    autocast = torch.autocast('cuda', dtype=torch.bfloat16) if use_cuda else torch.autocast('cpu', enabled=False)

    # --- model, optimiser, EMA, data ---
    torch.manual_seed(cfg['seed'])
    model = build_model(**model_args(cfg)).to(dev)
    ema = frozen_copy(model)
    teacher = copy.deepcopy(model).requires_grad_(False) if cfg['teacher_ema'] > 0 else None
    if cfg['distill'] and not model.inr.reads_its_target:
        raise ValueError(f"--distill steps the ODE of the signal the network reads, and with --modality "
                         f"{cfg['modality']} that is not the target; train it with --distill false")
    opt = RAdam(model.parameters(), lr=cfg['lr'])
    if master:
        print(json.dumps(cfg, indent=1))
        print(f"params: {count_params(model)}")
        print(f"processes {world} x accumulation {accum} x micro-batch {micro} = batch {cfg['batch_size']} on {dev}")
    if master and not cfg['dry_run']:
        claim_out_dir(cfg)  # before the data: a run that may not start should not first load a dataset
    train_set, test_set = load_split(cfg, 'train'), load_split(cfg, 'test')
    model.inr.check_dataset(train_set, cfg['dataset'])
    if cfg['dry_run']:
        print(f"train {len(train_set)} / test {len(test_set)} images; dry run, exiting")
        return cleanup(ddp)

    step = 0
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    lcfg = loss_config(cfg)
    stage1 = stage1_start(lcfg)  # the step at which --distill freezes its denoiser
    denoiser = guide = None
    if cfg['resume']:
        ckpt = load_checkpoint(ckpt_path, cfg)
        model.load_state_dict(ckpt['model'])
        ema.load_state_dict(ckpt['ema'])
        if teacher is not None:
            teacher.load_state_dict(ckpt['teacher'])
        opt.load_state_dict(ckpt['optimizer'])
        step = ckpt['step']
        torch.set_rng_state(ckpt['rng'])
        denoiser = frozen_snapshot(ckpt, 'denoiser', ema) if cfg['distill'] else None
        if cfg['distill'] and denoiser is None and step > stage1:
            raise ValueError(f"--distill: {ckpt_path} is at step {step}, past stage 1's start ({stage1}), and holds no "
                             f"frozen denoiser; resume a checkpoint from step {stage1} or before, or --distill false")
        guide = frozen_snapshot(ckpt, 'guide', ema) if cfg['guide_step'] else None
        if cfg['guide_step'] and guide is None and step > cfg['guide_step']:
            raise ValueError(f"--guide_step {cfg['guide_step']}: {ckpt_path} is at step {step}, past it, and holds no "
                             f"guide; resume a checkpoint from step {cfg['guide_step']} or before, or --guide_step 0")
        if master:
            print(f"resumed from {ckpt_path} at step {step}")
    if master:
        os.makedirs(cfg['out_dir'], exist_ok=True)
    net = DDP(model, device_ids=[local_rank] if use_cuda else None) if ddp else model
    if cfg['compile']:
        net = torch.compile(net)
    loss_fn = INRCTLoss(lcfg, denoiser, guide)

    def checkpoint():
        """Write ckpt.pt unless the weights are not finite or the last step was (then the old file stays)."""
        if not master:
            return True
        bad = nonfinite_tensors({'model': model, 'ema': ema})
        if bad or streak_t.item():
            bar.write(f"not writing {ckpt_path} at step {step}: "
                      + (f"non-finite weights ({', '.join(bad[:3])})" if bad else "the last step was non-finite"))
            return False
        save_checkpoint({'model': model.state_dict(), 'ema': ema.state_dict(), 'optimizer': opt.state_dict(),
                         'teacher': teacher.state_dict() if teacher is not None else None,
                         'denoiser': loss_fn.denoiser.state_dict() if loss_fn.denoiser is not None else None,
                         'guide': loss_fn.guide.state_dict() if loss_fn.guide is not None else None,
                         'step': step, 'config': cfg, 'model_args': model_args(cfg),
                         'loss': asdict(loss_fn.cfg), 'rng': torch.get_rng_state()}, ckpt_path)
        return True

    # --- the loop ---
    interrupted = []  # signals set a flag that is read between steps, so a checkpoint is always of a whole step
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append('SIGTERM'))
    signal.signal(signal.SIGINT, lambda *_: interrupted.append('SIGINT') if not interrupted else force_quit())
    t_start = t_log = time.time()
    sums, n_sums = {}, 0
    bad_streak, skipped = 0, 0  # non-finite steps in a row and in all: the host's copies, read when it logs
    streak_t, skipped_t = torch.zeros((), device=dev), torch.zeros((), device=dev)
    bar = tqdm(total=cfg['max_iters'], initial=step, disable=not master, desc='train', dynamic_ncols=True)
    batches = step_loader(model.inr, train_set, cfg, range(rank * accum, (rank + 1) * accum), micro, step, use_cuda)
    try:
        while step < cfg['max_iters']:
            warm = step < cfg['warmup_iters']
            if cfg['distill'] and loss_fn.denoiser is None and step >= stage1:
                loss_fn.denoiser = frozen_copy(ema)
            if cfg['guide_step'] and loss_fn.guide is None and step >= cfg['guide_step']:
                loss_fn.guide = frozen_copy(ema)
            raws = next(batches)  # this step's micro-batches, read on the CPU (by workers when num_workers > 0)

            def micro_batch(m):  # the batch and RNG of micro-step m of this rank (seeded by step and slot)
                slot = rank * accum + m
                g = step_generator(cfg['seed'], step, slot, dev)
                torch.manual_seed(cfg['seed'] * 1_000_003 + step * 4099 + slot)  # dropout masks
                return model.inr.train_batch(raws[m], cfg, g, dev), g

            finite, parts, lr = train_step(net, model, ema, teacher, opt, loss_fn, micro_batch, accum, step, cfg,
                                           autocast, ddp)
            streak_t = (streak_t + 1) * ~finite  # on the device: the host reads the counts when it logs
            skipped_t += ~finite
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_sums += 1
            step += 1
            bar.update(1)

            log_now = step % cfg['log_interval'] == 0 or step == cfg['max_iters']
            if log_now:
                bad_streak, was = int(streak_t.item()), skipped
                skipped = int(skipped_t.item())
                if master and skipped > was:
                    bar.write(f"to step {step}: {skipped - was} non-finite loss or gradient, step(s) skipped "
                              f"({bad_streak} in a row now)")
                if bad_streak >= cfg['nonfinite_limit']:
                    if master:
                        log_json(cfg['out_dir'], {'step': step, 'skipped_steps': skipped, 'diverged': True})
                    raise Diverged(f"training diverged: {bad_streak} non-finite steps in a row (to step {step})")
                dt = time.time() - t_log
                t_log = time.time()
                rec = {'step': step, 'phase': 'warmup' if warm else 'full', 'lr': lr,
                       **{k: float(v) / n_sums for k, v in sums.items()}, 'skipped_steps': skipped,
                       'img_per_s': n_sums * cfg['batch_size'] / dt, 'peak_mem_mb': peak_memory_mb(dev),
                       'minutes': (time.time() - t_start) / 60}
                sums, n_sums = {}, 0
                if master:
                    bar.write(f"step {step} {rec['phase']} stage {rec['stage']:.0f} loss {rec['loss']:.4g} "
                              f"gene {rec['L_gene']:.4g} recon {rec['L_recon']:.4g} diff {rec['L_diff']:.4g} "
                              f"{rec['img_per_s']:.1f} img/s {rec['peak_mem_mb']:.0f} MB")
                    log_json(cfg['out_dir'], rec)
            if master and (step % cfg['sample_interval'] == 0 or step == cfg['max_iters']):
                weights = model if step <= cfg['warmup_iters'] else ema
                name, score = weights.inr.write_progress(weights, test_set, loss_fn.cfg, cfg['out_dir'])
                bar.write(f"step {step} test {name} {score:.4f} (grids in {cfg['out_dir']})")
                log_json(cfg['out_dir'], {'step': step, f'test_{name}': score})
            if step % cfg['ckpt_interval'] == 0:
                checkpoint()
            if (log_now or not ddp) and stop_now(cfg, t_start, interrupted, ddp, dev):  # DDP: a collective, so rarely
                if master:
                    bar.write(f"stopping at step {step}: {interrupted[0] if interrupted else 'max_minutes'}")
                break
    except Diverged as e:
        bar.close()
        cleanup(ddp)
        raise Diverged(f"{e}; nothing of it was checkpointed: {last_good(ckpt_path)}. Lower --lr or "
                       f"--lr_full, or look for bad data, then --resume") from None
    except BaseException as e:  # a crash (or a forced quit) keeps the run up to its last whole step
        bar.close()
        partial = getattr(e, 'inside_update', False)  # the weights are part-updated: no state to save
        if master and not partial and checkpoint():
            print(f"{type(e).__name__} at step {step}: checkpoint of step {step} written to {ckpt_path}; "
                  f"fix the cause and --resume", file=sys.stderr)
        elif master:
            print(f"{type(e).__name__} at step {step}{' inside the parameter update' if partial else ''}: "
                  f"no checkpoint written; {last_good(ckpt_path)}", file=sys.stderr)
        raise
    bar.close()
    if not checkpoint():
        cleanup(ddp)
        raise Diverged(f"the run ended on non-finite weights or a non-finite step: {last_good(ckpt_path)}")
    if master:
        print(f"done: step {step}, {(time.time() - t_start) / 60:.1f} min, checkpoint {ckpt_path}")
    cleanup(ddp)
    if interrupted:  # 128 + signal number, as a shell reports it, so `train && sample` stops
        sys.exit(128 + (signal.SIGINT if interrupted[0] == 'SIGINT' else signal.SIGTERM))


class Diverged(RuntimeError):
    pass


def force_quit():
    """A second Ctrl-C: stop now, inside the step if need be."""
    raise KeyboardInterrupt


def nonfinite_tensors(modules):
    """Names of the parameters and buffers that hold a NaN or an infinity."""
    return [f'{name}.{k}' for name, m in modules.items() for k, v in m.state_dict().items()
            if v.is_floating_point() and not torch.isfinite(v).all()]


def last_good(ckpt_path):
    if not os.path.isfile(ckpt_path):
        return f"no checkpoint exists at {ckpt_path}"
    step = torch.load(ckpt_path, map_location='cpu', weights_only=True)['step']
    return f"the last good checkpoint {ckpt_path} (step {step}) is kept"


def claim_out_dir(cfg):
    """One run per out_dir (a lock file), and a fresh run never replaces an existing one's checkpoint."""
    out = cfg['out_dir']
    os.makedirs(out, exist_ok=True)
    lock = os.path.join(out, 'train.lock')
    take_lock(lock)
    atexit.register(lambda: os.path.exists(lock) and os.remove(lock))
    ckpt = os.path.join(out, 'ckpt.pt')
    if os.path.isfile(ckpt) and not cfg['resume']:
        if not cfg['overwrite']:
            step = load_checkpoint(ckpt)['step']
            raise ValueError(f"{ckpt} exists (step {step}); pass --resume to continue it, --overwrite to start over "
                             f"(it and log.jsonl are replaced), or choose another --out_dir")
        if os.path.exists(os.path.join(out, 'log.jsonl')):
            os.remove(os.path.join(out, 'log.jsonl'))
    for tmp in glob.glob(os.path.join(out, 'ckpt.pt.tmp*')):  # left by a write that was killed
        os.remove(tmp)


def take_lock(path):
    host = os.uname().nodename
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.load(open(path))
            except (OSError, ValueError):
                held = {}
            pid, where = held.get('pid'), held.get('host')
            if where != host:
                raise ValueError(f"{path}: out_dir is in use by pid {pid} on host {where}; if that run is dead, "
                                 f"delete the lock file") from None
            if pid_alive(pid):
                raise ValueError(f"{os.path.dirname(path)} is in use by a training run (pid {pid}); wait for it, "
                                 f"stop it, or choose another --out_dir") from None
            print(f"removing the stale lock {path} of pid {pid}, which is no longer running")
            os.remove(path)
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump({'pid': os.getpid(), 'host': host, 'started': time.strftime('%Y-%m-%d %H:%M:%S')}, f)
        return
    raise ValueError(f"could not take the lock {path}")


def pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def stop_now(cfg, t_start, interrupted, ddp, dev):
    """Wall-clock budget or SIGTERM; under DDP every rank agrees (rank 0's clock decides)."""
    stop = bool(interrupted) or (cfg['max_minutes'] > 0 and time.time() - t_start > 60 * cfg['max_minutes'])
    if ddp:
        flag = torch.tensor([float(stop)], device=dev)
        dist.broadcast(flag, 0)
        stop = bool(flag.item())
    return stop


def peak_memory_mb(dev):
    if dev.type == 'cuda':
        return torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def log_json(out_dir, rec):
    """One strict-JSON line per record: a NaN or infinity is written as null."""
    rec = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}
    with open(os.path.join(out_dir, 'log.jsonl'), 'a') as f:
        f.write(json.dumps(rec, allow_nan=False) + '\n')


def cleanup(ddp):
    if ddp:
        dist.destroy_process_group()


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError, Diverged) as e:  # user errors and divergence: a message, no traceback
        sys.exit(f"error: {e}")

# Generation preset on the embedded shapes data (python train.py --config shapes_gen): the tiny model, 8,000 steps,
# about 53 minutes on one CPU core. A shorter warm-up, a long stage 0 (denoising at every t), then ECT stages of 800 steps.
dataset = 'shapes'
resolution = 32
preset = 'tiny'
patch = 4
pe_sigma = 32.0
batch_size = 16
lr = 1e-3
lr_full = 1e-4
max_iters = 8000
warmup_iters = 800
ect_stage0 = 1000
ect_d = 800
lambda_recon = 10.0
query_skip = False
boundary_sigma = 0.02
p_mean = 1.0
p_std = 2.25
ema_decay = 0.999
log_interval = 100
sample_interval = 1000
ckpt_interval = 500
max_minutes = 0.0

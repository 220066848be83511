# CelebA-HQ 64^2, paper preset (App. B.3: batch 128, RAdam 1e-4, 2,125 epochs of which 125 reconstruction-only).
dataset = 'celeba'
resolution = 64
preset = 'paper'
patch = 4
pe_sigma = 64.0
batch_size = 128
lr = 1e-4
max_iters = 448_000      # 2,125 epochs x 27,000 / 128
warmup_iters = 26_400    # 125 epochs
ect_d = 52_700           # 8 stages over full training
ema_decay = 0.9999
log_interval = 100
sample_interval = 5000
ckpt_interval = 5000

# CIFAR-10 32^2, paper preset (App. B.3: batch 128, RAdam 1e-4, 1,725 epochs of which 125 reconstruction-only).
dataset = 'cifar10'
resolution = 32
preset = 'paper'
patch = 4
pe_sigma = 32.0
batch_size = 128
lr = 1e-4
max_iters = 674_000      # 1,725 epochs x 50,000 / 128
warmup_iters = 48_800    # 125 epochs
ect_d = 78_000           # 8 stages over full training: dt/t -> n(t)/256 at the end
ema_decay = 0.9999
log_interval = 100
sample_interval = 5000
ckpt_interval = 5000

# Any image folder (--data_dir PATH): the tiny model at 64^2, a starting point to edit.
dataset = 'folder'
resolution = 64
preset = 'tiny'
patch = 4
pe_sigma = 64.0
batch_size = 32
lr = 1e-3
max_iters = 20_000
warmup_iters = 2_000
ect_d = 2_250
ema_decay = 0.999

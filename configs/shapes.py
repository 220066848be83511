# Embedded default: procedural shapes at 32^2, tiny model; trains on 2 CPU cores in about 11 minutes.
# The warm-up takes most of the budget: in so short a run consistency training erodes the encoder (README).
dataset = 'shapes'
resolution = 32
preset = 'tiny'
patch = 4
pe_sigma = 32.0
batch_size = 16
lr = 1e-3
max_iters = 2000
warmup_iters = 1400   # ETS: reconstruction only
ect_d = 75            # stages 0..7 over the 600 full-training steps (dt/t -> n(t)/128)
lambda_recon = 10.0   # paper: robust to 10x; keeps encoding from eroding in this short run (README)
ema_decay = 0.995
log_interval = 100
sample_interval = 400
ckpt_interval = 400
max_minutes = 14.5    # safety net: stop, checkpoint and exit inside the 15-minute budget

# Offline NeRF default: procedural 3D objects (200 train / 16 test, 24 views, 32^2, SRN layout, generated
# once into ~/.cache/inrct), tiny model; meant for 2 CPU cores.
dataset = 'shapes3d'
resolution = 32
preset = 'tiny'
patch = 4
batch_size = 8
rays_per_object = 256
n_samples = 32
sigma_data = 1.0   # a NeRF renders in [-1, 1]: c_out(80) must be ~1, not 0.5, or generated objects
                   # can only reach half the colour range (README, NeRF)
lr = 1e-3
lr_full = 1e-4     # the paper's lr after the warm-up, as configs/shapes.py
max_iters = 3500
warmup_iters = 2500
ect_d = 125
lambda_recon = 10.0
ema_decay = 0.995
log_interval = 100
sample_interval = 400
ckpt_interval = 400
max_minutes = 19.0

# Offline NeRF default: procedural 3D objects (200 train / 16 test, 24 views, 32^2, SRN layout, generated
# once into ~/.cache/inrct), tiny model; meant for 2 CPU cores.
dataset = 'shapes3d'
modality = 'nerf'
resolution = 32
preset = 'tiny'
patch = 4
batch_size = 8
rays_per_object = 256
n_samples = 32
sigma_data = 1.0   # as configs/srn_cars.py; without the query skip (below) f is the render and only c_in uses it
lr = 1e-3
lr_full = 1e-4     # the paper's lr after the warm-up, as configs/shapes.py
max_iters = 3500
warmup_iters = 2500
ect_d = 125
lambda_recon = 10.0
lambda_diff = 10.0
query_skip = False # f = the render alone: the query view's noise is nothing the network sees; lambda_diff 10
                   # anchors f(x, ~0) = O_q instead (docs/nerf.md)
local_gate = 0.0   # ungated here: the gate left 2-step orbits muted with floaters (docs/nerf.md)
ema_decay = 0.995
log_interval = 100
sample_interval = 400
ckpt_interval = 400
max_minutes = 19.0
time_scale = 1000.0 # the NeRF presets keep the time ladder they were measured with (docs/generation-log.md)

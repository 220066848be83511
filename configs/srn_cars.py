# SRN Cars 128^2 (paper App. B/C.2): patch 8, NeRF MLP 6 x 256, batch 128, 6,000 epochs of which 1,000
# reconstruction-only; 1 random support + 1 random query view per object. --data_dir holds cars_train/, cars_test/.
dataset = 'srn_cars'
modality = 'nerf'
resolution = 128
preset = 'paper'
patch = 8
batch_size = 128
rays_per_object = 1024
n_samples = 64
num_workers = 12         # PNG views decoded by worker processes: one GPU at 1,500 objects/s needs several cores
near = 0.8
far = 1.8
sigma_data = 1.0         # a NeRF renders in [-1, 1]: c_out(80) must be ~1, not 0.5, or generated objects
                         # can only reach half the colour range (docs/nerf.md)
local_gate = 0.0         # as configs/shapes3d.py (measured there, not yet on SRN Cars)
lr = 1e-4
max_iters = 115_000      # 6,000 epochs x 2,458 objects / 128
warmup_iters = 19_200    # 1,000 epochs
ect_d = 12_000
ema_decay = 0.9999
log_interval = 100
sample_interval = 5000
ckpt_interval = 5000
time_scale = 1000.0      # the NeRF presets keep the time ladder they were measured with (docs/generation-log.md)

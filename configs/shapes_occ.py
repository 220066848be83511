# Embedded 3D default: procedural solids as 32^3 occupancy grids (4,000 train / 200 test objects, voxelised once
# into ~/.cache/inrct), tiny model; meant for 2 CPU cores in under 20 minutes. 8^3 patches: 64 tokens, as the
# image default's 64. Why each value: docs/occupancy.md.
dataset = 'shapes_occ'
modality = 'occupancy'
resolution = 32
preset = 'tiny'
patch = 8
pe_sigma = 8.0      # objects fill the cube: lower INR frequencies cut floaters (docs/occupancy.md)
batch_size = 16
points_per_object = 1024
lr = 1e-3
lr_full = 1e-4
max_iters = 4000
warmup_iters = 3000
ect_d = 125
lambda_recon = 10.0
query_skip = False     # as the image default: f = the render alone, the narrow boundary skip keeps f(x, t_min) = x
boundary_sigma = 0.02
p_mean = 1.0
p_std = 2.25
ema_decay = 0.995
log_interval = 100
sample_interval = 500
ckpt_interval = 500
max_minutes = 18.0

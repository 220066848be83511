# Your own voxel grids (python train.py --dataset voxels --data_dir DIR): .binvox or .npy occupancy grids, class
# folders allowed, resampled to 32^3; the tiny model and schedule of configs/shapes_occ.py.
dataset = 'voxels'
modality = 'occupancy'
resolution = 32
preset = 'tiny'
patch = 8
pe_sigma = 16.0
batch_size = 16
points_per_object = 1024
lr = 1e-3
lr_full = 1e-4
max_iters = 4000
warmup_iters = 3000
ect_d = 125
lambda_recon = 10.0
query_skip = False
boundary_sigma = 0.02
p_mean = 1.0
p_std = 2.25
ema_decay = 0.995
sample_interval = 500
ckpt_interval = 500

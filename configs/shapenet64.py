# ShapeNet voxels at 64^3 (the Functa / mNIF / DPF benchmark), the paper-size model on GPUs:
#   torchrun --nproc_per_node=4 train.py --dataset voxels --config shapenet64 --data_dir /data/shapenet_binvox
# data_dir holds .binvox (or .npy) grids in class folders; a stable hash of each path puts 10% in the test split.
dataset = 'voxels'
modality = 'occupancy'
resolution = 64
preset = 'paper'
patch = 8              # 8^3 patches of 64^3: 512 observation tokens
pe_sigma = 32.0
batch_size = 128
points_per_object = 4096
lr = 1e-4
max_iters = 400000
warmup_iters = 20000
ect_d = 25000
query_skip = False
boundary_sigma = 0.02
ema_decay = 0.9999
log_interval = 100
sample_interval = 5000
ckpt_interval = 5000
compile = True

"""The default recipe: a small ViT on the embedded procedural shapes dataset, offline, on CPU.

Run:      python -m train.vit --workdir /tmp/vit_shapes
Time:     MEASURED_TIME on a 2-core CPU (the dataset is generated and prepared once on first use).
Result:   MEASURED_RESULT top-1 on the test split (1,000 images).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128          # global, over every device of every process
    c.total_steps = 1500
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 250
    c.keep_checkpoints = 3
    c.init_from = ""            # a checkpoint to fine-tune from (vit_jax / big_vision .npz, timm .pth / .safetensors)

    c.data = ml_collections.ConfigDict()
    c.data.name = "vitsam_shapes"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)   # None: TFDS's default (~/tensorflow_datasets)
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 64
    c.data.crop_scale_min = 0.6
    c.data.eval_crop_fraction = 1.0
    c.data.cache_in_memory = True   # 12,000 images of 64 px: decode once (~9 s), then read from RAM
    c.data.num_threads = 0          # the 2-core CPU is better spent on the step than on prefetch threads
    c.data.worker_count = 0

    c.model = ml_collections.ConfigDict()
    c.model.variant = "Ti/16"
    c.model.patch_size = 8
    c.model.width = 128
    c.model.depth = 4
    c.model.mlp_dim = 256
    c.model.num_heads = 4
    c.model.pool = "tok"
    c.model.posemb = "learn"
    c.model.dropout = 0.0
    c.model.drop_path = 0.0
    c.model.dtype = "float32"
    c.model.scan = False
    c.model.remat = False
    c.model.attention_impl = "einsum"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
    c.optim.warmup_steps = 100
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.optim.label_smoothing = 0.0
    c.optim.grad_accum_steps = 1
    return c

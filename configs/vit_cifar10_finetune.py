"""Fine-tune an ImageNet-21k pre-trained ViT-B/16 on CIFAR-10 at 224 px.

Weights:  an AugReg or original vit_jax B/16 .npz (e.g. `imagenet21k_ViT-B_16.npz` from the vit_jax
          model bucket) or a timm `vit_base_patch16_224.augreg_in21k` .safetensors, downloaded by the user.
Run:      python -m train.vit --config configs/vit_cifar10_finetune.py --workdir DIR \
              --config.init_from=/path/to/ViT-B_16.npz
          (TFDS prepares cifar10 on first use when the machine has internet access; offline, pass
          --config.data.data_dir to a prepared copy.)
Hardware: one GPU (an H100 in the estimate below).
Time:     10,000 steps at batch 512 (estimate, not measured: about 1.5 hours on one H100 in bf16).
Expected: about 98-99% top-1 on the test split (the ViT paper reports 98.1% for B/16 pre-trained on
          ImageNet-21k). Not run by the vitsam team yet: no measured figure.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 512          # global, over every device of every process
    c.total_steps = 10_000
    c.log_every = 100
    c.eval_every = 1_000
    c.checkpoint_every = 1_000
    c.keep_checkpoints = 3
    c.init_from = ""            # required: --config.init_from=PATH

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = ((".*", "fsdp"),)
    c.sharding_min_size = 2**14

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 224
    c.data.crop_scale_min = 0.5
    c.data.rotate90 = False
    c.data.permute_channels = False
    c.data.eval_crop_fraction = 1.0
    c.data.cache_in_memory = False
    c.data.num_threads = 8
    c.data.worker_count = 16

    # The architecture comes from the checkpoint (the variant names it for --compile_for); only these
    # training fields apply on top of the loaded weights.
    c.model = ml_collections.ConfigDict()
    c.model.variant = "B/16"
    c.model.dropout = 0.0
    c.model.drop_path = 0.0
    c.model.dtype = "bfloat16"
    c.model.remat = False
    c.model.attention_impl = "auto"

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"         # or "muon" (train/optim.py)
    c.optim.lr = 1e-4
    c.optim.end_lr = 0.0
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.optim.label_smoothing = 0.0
    c.optim.grad_accum_steps = 1
    return c

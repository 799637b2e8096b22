"""ViT-B/16 from scratch on ImageNet-1k (imagenet2012), 224 px, random resized crop + flip only.

Run:      python -m train.vit --config configs/vit_b16_imagenet.py --workdir gs://BUCKET/vit_b16_i1k \
              --config.data.data_dir=/path/to/tensorflow_datasets
          (imagenet2012 must already be prepared in data_dir: TFDS cannot download it; see the TFDS catalog.)
Hardware: one 8-GPU host or a TPU v4-32 / v5e-32 slice; the global batch of 4096 is split over every device
          (per-device batch 512 on 8 devices needs ~60 GB in bf16 with remat off: use remat=True or
          grad_accum_steps=2 on 40 GB cards).
Time:     about 90 epochs = 28,000 steps (estimate, not measured: 1.5-2 days on 8×H100).
Expected: about 76% top-1 on the validation split. The ViT paper's ImageNet-only B/16 reaches 77.9% (384 px fine-tune);
          AugReg ("How to train your ViT", 2021) shows that RandAugment + mixup add a few points on top of crop + flip.
          Not run by the vitsam team on this hardware yet: no measured figure.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4096         # global, over every device of every process
    c.total_steps = 28_000
    c.log_every = 100
    c.eval_every = 2_000
    c.checkpoint_every = 1_000
    c.keep_checkpoints = 3
    c.init_from = ""

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = ((".*", "fsdp"),)
    c.sharding_min_size = 2**14

    c.data = ml_collections.ConfigDict()
    c.data.name = "imagenet2012"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.crop_scale_min = 0.08
    c.data.rotate90 = False
    c.data.permute_channels = False
    c.data.eval_crop_fraction = 0.875
    c.data.cache_in_memory = False
    c.data.num_threads = 16
    c.data.worker_count = 32

    # The variant sets width, depth, MLP size, heads and patch; the class token and learned positions are
    # the model's defaults (pool "tok", posemb "learn").
    c.model = ml_collections.ConfigDict()
    c.model.variant = "B/16"
    c.model.dropout = 0.0
    c.model.drop_path = 0.1
    c.model.dtype = "bfloat16"
    c.model.scan = False
    c.model.remat = False
    c.model.attention_impl = "auto"

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"         # or "muon" (train/optim.py)
    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
    c.optim.warmup_steps = 10_000
    c.optim.weight_decay = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.clip_norm = 1.0
    c.optim.label_smoothing = 0.1
    c.optim.grad_accum_steps = 1
    return c

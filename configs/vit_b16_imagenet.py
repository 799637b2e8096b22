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

from configs import vit_shapes


def get_config():
    c = vit_shapes.get_config()
    c.batch_size = 4096
    c.total_steps = 28_000
    c.log_every = 100
    c.eval_every = 2_000
    c.checkpoint_every = 1_000

    c.data.name = "imagenet2012"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.crop_scale_min = 0.08
    c.data.rotate90 = False            # a random multiple of 90°: only for orientation-free labels
    c.data.permute_channels = False    # a random RGB order: only for colour-free labels
    c.data.eval_crop_fraction = 0.875
    c.data.cache_in_memory = False
    c.data.num_threads = 16
    c.data.worker_count = 32

    c.model = ml_collections.ConfigDict(dict(
        variant="B/16", patch_size=16, width=768, depth=12, mlp_dim=3072, num_heads=12, pool="tok", posemb="learn",
        dropout=0.0, drop_path=0.1, dtype="bfloat16", scan=False, remat=False, attention_impl="auto"))

    c.optim.lr = 1e-3
    c.optim.end_lr = 1e-5
    c.optim.warmup_steps = 10_000
    c.optim.weight_decay = 0.1
    c.optim.b2 = 0.95
    c.optim.label_smoothing = 0.1
    return c

"""Fine-tune an ImageNet-21k pre-trained ViT-B/16 on CIFAR-10 at 224 px.

Weights:  an AugReg or original vit_jax B/16 .npz (e.g. `imagenet21k_ViT-B_16.npz` from the vit_jax
          model bucket) or a timm `vit_base_patch16_224.augreg_in21k` .safetensors, downloaded by the user.
Run:      python -m train.vit --config configs/vit_cifar10_finetune.py --workdir DIR \
              --config.init_from=/path/to/ViT-B_16.npz
          (TFDS prepares cifar10 on first use when the machine has internet access; offline, pass
          --config.data.data_dir to a prepared copy.)
Time:     10,000 steps at batch 512 (estimate, not measured: about 1.5 hours on one H100 in bf16).
Expected: about 98-99% top-1 on the test split (the ViT paper reports 98.1% for B/16 pre-trained on
          ImageNet-21k). Not run by the vitsam team yet: no measured figure.
"""

import ml_collections

from configs import vit_shapes


def get_config():
    c = vit_shapes.get_config()
    c.init_from = ""  # required: --config.init_from=PATH
    c.batch_size = 512
    c.total_steps = 10_000
    c.log_every = 100
    c.eval_every = 1_000
    c.checkpoint_every = 1_000

    c.data.name = "cifar10"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 224
    c.data.crop_scale_min = 0.5
    c.data.rotate90 = False            # a random multiple of 90°: only for orientation-free labels
    c.data.permute_channels = False    # a random RGB order: only for colour-free labels
    c.data.cache_in_memory = False
    c.data.num_threads = 8
    c.data.worker_count = 16

    # The architecture comes from the checkpoint; these fields describe the same B/16 for reference, and
    # only dropout, drop_path, dtype, remat and attention_impl are applied on top of the loaded weights.
    c.model = ml_collections.ConfigDict(dict(
        variant="B/16", patch_size=16, width=768, depth=12, mlp_dim=3072, num_heads=12, pool="tok", posemb="learn",
        dropout=0.0, drop_path=0.0, dtype="bfloat16", scan=False, remat=False, attention_impl="auto"))

    c.optim.lr = 1e-4
    c.optim.end_lr = 0.0
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 0.0
    c.optim.label_smoothing = 0.0
    return c

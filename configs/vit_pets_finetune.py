"""Fine-tune an ImageNet-21k pre-trained ViT-B/16 on Oxford-IIIT Pet (37 breeds) at 224 px.

Weights:  as for configs/vit_cifar10_finetune.py (a vit_jax / big_vision .npz or a timm checkpoint).
Run:      python -m train.vit --config configs/vit_pets_finetune.py --workdir DIR \
              --config.init_from=/path/to/ViT-B_16.npz
Hardware: one GPU (an H100 in the estimate below).
Time:     2,000 steps at batch 256, ≈140 epochs of 3,680 images (estimate, not measured: ~15 min on one H100, bf16).
Expected: about 93-94% top-1 on the test split (the ViT paper reports 93.8% for B/16 pre-trained on
          ImageNet-21k). Not run by the vitsam team yet: no measured figure.
"""

from configs import vit_cifar10_finetune


def get_config():
    c = vit_cifar10_finetune.get_config()
    c.batch_size = 256
    c.total_steps = 2_000
    c.eval_every = 500
    c.checkpoint_every = 500
    c.data.name = "oxford_iiit_pet"
    c.data.crop_scale_min = 0.3
    c.optim.warmup_steps = 200
    return c

"""ViT-H/14 from scratch on ImageNet-1k (imagenet2012) at 224 px with FSDP on a TPU v5e-256 (or v4-64) slice.

Run:      on every worker of the slice at once (each TPU VM host runs the same command; they find each other):
          gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd vitsam && \
              python -m train.vit --config configs/vit_h14_imagenet_fsdp.py --workdir gs://BUCKET/vit_h14 \
              --config.data.data_dir=gs://BUCKET/tensorflow_datasets"
          (imagenet2012 prepared in array_record format in data_dir; every host reads its own rows of each batch.)
Plan:     python -m train.vit --config configs/vit_h14_imagenet_fsdp.py --workdir /tmp/plan \
              --compile_for=tpu:v5e:16x16        (on any host with the [tpu] extra; no TPU, data or weights)
          Measured 2026-12-03 (jax 0.10.2, libtpu 0.0.42.1; benchmarks/compile_plans.md), per chip: on
          tpu:v5e:16x16 with this mesh (data 16 × fsdp 16) at batch 4096 (16 per chip) 1.72 GiB (params 0.15,
          AdamW 0.30, temporaries 1.17); replicated (data 256) 8.94 GiB (2.35, 4.71, 1.86). The largest batch
          compiled for v5e-256: 90,112 (352 per chip), 15.93 GiB of 16; 102,400 is refused. Each 16x16
          compile that fits took 15–27 minutes on a 2-core host.
Hardware: v5e-256 (16 GiB HBM per chip; mesh data 16 × fsdp 16) or v4-64 (32 chips; data fills the rest of the
          mesh: check with --compile_for=tpu:v4:2x4x4).
Time:     300 epochs = 93,750 steps at batch 4096 — an estimate, not measured: at ~40% MFU of v5e's 197 bf16
          TFLOP/s per chip, 256 chips run a 4096-image step (4.1 PFLOP) in ~0.2 s: about 5.5 hours.
Expected: not measured by the vitsam team. The ViT paper's H/14 trained on ImageNet-1k alone overfits (it needs
          JFT / ImageNet-21k); with DeiT-style augmentation (not in this recipe) ~79–80% is reported for ViT-H.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 4096         # global, over every device of every process
    c.total_steps = 93_750
    c.log_every = 100
    c.eval_every = 5_000
    c.checkpoint_every = 1_000
    c.keep_checkpoints = 3
    c.init_from = ""

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=16))
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

    c.model = ml_collections.ConfigDict()
    c.model.variant = "H/14"
    c.model.pool = "tok"
    c.model.posemb = "learn"
    c.model.dropout = 0.0
    c.model.drop_path = 0.2
    c.model.dtype = "bfloat16"
    c.model.scan = False
    c.model.remat = True        # recompute each block's activations in the backward pass
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

"""Fine-tune the official SAM ViT-H on SA-1B-format data with FSDP on one 8×H100 host (or across GPU nodes).

Prepare:  vitsam convert sam_vit_h_4b8939.pth /ckpt/sam_vit_h          # the official checkpoint, once
Run:      8×H100, one process drives all eight GPUs:
              python -m train.sam --config configs/sam_vit_h_sa1b_fsdp.py --workdir /ckpt/sam_h_ft \
                  --config.init_from=/ckpt/sam_vit_h --config.data.train_path=/data/sa1b/train \
                  --config.data.eval_path=/data/sa1b/val
          SLURM across GPU nodes: srun --ntasks-per-node=1 python -m train.sam ... (auto-detected), with
          --config.batch_size = 1 image per GPU × GPUs.
Plan:     python -m train.sam --config configs/sam_vit_h_sa1b_fsdp.py --workdir /tmp/plan \
              --compile_for=tpu:v5e:4x4 --config.batch_size=16 --config.mesh.fsdp=16
          Measured 2026-12-03 (jax 0.10.2, libtpu 0.0.42.1; benchmarks/compile_plans.md): on TPU v5e XLA refuses
          this step at one image per chip — its temporaries (16 masks × 11 rounds, 1024 px) need 20.51 GiB of a
          v5e chip's 15.75 GiB usable HBM; with --config.data.max_masks=4 it fits: 7.16 GiB per chip (temporaries
          6.69; ~1.15 GiB per mask), and on a v5e-256 (data 16 × fsdp 16) 2 images per chip, global 512, take
          15.30 GiB; replicated (data only) a chip needs 15.41 GiB at one image, on 4x4 and 16x16 alike. So a
          v5e slice needs fewer masks per image (about 11 at most; check with
          --compile_for first) or v5p / v6e chips; an 80 GB H100 holds it (an inference: JAX cannot compile for
          GPUs without one, and the GPU compiler's temporaries differ from the TPU's). Parameters and AdamW
          state per device do not depend on the compiler: 641 M parameters → 0.3 GiB + 0.6 GiB per device over fsdp 8.
Hardware: per image and step the encoder runs once at 1024 px (5.9 TFLOP forward for vit_h) and the decoder
          16 masks × 11 rounds; parameters 641 M (2.6 GB in float32, AdamW moments 5.1 GB more), sharded over
          fsdp with the default rule.
Time:     not measured (no accelerator was available when it was written). The encoder dominates: ~3 × 5.9 TFLOP
          per image per step, so 8 images a step at 40% MFU of 8×H100 (989 bf16 TFLOP/s each) take ~0.05 s of
          encoder compute.
Result:   not measured. `--config.eval_only=True` gives the official model's mIoU on the eval data first.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8            # images per step (global); each brings up to data.max_masks masks
    c.total_steps = 10_000
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.init_from = ""            # required: a `vitsam convert` folder of sam_vit_h (or the .pth itself)
    c.freeze_image_encoder = False
    c.eval_only = False

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=8))
    c.sharding_rules = ((".*", "fsdp"),)
    c.sharding_min_size = 2**14

    c.data = ml_collections.ConfigDict()
    c.data.format = "sa1b"
    c.data.name = "sa1b"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.train_path = ""
    c.data.train_images = ""
    c.data.eval_path = ""
    c.data.eval_images = ""
    c.data.eval_holdout = 0
    c.data.image_size = 1024    # the model's input: longest side 1024, zero-padded
    c.data.max_masks = 16
    c.data.eval_max_masks = 16
    c.data.flip = True
    c.data.cache_in_memory = False
    c.data.num_threads = 8
    c.data.worker_count = 4

    # The architecture comes from init_from; the variant names it for --compile_for, which reads no weights.
    c.model = ml_collections.ConfigDict()
    c.model.variant = "vit_h"
    c.model.drop_path = 0.1
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.attention_impl = "einsum"
    c.model.attention_query_rows = 0   # global attention in one piece (the row chunks are a CPU-cache measure)

    c.sim = ml_collections.ConfigDict()
    c.sim.num_rounds = 11       # the paper: 1 first prompt, 8 sampled points, 2 mask-only rounds
    c.sim.mask_only_rounds = 2
    c.sim.refine_per_image = 0  # every mask goes through every round
    c.sim.box_prob = 0.5
    c.sim.box_noise = 0.1
    c.sim.box_max_noise = 20.0
    c.sim.text = False          # the official SAM has no text encoder
    c.sim.text_per_image = 1

    c.loss = ml_collections.ConfigDict(dict(focal_weight=20.0, dice_weight=1.0, iou_weight=1.0, text_weight=1.0))
    c.eval = ml_collections.ConfigDict(dict(clicks=5))

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"         # or "muon" (train/optim.py)
    c.optim.lr = 1e-5
    c.optim.end_lr = 1e-7
    c.optim.warmup_steps = 250
    c.optim.weight_decay = 0.1
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.optim.layer_decay = 0.8
    c.optim.grad_accum_steps = 1
    return c

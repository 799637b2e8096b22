"""Fine-tune the official SAM ViT-B on SA-1B-format data (an image and a JSON of COCO-RLE masks per example).

Prepare:  vitsam convert sam_vit_b_01ec64.pth /ckpt/sam_vit_b          # the official checkpoint, once
Run:      python -m train.sam --config configs/sam_finetune_sa1b.py --workdir /tmp/sam_ft \\
              --config.init_from=/ckpt/sam_vit_b --config.data.train_path=/data/sa1b/train \\
              --config.data.eval_path=/data/sa1b/val
Before:   the same command with --config.eval_only=True gives the official model's mIoU on the eval data
          (DIR/eval.json; in this config's bfloat16), the baseline the fine-tuned figures compare with.
Frozen:   add --config.freeze_image_encoder=True: only the prompt encoder and mask decoder train; the image
          embedding is computed once per image per step without gradients (far less memory and time).
COCO:     --config.data.format=coco --config.data.train_path=instances_train2017.json
          --config.data.train_images=train2017/ (and eval_path / eval_images); the official model has no text
          encoder, so class names are not used as prompts.
Hardware: an accelerator (ViT-B at 1024 px); on CPU it is only exercised with tiny models by the tests.
Time:     not measured (no accelerator was available when it was written).
Result:   not measured. The paper's recipe: 11 rounds per mask (2 of them mask-only).
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
    c.init_from = ""            # required: a `vitsam convert` folder (or sam_vit_b_01ec64.pth itself)
    c.freeze_image_encoder = False
    c.eval_only = False

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = ((".*", "fsdp"),)
    c.sharding_min_size = 2**14

    c.data = ml_collections.ConfigDict()
    c.data.format = "sa1b"      # or "coco"
    c.data.name = "sa1b"        # name, splits and data_dir: read by format "tfds" only
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.train_path = ""      # sa1b: folder of images + JSONs; coco: instances JSON
    c.data.train_images = ""    # coco: image folder
    c.data.eval_path = ""
    c.data.eval_images = ""
    c.data.eval_holdout = 0     # or hold out the last N images of train_path
    c.data.image_size = 1024    # the model's input: longest side 1024, zero-padded
    c.data.max_masks = 16
    c.data.eval_max_masks = 16
    c.data.flip = True
    c.data.cache_in_memory = False
    c.data.num_threads = 8
    c.data.worker_count = 4

    # The architecture comes from init_from; only the training fields below apply on top of it. The variant
    # is what a run without init_from builds and what --compile_for plans.
    c.model = ml_collections.ConfigDict()
    c.model.variant = "vit_b"
    c.model.drop_path = 0.1
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.attention_impl = "einsum"

    c.sim = ml_collections.ConfigDict()
    c.sim.num_rounds = 11       # the paper: 1 first prompt, 8 sampled points, 2 mask-only rounds
    c.sim.mask_only_rounds = 2
    c.sim.refine_per_image = 0  # every mask goes through every round
    c.sim.box_prob = 0.5        # the paper: a point or a box with equal probability
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
    c.optim.layer_decay = 0.8   # the image encoder's block i learns at lr · 0.8^(depth − i)
    c.optim.grad_accum_steps = 1
    return c

"""The tiny SAM (64-px input, 4-px patches) trained from scratch on the embedded shapes dataset's instance masks
and class names, offline: the default recipe of `train.sam`.

Run:      python -m train.sam --workdir /tmp/sam_shapes
Then:     vitsam segment examples/sam_shapes.png --checkpoint /tmp/sam_shapes --box 66,104,215,251 --out masks/
Hardware: a 2-core CPU, no accelerator.
Time:     13 min 36 s for 3,200 steps (~215 ms a step, compile ~45 s, each eval ~50 s; 2026-12-02, jax 0.10.2, the
          CPU otherwise idle, the dataset already prepared: ~50 s more the first time; the timed run also evaluated
          at step 2,500, which this recipe does not).
Result:   mIoU on test[:500] (every mask of each image, up to 4; at the 64x64 mask resolution), measured 2026-12-02:
          1 box 0.814 · 1 point 0.786 · after 5 clicks 0.778 · text 0.455.
Limits:   text prompts answer every class name with the image's main shape, and clicks after the first do not raise
          the mIoU; docs/experiments.md has the measurements and what was tried against them.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 8            # images per step (global); each brings up to data.max_masks masks
    c.total_steps = 3200
    c.log_every = 50
    c.eval_every = 3200
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.init_from = ""            # fine-tune from a `vitsam convert` folder, a training workdir or a sam_vit_*.pth
    c.freeze_image_encoder = False
    c.eval_only = False         # evaluate init_from on the eval data (DIR/eval.json) and stop

    # Devices: a mesh over every device of every process (-1 fills the rest; the batch splits over data × fsdp)
    # and the parameter placement (`vitsam.sharding`: (regex, spec) pairs, the first match wins).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.sharding_rules = ((".*", "fsdp"),)   # shard parameters over fsdp (a no-op while fsdp is 1)
    c.sharding_min_size = 2**14            # parameters smaller than this stay replicated under "fsdp"

    c.data = ml_collections.ConfigDict()
    c.data.format = "tfds"      # "tfds" (vitsam_shapes or any TFDS set with objects/mask), "sa1b", "coco"
    c.data.name = "vitsam_shapes"
    c.data.data_dir = ml_collections.config_dict.placeholder(str)   # None: TFDS's default (~/tensorflow_datasets)
    c.data.train_split = "train"
    c.data.eval_split = "test[:500]"
    c.data.train_path = ""      # sa1b: folder of images + JSONs; coco: instances JSON
    c.data.train_images = ""    # coco: image folder
    c.data.eval_path = ""
    c.data.eval_images = ""
    c.data.eval_holdout = 0     # sa1b without eval_path: hold out the last N images of train_path
    c.data.image_size = 64      # the frame the data is read at; the step resizes it to the model's input
    c.data.max_masks = 3        # masks per image per step (shapes: 1 main + up to 3 distractors)
    c.data.eval_max_masks = 4
    c.data.flip = True
    c.data.cache_in_memory = True   # tfds only: decode the 12,000 images and their masks once (~15 s, ~300 MB)
    c.data.num_threads = 0      # the 2-core CPU is better spent on the step than on prefetch threads
    c.data.worker_count = 0

    c.model = ml_collections.ConfigDict()
    c.model.variant = "tiny"
    # Architecture overrides of the variant (None keeps the variant's value; ignored with init_from).
    for name in ("image_size", "patch_size", "encoder_dim", "encoder_depth", "encoder_heads", "window_size", "prompt_dim",
                 "mask_in_chans", "decoder_depth", "decoder_heads", "decoder_mlp_dim", "iou_head_hidden_dim",
                 "text_dim", "text_depth", "text_heads", "text_mlp_dim"):
        c.model[name] = ml_collections.config_dict.placeholder(int)
    c.model.global_attn_indexes = ml_collections.config_dict.placeholder(tuple)
    c.model.pe_scale = ml_collections.config_dict.placeholder(float)
    # The shapes' own 64 px as input, 4-px patches: the tiny SAM's 16x16 embedding grid and 64x64 low-res masks,
    # which are the image's pixels (tiny's 256-px / 16-px default would upsample the images 4x for the same grid).
    c.model.image_size = 64
    c.model.patch_size = 4
    c.model.drop_path = 0.0
    c.model.dtype = "float32"
    c.model.remat = False
    c.model.attention_impl = "einsum"

    c.sim = ml_collections.ConfigDict()
    c.sim.num_rounds = 2        # 1 first prompt + later rounds (the paper: 11, of which 2 add no point)
    c.sim.mask_only_rounds = 0
    c.sim.refine_per_image = 1  # later rounds for this many masks per image, drawn at random (0: every mask)
    c.sim.box_prob = 0.7        # first prompt: a box with this probability, else a point
    c.sim.box_noise = 0.1       # box jitter: std as a fraction of the box side ...
    c.sim.box_max_noise = 20.0  # ... clipped to this many input-frame pixels
    c.sim.text = True           # class names as text prompts (data with class names, models with text=True)
    c.sim.text_per_image = 1    # text prompts for the first this many mask slots of each image (masks of a unique class)

    c.loss = ml_collections.ConfigDict()
    c.loss.focal_weight = 20.0
    c.loss.dice_weight = 1.0
    c.loss.iou_weight = 1.0
    c.loss.text_weight = 1.0

    c.eval = ml_collections.ConfigDict()
    c.eval.clicks = 5           # report mIoU after 2 … this many clicks too

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adamw"         # or "muon" (train/optim.py)
    c.optim.lr = 3e-3
    c.optim.end_lr = 1e-5
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.clip_norm = 1.0
    c.optim.layer_decay = 1.0   # < 1: layer-wise lr decay over the image encoder's blocks
    c.optim.grad_accum_steps = 1
    return c

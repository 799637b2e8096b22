"""Official SAM 2.1 models for the parity tests: hiera_t built by `sam2` 1.1.0 at a small input size, every
tensor random at the scale of a trained network's, and the same model converted to vitsam."""

import numpy as np


def randomize(official, seed: int = 0) -> None:
    """Every parameter random: weights ~ 1/sqrt(fan-in), norm scales near 1, biases and embeddings O(0.5), so that
    masks, scores and pointers depend on the prompts and memories; the object-score head's last bias +3, so that
    objects are mostly present (with random weights they are mostly absent, which makes every mask -1024)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in official.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1 and ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() >= 2 and not any(s in name for s in ("pos_embed", "tpos_enc", "embed", "token")):
                p.copy_(noise / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * noise)
        official.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(3.0)
    official.eval()


def official_and_ours(image_size: int, video: bool = False):
    """(official model or video predictor, our Sam2, our variables) with the same random weights."""
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    from vitsam.convert.sam2 import sam2_state_dict_to_variables
    from vitsam.models.sam2.sam2 import sam2_variant

    build = build_sam2_video_predictor if video else build_sam2
    official = build("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
                     hydra_overrides_extra=[f"++model.image_size={image_size}"])
    randomize(official)
    state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    model, variables = sam2_state_dict_to_variables(state, sam2_variant("hiera_t", image_size=image_size))
    return official, model, variables

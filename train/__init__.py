"""Training programs: `python -m train.vit` (ViT classification) on the shared loop in `train.loop`."""

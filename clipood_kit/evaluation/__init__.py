"""Layer 4: image and text features, OOD scores and metrics, zero-shot accuracy, the CLIP card. Knows models and
data, nothing of experiments or training."""

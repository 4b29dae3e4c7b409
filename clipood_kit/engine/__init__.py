"""Layer 5: the experiment spec and its builder, `prepare`, training on Accelerate, scoring, run folders,
post-hoc trajectories and the tiny CLIP's pretraining."""

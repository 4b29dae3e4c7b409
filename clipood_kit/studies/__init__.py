"""Layer 7: many runs at once: the bench (demo, compare), sweeps, feature projections."""

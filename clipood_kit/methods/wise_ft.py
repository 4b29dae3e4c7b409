"""WiSE-FT (Wortsman et al., CVPR 2022): fine-tune with cross-entropy, then interpolate the weights of the
zero-shot and fine-tuned encoders, theta(a) = (1 - a) * theta_0 + a * theta_ft, for each a in the grid."""
from typing import Dict

from .averaging import interpolate
from .base import Method, State


class WiSEFT(Method):
    name = "wise-ft"

    @property
    def primary(self) -> str:
        return f"wise-ft@{self.cfg.wise_mix:g}"

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        mixes = sorted(set(self.cfg.wise_mixes) | {self.cfg.wise_mix})
        states = {"last": last}
        states.update({f"wise-ft@{a:g}": interpolate(zero_shot, last, a) for a in mixes})
        return states

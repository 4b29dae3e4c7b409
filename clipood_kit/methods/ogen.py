"""OGEN, overcoming the pitfalls of vision-language fine-tuning for OOD generalisation (Zang et al., ICLR 2024,
arXiv 2401.15914; official code github.com/apple/ml-ogen, which lacks the self-distillation).

Feature generator (Sec. 3.2): g(Q, K, V) = norm( MLP(Q) + MultiHeadAttention(Q, K, V) ), queries = text features
of the classes whose image features are synthesised, keys = text features of the classes they are built from,
values = image features of those classes. Per step, with f the batch's normalised image features, t the frozen
training-class text features, N(y) the k nearest training classes of y (cosine of the class feature means, as in
the official code) and v_c = mu_c + u * sigma_c, u ~ U[0, 1)^D, a sampled feature of class c:

- leave-one-out, y unknown:   f'_y  = g(t_y, t_N(y), v_N(y))    regressed onto f, classified as y;
- the reverse, y known:       f'_N  = g(t_N(y), t_y, f)         regressed onto v_N(y), classified as N(y);
- unknown classes:            f'_U  = g(u_U(y), t_y, f)         classified among the unknown class names, U(y)
                                                                 the k unknown names nearest to t_y (text cosine).

Loss (the official code's weights): D * (MSE(f'_y, f) + MSE(f'_N, v_N)) during the first `ogen_warmup` share of
the steps (the generator's warm-up); afterwards that plus 0.25 CE(f) + 0.25 CE(f'_y) + 0.25/k CE(f'_N) +
0.5/k CE(f'_U) + `ogen_distill` * KL(p_teacher || p_student), all at CLIP's logit scale. `ogen_synthetic`
multiplies the three CE terms on synthetic features (1 = the method; 0 = the ablation without them).

How this bench adapts the method (say so when you compare it):
- OGEN learns prompts with a frozen image encoder; here, as for every method on the bench, the image encoder
  is trained and the text features are frozen. The synthetic-feature CE terms reach the encoder through the
  real features f used as the generator's values; the regression targets and inputs are detached, so during
  the warm-up only the generator learns (as in the official code, where only the generator gets gradients).
- The unknown class names are the experiment's held-out class names (the new classes), as in the official
  code (`classnames_new`): OGEN sees their names, never their images, during training; no other method does.
- u is drawn per sample and neighbour (the official code draws one vector per step).
- One forward pass per step. After the warm-up the official code runs the model a second time and regresses the
  first pass's generated features onto the second pass's (re-sampled) targets; the two passes see the same
  images, so this changes only the sampled u.
- Adaptive self-distillation: the teacher is `averaging.LocalMeanTeacher`, the uniform mean of snapshots over
  the latest `ogen_window` share of the steps so far (a window that grows with training, the paper's adaptive
  local mean teacher), distilled with KL(p_teacher || p_student) over the training classes after the warm-up.
  The result is the student ("last"); the teacher is evaluated too.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from .averaging import LocalMeanTeacher, with_average
from .base import Method, State
from .losses import reference_kl


class FeatureGenerator(nn.Module):
    """g(Q, K, V) = norm(MLP(Q) + MultiHeadAttention(Q, K, V)) on (B, n, D) queries and (B, m, D) keys/values."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the feature dimension ({dim}) must be divisible by ogen_heads ({heads})")
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(queries, keys, values, need_weights=False)
        return F.normalize(self.mlp(queries) + attended, dim=-1)


class OGEN(Method):
    name = "ogen"
    inputs = ("unknown_text_features", "class_feature_mean", "class_feature_std")

    @property
    def lr_scale(self) -> float:
        return self.cfg.ogen_lr_scale

    def setup(self, encoder, text_features, logit_scale, total_steps, unknown_text_features=None,
              class_feature_mean=None, class_feature_std=None, **inputs):
        super().setup(encoder, text_features, logit_scale, total_steps)
        cfg, k = self.cfg, self.cfg.ogen_k
        if unknown_text_features is None or class_feature_mean is None or class_feature_std is None:
            raise ValueError("ogen needs unknown_text_features (held-out class names) and the training classes' "
                             "class_feature_mean / class_feature_std; protocols.method_inputs builds them")
        n_known, n_unknown = len(text_features), len(unknown_text_features)
        if n_known < k + 1 or n_unknown < k:
            raise ValueError(f"ogen with ogen_k={k} needs at least {k + 1} training classes and {k} unknown (held-out) "
                             f"classes; this experiment has {n_known} and {n_unknown}. Lower ogen_k or use a "
                             f"protocol with held-out classes (base-to-new, in-the-wild, open-world)")
        if class_feature_mean.shape != text_features.shape or class_feature_std.shape != text_features.shape:
            raise ValueError(f"class feature statistics must be {tuple(text_features.shape)} (training classes x dim); "
                             f"got {tuple(class_feature_mean.shape)} and {tuple(class_feature_std.shape)}")
        if not 0.0 <= cfg.ogen_warmup < 1.0:
            raise ValueError(f"ogen_warmup must be in [0, 1), got {cfg.ogen_warmup}")
        device, dtype = text_features.device, text_features.dtype
        self.k = k
        self.unknown = F.normalize(unknown_text_features.to(device, dtype), dim=-1)
        self.mu, self.sigma = class_feature_mean.to(device, dtype), class_feature_std.to(device, dtype)
        means = F.normalize(self.mu, dim=-1)
        sim = means @ means.T
        sim.fill_diagonal_(-float("inf"))
        self.neighbours = sim.topk(k, dim=1).indices                                     # C x k
        self.unknown_neighbours = (text_features @ self.unknown.T).topk(k, dim=1).indices  # C x k
        self.generator = FeatureGenerator(text_features.shape[1], cfg.ogen_heads).to(device, dtype)
        self.warmup_steps = int(cfg.ogen_warmup * total_steps)   # official: epoch < int(0.2 * max_epoch)
        self.teacher_average = LocalMeanTeacher(encoder, total_steps, cfg.ogen_window, cfg.ogen_snapshots)
        self.teacher = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.seed = int(torch.randint(2**31 - 1, (1,)))
        self.parts: Dict[str, float] = {}

    def trainable_modules(self) -> List[nn.Module]:
        return [self.generator]

    @property
    def step(self) -> int:
        """Optimiser steps taken so far (the teacher counts them)."""
        return self.teacher_average.step

    @property
    def warming_up(self) -> bool:
        return self.step < self.warmup_steps

    def sample_features(self, classes: torch.Tensor) -> torch.Tensor:
        """v_c = mu_c + u * sigma_c, u ~ U[0, 1)^D, seeded by the step."""
        gen = torch.Generator().manual_seed(self.seed + self.step)
        u = torch.rand(*classes.shape, self.mu.shape[1], generator=gen).to(self.mu)
        return self.mu[classes] + u * self.sigma[classes]

    def generate(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every synthetic feature of a batch (see the module docstring): gen_y, gen_nb_fit, gen_nb, gen_unknown."""
        t, f = self.text_features, F.normalize(features, dim=-1)
        nb = self.neighbours[labels]
        query = t[labels].unsqueeze(1)
        values = self.sample_features(nb)
        out = {"neighbours": nb, "values": values,
               "gen_y": self.generator(query, t[nb], values)[:, 0],
               "gen_nb_fit": self.generator(t[nb], query, f.detach().unsqueeze(1))}
        if not self.warming_up:
            unknown = self.unknown_neighbours[labels]
            out.update(unknown=unknown, gen_nb=self.generator(t[nb], query, f.unsqueeze(1)),
                       gen_unknown=self.generator(self.unknown[unknown], query, f.unsqueeze(1)))
        return out

    def distillation(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """KL(p_teacher || p_student) over the training classes at the logit scale, mean over the batch."""
        self.teacher.to(images.device)
        with torch.no_grad():
            teacher = self.teacher(images)
        return reference_kl(teacher, features, self.text_features, self.logit_scale)

    def loss(self, features, labels, images):
        f = F.normalize(features, dim=-1)
        t, s, k, dim = self.text_features, self.logit_scale, self.k, f.shape[1]
        g = self.generate(features, labels)
        regression = dim * (F.mse_loss(g["gen_y"], f.detach()) + F.mse_loss(g["gen_nb_fit"], g["values"]))
        with torch.no_grad():
            self.parts = {"regression": regression.item(),
                          "generated_accuracy": (s * g["gen_y"] @ t.T).argmax(1).eq(labels).float().mean().item()}
        if self.warming_up:
            return regression
        ce_real = super().loss(features, labels, images)
        ce_y = F.cross_entropy(s * g["gen_y"] @ t.T, labels)
        ce_nb = F.cross_entropy(s * g["gen_nb"].flatten(0, 1) @ t.T, g["neighbours"].flatten())
        ce_unknown = F.cross_entropy(s * g["gen_unknown"].flatten(0, 1) @ self.unknown.T, g["unknown"].flatten())
        synthetic = 0.25 * ce_y + 0.25 / k * ce_nb + 0.5 / k * ce_unknown
        loss = regression + 0.25 * ce_real + self.cfg.ogen_synthetic * synthetic
        if self.cfg.ogen_distill:
            kl = self.distillation(features, images)
            loss = loss + self.cfg.ogen_distill * kl
            self.parts["distillation"] = kl.item()
        self.parts.update(ce_real=ce_real.item(), ce_unknown=ce_unknown.item())
        return loss

    def after_step(self, encoder):
        if self.teacher_average.update(encoder):
            self.teacher_average.copy_to(self.teacher)
        return {**self.parts, "warm_up": float(self.step <= self.warmup_steps)}

    def state_dict(self) -> dict:
        state = self.teacher_average.state_dict()
        state.update(generator={n: t.detach().clone() for n, t in self.generator.state_dict().items()},
                     seed=self.seed)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.teacher_average.load_state_dict({k: v for k, v in state.items() if k not in ("generator", "seed")})
        self.teacher_average.copy_to(self.teacher)
        self.seed = int(state["seed"])

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {"last": last, "teacher": with_average(last, self.teacher_average.average)}

"""OGEN, overcoming the pitfalls of vision-language fine-tuning for OOD generalisation (Zang et al., ICLR 2024,
arXiv 2401.15914; official code github.com/apple/ml-ogen, `trainers/ogen.py`, which lacks the self-distillation).

Two presets of the same parts (`methods/__init__.py`):
- `ogen`, the paper's own setting: CoOp's learnable prompt context with both towers frozen (the official
  `PromptLearner` holds the context and the generator, lines 80-156; the optimiser sees only them, line 339);
  the loss part is `coop`, the regularisers `ogen` and `self-distill`.
- `ogen-ft`, this bench's variant for image-encoder fine-tuning: the loss part is `ce`, the image tower trains
  and the class features stay the frozen zero-shot ones (see "The image-encoder variant" below).

Feature generator (Sec. 3.2; official `CustomCLIP.feature_generator`, lines 241-246): g(Q, K, V) =
norm( MLP(Q) + MultiHeadAttention(Q, K, V) ), queries = class features of the classes whose image features are
synthesised, keys = class features of the classes they are built from, values = image features of those classes.
Per step, with f the batch's normalised image features, w the model's class features of the training classes
(`Batch.class_features`: the learned prompt's in `ogen`, the frozen zero-shot ones in `ogen-ft`), w_new its class
features of the held-out classes (`Batch.every_class_features`; the official `w_new`, lines 264-267), N(y) the k
nearest training classes of y (by the dot product of the class feature means, the official rule, lines 236-239,
and the default, or by their cosine: `neighbours`) and v_c = mu_c + u * sigma_c, u ~ U[0, 1)^D, a sampled feature
of class c (line 277):

- leave-one-out, y unknown:   f'_y  = g(w_y, w_N(y), v_N(y))    regressed onto f, classified as y   (line 278);
- the reverse, y known:       f'_N  = g(w_N(y), w_y, f)          regressed onto v_N(y), classified as N(y) (281);
- unknown classes:            f'_U  = g(w_new_U(y), w_y, f)      classified among the held-out classes, U(y) the k
                                                                 held-out classes nearest to w_y (lines 284-288).

The queries and keys w_y, w_N(y) are detached (lines 272-274); w_new_U(y) is not, and the classifiers of the
synthetic features are w and w_new themselves (lines 279, 282, 288): the synthetic cross-entropy reaches the prompt
context through both. U(y) is recomputed every step from the current class features (line 285).

Loss (line 372): D * (MSE(f'_y, f) + MSE(f'_N, v_N)) during the first `warmup` share of the steps (the
generator's warm-up, line 367; the classification loss is off: `base_weight` 0); afterwards that plus
0.25 CE(f) + 0.25 CE(f'_y) + 0.25/k CE(f'_N) + 0.5/k CE(f'_U), all at CLIP's logit scale, plus the
self-distillation part's weight * KL(p_teacher || p_student). `synthetic` multiplies the three CE terms on
synthetic features (1 = the method; 0 = the ablation without them).

Where this implementation differs from the official code (say so when you compare):
- u is drawn per sample and neighbour (the official code draws one vector per step, `torch.rand(1, 512)`).
- One forward pass per step. After the warm-up the official code runs the model a second time (line 370) and
  regresses the first pass's generated features onto the second pass's targets; with a frozen image encoder the
  two passes differ only in the sampled u.
- The generator's learning rate is `lr_scale` times the method's (the official code: one optimiser, so 1, the
  `ogen` preset's value; `ogen-ft` uses 10, since an image encoder's learning rate is far below a prompt's).
- Adaptive self-distillation (`self-distill` part; absent from the released code, which only builds an unused
  `model_teacher`, line 324): the teacher is `averaging.LocalMeanTeacher`, the uniform mean of snapshots of the
  trained weights (the prompt context in `ogen`, the image tower in `ogen-ft`) over the latest `window` share of
  the steps so far (a window that grows with training: the paper's adaptive local mean teacher), distilled with
  KL(p_teacher || p_student) over the training classes, p = softmax(logit scale * the model's cosines), from the
  `start` share of the steps on (the warm-up's end). The result is the student ("last"); the teacher is
  evaluated too.
- The generator's attention dropout (`dropout`; the official nn.MultiheadAttention uses 0.1, line 152) draws from
  a generator seeded by the run's seed and the step, like every random draw of the parts. Its masks are drawn for
  this process's rows, so with dropout on, a run on k processes differs from the 1-process run (u does not: it is
  drawn for the global batch); with `ogen.dropout=0` the two are the same run. fp32, not fp16.

The image-encoder variant (`ogen-ft`):
- The image encoder is trained and the class features are frozen, so the generator's queries and classifiers are
  the zero-shot text features. The synthetic-feature CE terms reach the encoder through the real features f used
  as the generator's values; the regression targets and context are detached, so during the warm-up only the
  generator learns (as in the official code, where only the generator gets gradients).
- The held-out class names are the experiment's new classes, as in the official code (`classnames_new`): OGEN
  sees their names, never their images, during training; no other fine-tuning method does.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipood_kit.methods.averaging import LocalMeanTeacher, with_average
from clipood_kit.methods.base import Batch, Metrics, PartConfig, MethodContext, Regulariser, RunContext, State
from clipood_kit.methods.losses import softmax_kl

NEIGHBOUR_RULES = ("dot", "cosine")


class FeatureGenerator(nn.Module):
    """g(Q, K, V) = norm(MLP(Q) + MultiHeadAttention(Q, K, V)) on (B, n, D) queries and (B, m, D) keys/values."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the feature dimension ({dim}) must be divisible by ogen.heads ({heads})")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(queries, keys, values, need_weights=False)
        return F.normalize(self.mlp(queries) + attended, dim=-1)


class GeneratorCalls(nn.Module):
    """Every call of the generator in one step as one forward pass: `calls([(q, k, v), ...])` -> outputs. Under
    k processes the trainer wraps this module in DDP (`accelerator.prepare`), which averages the generator's
    gradients only for parameters used in a forward pass of the wrapper; one pass per step keeps that simple."""

    def __init__(self, generator: FeatureGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, calls):
        return [self.generator(q, k, v) for q, k, v in calls]


def nearest_classes(means: torch.Tensor, k: int, rule: str) -> torch.Tensor:
    """C x k indices of each class's k nearest other classes by its feature mean: `dot` ranks by the raw dot
    product mu_i . mu_j (the official code), `cosine` by cos(mu_i, mu_j)."""
    if rule not in NEIGHBOUR_RULES:
        raise ValueError(f"ogen.neighbours must be one of {NEIGHBOUR_RULES}, got {rule!r}")
    m = F.normalize(means, dim=-1) if rule == "cosine" else means
    sim = m @ m.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def nearest_unknown(known: torch.Tensor, unknown: torch.Tensor, k: int) -> torch.Tensor:
    """N x k indices of the k held-out classes (rows of `unknown`, U x D) nearest to each row of `known` (N x D) by
    the dot product of normalised class features (official `cosine_sim_new`, lines 284-285)."""
    return (known @ unknown.T).topk(k, dim=1).indices


@dataclass
class OGENConfig(PartConfig):
    kind: ClassVar[str] = "ogen"
    role: ClassVar[str] = "regulariser"
    every_parameter_every_step: ClassVar[bool] = False      # the warm-up leaves the image tower without gradient
    reads_training_features: ClassVar[bool] = True          # the class statistics of the training images
    summary: ClassVar[str] = ("OGEN: class-conditional feature generator, synthetic features of unknown classes "
                              "(regression warm-up, then synthetic-feature CE)")
    k: int = 3                       # nearest known classes per generated feature (official code: 3)
    heads: int = 4                   # attention heads of the feature generator (official code: 4)
    dropout: float = 0.1             # attention dropout of the generator (official code: 0.1; 0 before 2026-11)
    neighbours: str = "dot"          # "dot" (official code) or "cosine" (this bench's rule before 2026-11)
    warmup: float = 0.2              # share of the steps with the leave-one-out regression alone
    synthetic: float = 1.0           # multiplier of the synthetic-feature CE terms (0: the ablation without them)
    real_weight: float = 0.25        # weight of the classification loss on real features after the warm-up
    lr_scale: float = 10.0           # generator learning rate / encoder learning rate

    def validate(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"ogen.warmup must be in [0, 1), got {self.warmup}")
        if self.neighbours not in NEIGHBOUR_RULES:
            raise ValueError(f"ogen.neighbours must be one of {NEIGHBOUR_RULES}, got {self.neighbours!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ogen.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"ogen.k must be an integer >= 1, got {self.k!r}")

    def build(self) -> "OGENGenerator":
        return OGENGenerator(self)


class OGENGenerator(Regulariser):
    """The generator terms of OGEN (module docstring). `prepare` builds its class statistics from the experiment."""

    unknown_class_ids: Optional[list] = None               # the held-out classes' rows among every class
    class_feature_mean: Optional[torch.Tensor] = None      # training classes x D
    class_feature_std: Optional[torch.Tensor] = None

    @property
    def lr_scale(self) -> float:
        return self.cfg.lr_scale

    def check(self, context: MethodContext) -> None:
        if not context.unknown_class_ids:
            raise ValueError(f"ogen needs held-out class names, but protocol {context.protocol!r} trains on every "
                             f"class; use base-to-new, in-the-wild or open-world")
        self._check_counts(len(context.train_class_ids), len(context.unknown_class_ids))

    def _check_counts(self, known: int, unknown: int) -> None:
        k = self.cfg.k
        if known < k + 1 or unknown < k:
            raise ValueError(f"ogen with ogen.k={k} needs at least {k + 1} training classes and {k} unknown (held-out) "
                             f"classes; this experiment has {known} and {unknown}. Lower ogen.k or use a "
                             f"protocol with held-out classes (base-to-new, in-the-wild, open-world)")

    def prepare(self, context: MethodContext) -> None:
        """Unknown classes: the held-out (new) classes, whose names OGEN synthesises features for (their class
        features are the model's at each step, `classifiers`). Class statistics: per training class, the mean and
        standard deviation of the zero-shot encoder's normalised features of the training images (evaluation
        transform), as the official code precomputes them."""
        self.unknown_class_ids = list(context.unknown_class_ids)
        enc = context.training_features_for(self.cfg.kind)
        rows = [enc["features"][enc["labels"] == c] for c in context.train_class_ids]
        empty = [context.class_names[c] for c, r in zip(context.train_class_ids, rows) if len(r) == 0]
        if empty:
            raise ValueError(f"training class(es) {empty} have no training images; class statistics need at least one")
        self.class_feature_mean = torch.stack([r.mean(0) for r in rows])
        self.class_feature_std = torch.stack([r.std(0, unbiased=False) for r in rows])

    def setup(self, run: RunContext) -> None:
        super().setup(run)
        cfg, k, t = self.cfg, self.cfg.k, run.text_features
        if not self.unknown_class_ids or self.class_feature_mean is None or self.class_feature_std is None:
            raise ValueError("ogen needs unknown_class_ids (held-out class names) and the training classes' "
                             "class_feature_mean / class_feature_std: call method.prepare(setup) first")
        if getattr(run.model, "adapts_cosines", False):
            raise ValueError("ogen synthesises features for one classifier of class features (ce, coop, mms); this "
                             "method's scores are per image (cocoop, tip-adapter), which ogen cannot classify against")
        self._check_counts(len(t), len(self.unknown_class_ids))     # also when the statistics were set by hand
        if self.class_feature_mean.shape != t.shape or self.class_feature_std.shape != t.shape:
            raise ValueError(f"class feature statistics must be {tuple(t.shape)} (training classes x dim); got "
                             f"{tuple(self.class_feature_mean.shape)} and {tuple(self.class_feature_std.shape)}")
        device, dtype = t.device, t.dtype
        self.mu, self.sigma = self.class_feature_mean.to(device, dtype), self.class_feature_std.to(device, dtype)
        self.neighbours = nearest_classes(self.mu, k, cfg.neighbours)                     # C x k
        self.seed = run.part_seed(cfg.kind)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.generator = FeatureGenerator(t.shape[1], cfg.heads, cfg.dropout).to(device, dtype)
        self.calls = GeneratorCalls(self.generator)
        self.warmup_steps = int(cfg.warmup * run.total_steps)   # official: epoch < int(0.2 * max_epoch)

    def trainable_modules(self) -> Dict[str, nn.Module]:
        return {"calls": self.calls}

    def base_weight(self, step: int) -> float:
        return 0.0 if step < self.warmup_steps else self.cfg.real_weight

    def sample_features(self, classes: torch.Tensor, step: int) -> torch.Tensor:
        """v_c = mu_c + u * sigma_c, u ~ U[0, 1)^D, seeded by the run and the step. u is drawn for the step's global
        batch and this process takes its rows (`RunContext.process_index::num_processes`, the rows its batch
        holds), so a sample gets the same u on any number of processes."""
        rank, world = self.run.process_index, self.run.num_processes
        gen = torch.Generator().manual_seed(self.seed + step)
        u = torch.rand(len(classes) * world, *classes.shape[1:], self.mu.shape[1], generator=gen)[rank::world]
        return self.mu[classes] + u.to(self.mu) * self.sigma[classes]

    def classifiers(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(w, w_new): the model's normalised class features of the training classes (C x D) and of the held-out
        classes (U x D) at this step (module docstring)."""
        if batch.class_features is None or batch.every_class_features is None:
            raise ValueError("ogen needs the batch's class features of the training and of the held-out classes "
                             "(Batch.class_features, Batch.every_class_features)")
        unknown = self.unknown_class_ids
        if len(batch.every_class_features) <= max(unknown):
            raise ValueError(f"Batch.every_class_features has {len(batch.every_class_features)} rows; the held-out "
                             f"classes need rows up to {max(unknown)}")
        w = F.normalize(batch.class_features, dim=-1)
        w_new = F.normalize(batch.every_class_features[unknown].to(w.dtype), dim=-1)
        return w, w_new

    def generate(self, features: torch.Tensor, labels: torch.Tensor, step: int, w: torch.Tensor, w_new: torch.Tensor
                 ) -> Dict[str, torch.Tensor]:
        """Every synthetic feature of a batch (module docstring): gen_y, gen_nb_fit, gen_nb, gen_unknown."""
        f, fixed = F.normalize(features, dim=-1), w.detach()      # queries and keys carry no gradient
        nb = self.neighbours[labels]
        query = fixed[labels].unsqueeze(1)
        values = self.sample_features(nb, step)
        devices = [f.device] if f.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):          # the attention dropout's draws, seeded by the step
            torch.manual_seed(self.seed + 7919 * (step + 1))
            calls = [(query, fixed[nb], values), (fixed[nb], query, f.detach().unsqueeze(1))]
            after_warmup = step >= self.warmup_steps
            if after_warmup:
                unknown = nearest_unknown(fixed[labels], w_new.detach(), self.cfg.k)
                calls += [(fixed[nb], query, f.unsqueeze(1)), (w_new[unknown], query, f.unsqueeze(1))]
            generated = self.calls(calls)
        out = {"neighbours": nb, "values": values, "gen_y": generated[0][:, 0], "gen_nb_fit": generated[1]}
        if after_warmup:
            out.update(unknown=unknown, gen_nb=generated[2], gen_unknown=generated[3])
        return out

    def penalty(self, batch: Batch) -> Tuple[Optional[torch.Tensor], Metrics]:
        labels, step = batch.labels, batch.step
        f = F.normalize(batch.features, dim=-1)
        w, w_new = self.classifiers(batch)
        s, k, dim = self.run.logit_scale, self.cfg.k, f.shape[1]
        g = self.generate(batch.features, labels, step, w, w_new)
        regression = dim * (F.mse_loss(g["gen_y"], f.detach()) + F.mse_loss(g["gen_nb_fit"], g["values"]))
        with torch.no_grad():
            metrics: Metrics = {"regression": regression.detach(),
                                "generated_accuracy": (g["gen_y"] @ w.T).argmax(1).eq(labels).float().mean(),
                                "warm_up": float(step < self.warmup_steps)}
        if step < self.warmup_steps:
            return regression, metrics
        ce_y = F.cross_entropy(s * g["gen_y"] @ w.T, labels)
        ce_nb = F.cross_entropy(s * g["gen_nb"].flatten(0, 1) @ w.T, g["neighbours"].flatten())
        ce_unknown = F.cross_entropy(s * g["gen_unknown"].flatten(0, 1) @ w_new.T, g["unknown"].flatten())
        synthetic = 0.25 * ce_y + 0.25 / k * ce_nb + 0.5 / k * ce_unknown
        metrics["ce_unknown"] = ce_unknown.detach()
        return regression + self.cfg.synthetic * synthetic, metrics

    def state_dict(self) -> dict:
        return {"generator": {n: t.detach().clone() for n, t in self.generator.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])


@dataclass
class SelfDistillConfig(PartConfig):
    kind: ClassVar[str] = "self-distill"
    role: ClassVar[str] = "regulariser"
    summary: ClassVar[str] = ("OGEN's adaptive self-distillation: KL(teacher || student), teacher = mean of the "
                              "snapshots in a window growing with training")
    weight: float = 1.0              # weight of KL(teacher || student)
    window: float = 0.25             # the teacher averages the latest 25% of the steps so far
    snapshots: int = 40              # snapshot every ceil(steps / snapshots) steps
    start: float = 0.2               # share of the steps before distillation starts (OGEN: its warm-up)

    def validate(self) -> None:
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"self-distill.weight must be finite and >= 0, got {self.weight}")
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"self-distill.start must be in [0, 1), got {self.start}")

    def build(self) -> "SelfDistillation":
        return SelfDistillation(self)


class SelfDistillation(Regulariser):
    def setup(self, run: RunContext) -> None:
        super().setup(run)
        self.teacher_average = LocalMeanTeacher(run.model, run.total_steps, self.cfg.window, self.cfg.snapshots)
        self.teacher = copy.deepcopy(run.model).eval().requires_grad_(False)
        self.start_step = int(self.cfg.start * run.total_steps)
        # with a frozen image tower whose features no part adapts (the prompt setting), the teacher's image
        # features are the student's: the batch's are reused rather than encoded again
        model = run.model
        self.same_image_features = (not any(p.requires_grad for p in model.visual.parameters())
                                    and not getattr(model, "adapts_images", False))

    def penalty(self, batch: Batch) -> Tuple[Optional[torch.Tensor], Metrics]:
        """weight * KL(p_teacher || p_student) over the training classes, p = softmax(logit scale * cosines): the
        teacher's cosines of its own image features to its own class features (the averaged prompt context in
        `ogen`, the averaged image tower in `ogen-ft`), the student's from the batch; mean over the batch."""
        if batch.step < self.start_step or not self.cfg.weight:
            return None, {}
        s = self.run.logit_scale
        self.teacher.to(batch.images.device)
        with torch.no_grad():
            features = batch.features if self.same_image_features else self.teacher.image_features(batch.images)
            teacher = self.teacher.cosines(features.detach())
            if self.run.class_rows is not None:
                teacher = teacher[:, self.run.class_rows]
        if batch.cosines is not None:
            student = batch.cosines
        else:
            student = F.normalize(batch.features, dim=-1) @ F.normalize(batch.class_features, dim=-1).T
        kl = softmax_kl(s * teacher, s * student)
        return self.cfg.weight * kl, {"distillation": kl.detach()}

    def after_step(self, model) -> Metrics:
        if self.teacher_average.update(model):
            self.teacher_average.copy_to(self.teacher)
        return {}

    def state_dict(self) -> dict:
        return self.teacher_average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.teacher_average.load_state_dict(state)
        self.teacher_average.copy_to(self.teacher)

    def final_states(self, zero_shot: State, last: State) -> Dict[str, State]:
        return {"teacher": with_average(last, self.teacher_average.average)}

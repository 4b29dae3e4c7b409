"""The embedded image world: procedurally rendered shapes in several styles.

Every image shows one shape (the class) of a named colour and size, drawn in one style (the domain),
with a random position and rotation. The world is the toolkit's default dataset: it needs no download,
renders thousands of images per second on a laptop CPU, and has the two kinds of shift CLIPood is about:
unseen styles (covariate shift) and unseen classes (semantic shift).

Rendering is vectorised over a batch with torch: shapes are implicit functions of rotated, scaled local
coordinates, evaluated on a 2x super-sampled grid and averaged down (anti-aliasing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.95, 0.88, 0.15),
    "green": (0.15, 0.70, 0.20),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.25, 0.88),
    "purple": (0.55, 0.18, 0.75),
    "pink": (0.97, 0.50, 0.72),
}
SIZES: Dict[str, float] = {"small": 0.50, "medium": 0.64, "large": 0.80}
# Style (domain) name -> the words its captions use ("a sketch of a ...", "a neon sign of a ...").
STYLES: Dict[str, str] = {
    "photo": "photo",
    "sketch": "sketch",
    "cartoon": "cartoon",
    "painting": "painting",
    "neon": "neon sign",
    "blueprint": "blueprint",
}
# The styles of the world's default grids (every protocol's domains). `blueprint` is the rare style: pretraining
# sees few blueprints, mostly captioned without their class (`engine.pretrain`), as CLIP saw few satellite images
# or texture close-ups; it is the downstream domain of the prompt-learning task (`PROMPT_TASK_STYLES`).
DEFAULT_STYLES: Tuple[str, ...] = ("photo", "sketch", "cartoon", "painting", "neon")
RARE_STYLES: Tuple[str, ...] = ("blueprint",)


# ----------------------------------------------------------------------------------------------------
# Shapes: each maps local coordinates (u, v), v pointing up, shape inside the unit disc, to a bool mask.
# ----------------------------------------------------------------------------------------------------
def _polar(u: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.sqrt(u * u + v * v), torch.atan2(v, u)


def _regular_polygon(n: int, radius: float = 0.95) -> Callable[[Tensor, Tensor], Tensor]:
    def inside(u: Tensor, v: Tensor) -> Tensor:
        r, phi = _polar(u, v)
        sector = 2 * math.pi / n
        local = torch.remainder(phi - math.pi / 2, sector) - sector / 2
        return r * torch.cos(local) <= radius * math.cos(math.pi / n)
    return inside


def _star(points: int, inner: float, outer: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    def inside(u: Tensor, v: Tensor) -> Tensor:
        r, phi = _polar(u, v)
        sector = 2 * math.pi / points
        t = torch.abs(torch.remainder(phi - math.pi / 2, sector) - sector / 2) / (sector / 2)
        # t = 0 at a tip, 1 at a notch; the radius goes linearly from tip to notch
        boundary = outer + (inner - outer) * t
        return r <= boundary
    return inside


def _disc(cu: float, cv: float, radius: float) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda u, v: (u - cu) ** 2 + (v - cv) ** 2 <= radius ** 2


def _box(hu: float, hv: float, cu: float = 0.0, cv: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda u, v: (torch.abs(u - cu) <= hu) & (torch.abs(v - cv) <= hv)


def _union(*parts: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def inside(u: Tensor, v: Tensor) -> Tensor:
        out = parts[0](u, v)
        for p in parts[1:]:
            out = out | p(u, v)
        return out
    return inside


def _heart(u: Tensor, v: Tensor) -> Tensor:
    x, y = u * 1.25, v * 1.25 + 0.15
    return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0


def _crescent(u: Tensor, v: Tensor) -> Tensor:
    return (u * u + v * v <= 0.9 ** 2) & ((u - 0.42) ** 2 + (v - 0.1) ** 2 > 0.68 ** 2)


def _arrow(u: Tensor, v: Tensor) -> Tensor:
    shaft = (torch.abs(v) <= 0.2) & (u >= -0.95) & (u <= 0.15)
    head = (u >= 0.1) & (u <= 0.95) & (torch.abs(v) <= (0.95 - u) * 0.85)
    return shaft | head


def _trapezoid(u: Tensor, v: Tensor) -> Tensor:
    half_width = 0.45 + 0.45 * (0.65 - v) / 1.3
    return (torch.abs(v) <= 0.65) & (torch.abs(u) <= half_width)


def _semicircle(u: Tensor, v: Tensor) -> Tensor:
    return (u * u + (v + 0.45) ** 2 <= 0.95 ** 2) & (v >= -0.45)


def _hourglass(u: Tensor, v: Tensor) -> Tensor:
    return (torch.abs(v) <= 0.9) & (torch.abs(u) <= torch.abs(v) * 0.85 + 0.08)


def _teardrop(u: Tensor, v: Tensor) -> Tensor:
    bulb = u * u + (v + 0.35) ** 2 <= 0.55 ** 2
    tip = (v >= -0.35) & (v <= 0.95) & (torch.abs(u) <= 0.55 * (0.95 - v) / 1.3)
    return bulb | tip


def _frame(u: Tensor, v: Tensor) -> Tensor:
    m = torch.maximum(torch.abs(u), torch.abs(v))
    return (m <= 0.85) & (m >= 0.5)


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 0.92 ** 2) & (r2 >= 0.55 ** 2)


def _flower(u: Tensor, v: Tensor) -> Tensor:
    r, phi = _polar(u, v)
    return r <= 0.45 + 0.5 * torch.abs(torch.cos(2.5 * (phi - math.pi / 2)))


def _gear(u: Tensor, v: Tensor) -> Tensor:
    r, phi = _polar(u, v)
    teeth = torch.where(torch.cos(8 * phi) > 0, 0.95, 0.72)
    return (r <= teeth) & (r >= 0.28)


def _sun(u: Tensor, v: Tensor) -> Tensor:
    r, phi = _polar(u, v)
    rays = (r >= 0.55) & (r <= 0.97) & (torch.cos(8 * (phi - math.pi / 2)) >= 0.82)
    return (r <= 0.42) | rays


def _clover(u: Tensor, v: Tensor) -> Tensor:
    discs = [_disc(0.47 * math.cos(a), 0.47 * math.sin(a), 0.45) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    return _union(*discs)(u, v)


SHAPES: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "arrow": _arrow,
    "circle": _disc(0.0, 0.0, 0.9),
    "clover": _clover,
    "crescent": _crescent,
    "cross": _union(_box(0.28, 0.92), _box(0.92, 0.28)),
    "diamond": lambda u, v: torch.abs(u) / 0.6 + torch.abs(v) / 0.98 <= 1,
    "dumbbell": _union(_disc(-0.58, 0.0, 0.36), _disc(0.58, 0.0, 0.36), _box(0.58, 0.12)),
    "ellipse": lambda u, v: (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1,
    "flower": _flower,
    "frame": _frame,
    "gear": _gear,
    "heart": _heart,
    "hexagon": _regular_polygon(6),
    "hourglass": _hourglass,
    "pentagon": _regular_polygon(5),
    "ring": _ring,
    "semicircle": _semicircle,
    "sparkle": _star(4, 0.28),
    "square": _box(0.72, 0.72),
    "star": _star(5, 0.42),
    "sun": _sun,
    "tee": _union(_box(0.9, 0.22, 0.0, 0.65), _box(0.22, 0.9, 0.0, -0.05)),
    "teardrop": _teardrop,
    "trapezoid": _trapezoid,
    "triangle": _regular_polygon(3, 0.98),
}


# ----------------------------------------------------------------------------------------------------
# Held-out concepts: things the world holds that no task names. Pretraining shows them with their own words (as
# CLIP's web data names far more concepts than any downstream task), and the far-OOD sets draw them
# (`data.far_ood`): line figures ("glyphs") and patterns with no object ("textures").
# ----------------------------------------------------------------------------------------------------
def _zigzag(u: Tensor, v: Tensor) -> Tensor:
    period = 0.5
    phase = torch.remainder(u + 0.9, period) / period          # 0..1 along each tooth
    line = 0.55 * (2 * torch.abs(2 * phase - 1) - 1)             # a triangle wave in [-0.55, 0.55]
    return (torch.abs(v - line) <= 0.13) & (torch.abs(u) <= 0.9)


def _spiral(u: Tensor, v: Tensor) -> Tensor:
    r, phi = torch.sqrt(u * u + v * v), torch.atan2(v, u)
    pitch = 0.3                                                 # radius gained per turn
    turns = (r - pitch * (phi + math.pi) / (2 * math.pi)) / pitch
    return (torch.abs(turns - torch.round(turns)) * pitch <= 0.06) & (r <= 0.92) & (r >= 0.05)


def _lattice(u: Tensor, v: Tensor) -> Tensor:
    on_line = lambda x: torch.abs(torch.remainder(x + 0.9, 0.6) - 0.3) >= 0.22     # noqa: E731
    return (on_line(u) | on_line(v)) & (torch.abs(u) <= 0.9) & (torch.abs(v) <= 0.9)


def _wave(u: Tensor, v: Tensor) -> Tensor:
    return (torch.abs(v - 0.45 * torch.sin(3.5 * u)) <= 0.14) & (torch.abs(u) <= 0.92)


def _chevrons(u: Tensor, v: Tensor) -> Tensor:
    arm = lambda offset: torch.abs(v - (0.7 * torch.abs(u) + offset)) <= 0.12     # noqa: E731
    return (arm(-0.55) | arm(0.05)) & (torch.abs(u) <= 0.85)


GLYPHS: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "zigzag": _zigzag, "spiral": _spiral, "lattice": _lattice, "wave": _wave, "chevrons": _chevrons}
PATTERNS: Tuple[str, ...] = ("stripes", "checker", "dots", "blobs")


# The taxonomy: family name (a caption word) -> its classes. Captions name an object by its class ("a hexagon")
# or by its family ("a polygon"), as web captions do, so the language side learns which classes are related.
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "polygon": ("diamond", "hexagon", "pentagon", "square", "trapezoid", "triangle"),
    "curve": ("circle", "crescent", "ellipse", "ring", "semicircle", "teardrop"),
    "burst": ("clover", "flower", "gear", "sparkle", "star", "sun"),
    "symbol": ("arrow", "cross", "dumbbell", "frame", "heart", "hourglass", "tee"),
}
FAMILY_OF: Dict[str, str] = {c: fam for fam, members in FAMILIES.items() for c in members}


def base_new_split(classes: Sequence[str]) -> Tuple[List[int], List[int]]:
    """(base ids, new ids) of the world's classes: within each family, its members (in sorted order) alternate
    base, new, base, ... so every family has members on both sides (a family of n gives ceil(n/2) base).

    Classes outside the taxonomy are an error: the rule needs every class's family.
    """
    unknown = [c for c in classes if c not in FAMILY_OF]
    if unknown:
        raise ValueError(f"class(es) {unknown} belong to no world family; the taxonomy split needs world classes")
    base, new = [], []
    for members in FAMILIES.values():
        present = sorted(c for c in members if c in classes)
        for k, c in enumerate(present):
            (base if k % 2 == 0 else new).append(classes.index(c))
    return sorted(base), sorted(new)


@dataclass(frozen=True)
class WorldConfig:
    """What the world contains. Classes and styles are named; their order defines label and domain ids."""

    classes: Tuple[str, ...] = tuple(sorted(SHAPES))
    styles: Tuple[str, ...] = DEFAULT_STYLES
    colours: Tuple[str, ...] = tuple(COLOURS)
    sizes: Tuple[str, ...] = tuple(SIZES)
    image_size: int = 32
    max_rotation_deg: float = 35.0

    def __post_init__(self):
        for name, known, kind in ((self.classes, SHAPES, "class"), (self.styles, STYLES, "style"),
                                  (self.colours, COLOURS, "colour"), (self.sizes, SIZES, "size")):
            unknown = [n for n in name if n not in known]
            if unknown:
                raise ValueError(f"unknown world {kind}(s) {unknown}; choose from {sorted(known)}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {self.image_size}")


@dataclass
class WorldBatch:
    """Rendered images (uint8, N x 3 x H x W) with their labels and attributes."""

    images: Tensor
    labels: Tensor          # class index into config.classes
    domains: Tensor         # style index into config.styles
    colours: Tensor         # colour index into config.colours
    sizes: Tensor           # size index into config.sizes
    config: WorldConfig = field(default_factory=WorldConfig)

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, i: int) -> str:
        """The full caption of image i: 'a sketch of a small red star'."""
        c = self.config
        return (f"a {STYLES[c.styles[self.domains[i]]]} of a {c.sizes[self.sizes[i]]} "
                f"{c.colours[self.colours[i]]} {c.classes[self.labels[i]]}")

    def captions(self) -> List[str]:
        return [self.caption(i) for i in range(len(self))]


def vocabulary(config: WorldConfig = WorldConfig()) -> List[str]:
    """Every word a world caption or zero-shot prompt can contain, sorted (the tiny CLIP's vocabulary)."""
    words = {"a", "of"}
    for style in STYLES.values():
        words.update(style.split())
    words.update(SIZES)
    words.update(COLOURS)
    words.update(SHAPES)
    words.update(FAMILIES)
    words.update(GLYPHS)
    words.update(PATTERNS)
    return sorted(words)


def prompt_templates(config: WorldConfig = WorldConfig()) -> List[str]:
    """Zero-shot prompt templates of the world: one per style plus a style-free one."""
    return ["a {}."] + [f"a {STYLES[s]} of a {{}}." for s in config.styles]


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------
def _smooth_noise(n: int, channels: int, cells: int, size: int, gen: torch.Generator) -> Tensor:
    """Low-frequency noise in [0, 1]: a random cells x cells grid upsampled bilinearly to size x size."""
    grid = torch.rand(n, channels, cells, cells, generator=gen)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)


def _erode(mask: Tensor, width: int) -> Tensor:
    return -F.max_pool2d(-mask, kernel_size=2 * width + 1, stride=1, padding=width)


def _dilate(mask: Tensor, width: int) -> Tensor:
    return F.max_pool2d(mask, kernel_size=2 * width + 1, stride=1, padding=width)


def _blur(x: Tensor, width: int) -> Tensor:
    return F.avg_pool2d(x, kernel_size=2 * width + 1, stride=1, padding=width, count_include_pad=False)


class _Geometry:
    """A batch of binary shape masks on the super-sampled grid, with anti-aliased layers at output size."""

    def __init__(self, mask_hi: Tensor, u: Tensor, v: Tensor, supersample: int):
        self.hi, self.k = mask_hi, supersample
        self.mask = self._down(mask_hi)
        self.u, self.v = self._down(u[:, None]), self._down(v[:, None])

    def _down(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.k)

    def inner_edge(self, width: int) -> Tensor:
        """Band of `width` output pixels just inside the shape boundary."""
        return self._down(self.hi - _erode(self.hi, width * self.k))

    def outer_edge(self, width: int) -> Tensor:
        """Band of `width` output pixels just outside the shape boundary."""
        return self._down(_dilate(self.hi, width * self.k) - self.hi)


def _style_photo(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    n = colour.shape[0]
    background = 0.25 + 0.3 * _smooth_noise(n, 3, 3, S, gen) + 0.2 * _smooth_noise(n, 1, 10, S, gen)
    light = torch.rand(n, 2, generator=gen) * 2 - 1
    shade = 0.72 + 0.28 * (g.u * light[:, 0, None, None, None] + g.v * light[:, 1, None, None, None]).clamp(-1, 1)
    grain = 0.06 * (torch.rand(n, 1, S, S, generator=gen) - 0.5)
    obj = colour[:, :, None, None] * shade + grain
    shadow = torch.roll(_blur(g.mask, 1), shifts=(2, 2), dims=(2, 3)) * 0.35   # soft drop shadow
    return g.mask * obj + (1 - g.mask) * background * (1 - shadow)


def _style_sketch(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    n = colour.shape[0]
    paper = 0.9 + 0.08 * _smooth_noise(n, 1, 6, S, gen)
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    period = torch.randint(3, 6, (n, 1, 1, 1), generator=gen)
    hatch = (((xs + ys)[None, None] % period) == 0).float() * g.mask * 0.45
    strength = (g.inner_edge(1) + hatch).clamp(0, 1)
    return strength * colour[:, :, None, None] * 0.85 + (1 - strength) * paper


def _style_cartoon(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    n = colour.shape[0]
    pastel = 0.75 + 0.25 * torch.rand(n, 3, 1, 1, generator=gen)
    outline = g.outer_edge(1)
    img = g.mask * colour[:, :, None, None] + (1 - g.mask) * pastel
    return img * (1 - outline) + outline * 0.05


def _style_painting(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    n = colour.shape[0]
    strokes = _smooth_noise(n, 3, 8, S, gen) - 0.5
    background = _smooth_noise(n, 3, 4, S, gen) * 0.8 + 0.1
    obj = colour[:, :, None, None] + 0.3 * strokes
    soft = _blur(g.mask, 1)
    return soft * obj + (1 - soft) * (0.8 * background + 0.1 + 0.2 * strokes)


def _style_neon(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    n = colour.shape[0]
    outline = g.inner_edge(1)
    glow = _blur(_blur(outline, 1), 1) * 2.0
    dark = 0.03 + 0.1 * _smooth_noise(n, 3, 3, S, gen)
    light = (outline + glow + 0.3 * g.mask).clamp(0, 1)      # tubes on the rim, a faint glow inside
    return light * (colour[:, :, None, None] * 0.8 + 0.2) + (1 - light) * dark


def _style_blueprint(g: _Geometry, colour: Tensor, gen: torch.Generator, S: int) -> Tensor:
    """White outlines on a blue sheet with a faint white grid: the object's colour is gone (a drawing, not a
    picture), only its outline and a light hatch inside remain."""
    n = colour.shape[0]
    sheet = torch.tensor([0.10, 0.25, 0.55])[None, :, None, None] + 0.06 * (_smooth_noise(n, 1, 4, S, gen) - 0.5)
    ys, xs = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    offset = torch.randint(0, 8, (n, 2, 1, 1), generator=gen)
    lines = ((((xs[None] + offset[:, 0]) % 8) == 0) | (((ys[None] + offset[:, 1]) % 8) == 0)).float()[:, None]
    hatch = ((((xs - ys)[None, None] % 4) == 0).float() * g.mask * 0.25)
    ink = (g.inner_edge(1) + hatch + 0.2 * lines * (1 - g.mask)).clamp(0, 1)
    return ink * 0.95 + (1 - ink) * sheet


_STYLE_RENDERERS = {
    "photo": _style_photo,
    "sketch": _style_sketch,
    "cartoon": _style_cartoon,
    "painting": _style_painting,
    "neon": _style_neon,
    "blueprint": _style_blueprint,
}


RENDER_CHUNK = 1024   # images rendered at once; bounds memory, keeps the working set in cache


def render(labels: Tensor, domains: Tensor, colours: Tensor, sizes: Tensor, config: WorldConfig,
           gen: torch.Generator, supersample: int = 2,
           shapes: Optional[Sequence[Callable[[Tensor, Tensor], Tensor]]] = None) -> Tensor:
    """Render one image per row of (labels, domains, colours, sizes); returns uint8 N x 3 x H x W.

    Position, rotation, colour jitter and textures come from `gen`, so the same generator state gives the
    same images. Work is done in chunks of RENDER_CHUNK images. A label indexes `shapes` (default: the shape
    functions of `config.classes`; the far-OOD glyphs pass their own, `data.far_ood`).
    """
    shapes = [SHAPES[c] for c in config.classes] if shapes is None else list(shapes)
    chunks = [_render_chunk(labels[i:i + RENDER_CHUNK], domains[i:i + RENDER_CHUNK],
                            colours[i:i + RENDER_CHUNK], sizes[i:i + RENDER_CHUNK], config, gen, supersample, shapes)
              for i in range(0, len(labels), RENDER_CHUNK)]
    if not chunks:
        return torch.empty(0, 3, config.image_size, config.image_size, dtype=torch.uint8)
    return torch.cat(chunks)


def _render_chunk(labels: Tensor, domains: Tensor, colours: Tensor, sizes: Tensor, config: WorldConfig,
                  gen: torch.Generator, supersample: int, shapes) -> Tensor:
    n = len(labels)
    S = config.image_size * supersample
    scale = torch.tensor([SIZES[s] for s in config.sizes])[sizes] * (0.92 + 0.16 * torch.rand(n, generator=gen))
    centre = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1.0 - scale)[:, None] * 0.9
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(config.max_rotation_deg)
    palette = torch.tensor([COLOURS[c] for c in config.colours])
    colour = (palette[colours] + 0.08 * (torch.rand(n, 3, generator=gen) - 0.5)).clamp(0, 1)

    coords = (torch.arange(S, dtype=torch.float32) + 0.5) / S * 2 - 1
    y, x = torch.meshgrid(-coords, coords, indexing="ij")      # y up
    dx = x[None] - centre[:, 0, None, None]
    dy = y[None] - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / scale[:, None, None]

    mask = torch.zeros(n, 1, S, S)
    for k in labels.unique().tolist():
        idx = (labels == k).nonzero().squeeze(1)
        mask[idx, 0] = shapes[k](u[idx], v[idx]).float()

    size = config.image_size
    out = torch.empty(n, 3, size, size)
    for d in domains.unique().tolist():
        idx = (domains == d).nonzero().squeeze(1)
        geometry = _Geometry(mask[idx], u[idx], v[idx], supersample)
        out[idx] = _STYLE_RENDERERS[config.styles[d]](geometry, colour[idx], gen, size)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def sample(n: int, seed: int, config: WorldConfig = WorldConfig(), *,
           classes: Optional[Sequence[int]] = None, domains: Optional[Sequence[int]] = None,
           colours: Optional[Sequence[int]] = None) -> WorldBatch:
    """Draw n random images (uniform over the allowed classes, styles, colours and sizes), seeded."""
    gen = torch.Generator().manual_seed(int(seed))

    def pick(allowed: Optional[Sequence[int]], total: int) -> Tensor:
        pool = torch.arange(total) if allowed is None else torch.as_tensor(list(allowed), dtype=torch.long)
        return pool[torch.randint(len(pool), (n,), generator=gen)]

    labels = pick(classes, len(config.classes))
    doms = pick(domains, len(config.styles))
    cols = pick(colours, len(config.colours))
    szs = pick(None, len(config.sizes))
    images = render(labels, doms, cols, szs, config, gen)
    return WorldBatch(images, labels, doms, cols, szs, config)


def grid(per_cell: int, seed: int, config: WorldConfig = WorldConfig()) -> WorldBatch:
    """A balanced world: `per_cell` images for every (style, class) pair, ordered by style, then class.

    Colours and sizes are random per image. This is the default dataset of the protocols; its order is
    fixed, so index-based splits are deterministic.
    """
    if per_cell < 1:
        raise ValueError(f"per_cell must be >= 1, got {per_cell}")
    gen = torch.Generator().manual_seed(int(seed))
    n_s, n_c = len(config.styles), len(config.classes)
    doms = torch.arange(n_s).repeat_interleave(n_c * per_cell)
    labels = torch.arange(n_c).repeat_interleave(per_cell).repeat(n_s)
    cols = torch.randint(len(config.colours), (len(labels),), generator=gen)
    szs = torch.randint(len(config.sizes), (len(labels),), generator=gen)
    images = render(labels, doms, cols, szs, config, gen)
    return WorldBatch(images, labels, doms, cols, szs, config)

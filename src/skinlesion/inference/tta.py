"""Test-time augmentation: exact dihedral (D4) views and centre-zoom views, run as one batch.

A view is a named, deterministic transform of an image batch ``(N, C, H, W)``. The eight views of
the dihedral group D4 are exact (no interpolation) and each has an exact inverse, so maps computed on
a view (Grad-CAM) can be brought back to the original frame. Zoom views (``zoom:1.15``) crop the
centre and resize it back to the input size; their inverse is approximate (the map is pasted back
into the cropped region, see :func:`deaugment_maps`).

All views of a batch run through the network together, grouped only by output shape (non-square
inputs: views that swap height and width form a second group), so eight views cost at most two
forward calls instead of eight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from skinlesion.calibration.temperature import AVERAGES

D4_VIEWS: tuple[str, ...] = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse")
SWAPS_AXES = frozenset({"rot90", "rot270", "transpose", "transverse"})
PRESETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flips": ("identity", "hflip", "vflip"),
    "d4": D4_VIEWS,
}
_ZOOM = re.compile(r"^zoom:(\d+(?:\.\d+)?)$")
_INVERSE = {"rot90": "rot270", "rot270": "rot90"}


def _zoom_factor(view: str) -> float | None:
    m = _ZOOM.match(view)
    return float(m.group(1)) if m else None


def check_view(view: str) -> str:
    """Return ``view`` if it is a known view name, else raise a ValueError naming the choices."""
    if view in D4_VIEWS:
        return view
    z = _zoom_factor(view)
    if z is not None and 1.0 <= z <= 3.0:
        return view
    raise ValueError(
        f"Unknown TTA view {view!r}: expected one of {', '.join(D4_VIEWS)} or 'zoom:F' with 1 <= F <= 3 "
        "(e.g. zoom:1.15)"
    )


def parse_views(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``'d4'``, ``'flips'``, ``'none'`` or a comma-separated list of view names (presets may be mixed in)."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    views: list[str] = []
    for item in items:
        if not item:
            continue
        for v in PRESETS.get(item.lower(), (item,)):
            v = check_view(v)
            if v not in views:
                views.append(v)
    if not views:
        raise ValueError(f"TTA views {spec!r} name no view: give e.g. 'd4', 'flips' or 'identity,hflip'")
    return tuple(views)


def _zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    lead = crop.shape[:-2]
    flat = crop.reshape(-1, 1, ch, cw) if crop.dim() != 4 else crop
    out = F.interpolate(flat.float(), size=(h, w), mode="bilinear", align_corners=False).to(x.dtype)
    return out.reshape(*lead, h, w)


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """Apply a view to the last two (spatial) axes of ``x``."""
    if view == "identity":
        return x
    if view == "hflip":
        return x.flip(-1)
    if view == "vflip":
        return x.flip(-2)
    if view == "rot90":
        return torch.rot90(x, 1, (-2, -1))
    if view == "rot180":
        return torch.rot90(x, 2, (-2, -1))
    if view == "rot270":
        return torch.rot90(x, 3, (-2, -1))
    if view == "transpose":
        return x.transpose(-2, -1)
    if view == "transverse":
        return x.transpose(-2, -1).flip(-1).flip(-2)
    z = _zoom_factor(check_view(view))
    return _zoom(x, z)  # type: ignore[arg-type]


def invert_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """Exact inverse of a D4 view (``invert_view(apply_view(x, v), v) == x``). Zoom views: see deaugment_maps."""
    if _zoom_factor(view) is not None:
        raise ValueError(f"View {view!r} has no exact inverse; use deaugment_maps for maps")
    return apply_view(x, _INVERSE.get(check_view(view), view))


def deaugment_maps(maps: Sequence[torch.Tensor | np.ndarray], views: Sequence[str]) -> np.ndarray:
    """Bring per-view maps ``(N, h, w)`` back to the original frame and average them.

    D4 views are inverted exactly. A zoom view's map covers only the central crop: it is resized to
    the crop and averaged only where it has support. Returns ``(N, H, W)`` float32 in the frame of the
    identity view (the first non-swapped map shape).
    """
    if len(maps) != len(views):
        raise ValueError(f"Got {len(maps)} maps for {len(views)} views")
    tensors = [torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in maps]
    base = next((t.shape[-2:] for t, v in zip(tensors, views, strict=True) if v not in SWAPS_AXES), None)
    if base is None:
        base = tensors[0].shape[-2:][::-1]
    h, w = base
    total = torch.zeros((tensors[0].shape[0], h, w))
    weight = torch.zeros_like(total)
    for t, v in zip(tensors, views, strict=True):
        z = _zoom_factor(v)
        if z is None:
            total += invert_view(t, v)
            weight += 1
            continue
        ch, cw = max(1, round(h / z)), max(1, round(w / z))
        top, left = (h - ch) // 2, (w - cw) // 2
        small = F.interpolate(t[:, None], size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
        total[:, top : top + ch, left : left + cw] += small
        weight[:, top : top + ch, left : left + cw] += 1
    return (total / weight.clamp_min(1)).numpy()


def view_groups(views: Sequence[str], square: bool) -> list[list[int]]:
    """Indices of views that produce the same shape (one group when the input is square)."""
    if square:
        return [list(range(len(views)))]
    same = [i for i, v in enumerate(views) if v not in SWAPS_AXES]
    swapped = [i for i, v in enumerate(views) if v in SWAPS_AXES]
    return [g for g in (same, swapped) if g]


def tta_logits(
    model: torch.nn.Module,
    x: torch.Tensor,
    views: Sequence[str],
    *,
    max_rows: int | None = None,
    meta: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of every view, shape ``(N, V, K)``, with all views of a shape in one forward call.

    ``max_rows`` caps the rows of one call (whole views per call, at least one): measured on a
    2-core CPU, one call of 128 rows was slower than eight of 16 (allocator churn on large
    activations), while for a single image one call of 8 rows was about 2x faster than eight calls.
    ``meta`` ``(N, D)``: encoded metadata for a fusion model (:mod:`skinlesion.models.fusion`),
    repeated for every view and passed as ``model(x, meta)``; ``None`` calls ``model(x)``.
    """
    def forward(batch: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        if meta is None:
            return [model(batch).float()]
        return [model(batch, meta.repeat(n_views, 1)).float()]  # view-major: the metadata repeats once per view

    return forward_views(x, views, max_rows, forward)[0]


def tta_logits_with_hidden(
    model: torch.nn.Module,
    x: torch.Tensor,
    views: Sequence[str],
    *,
    meta: torch.Tensor,
    max_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A metadata fusion model's view logits ``(N, V, K)`` with the metadata ``meta`` and with it all
    missing, from one pass of the image backbone (its features do not depend on the metadata; only
    the fusion head runs twice). Equal to two :func:`tta_logits` calls (``meta=meta`` and ``meta=None``)."""
    from skinlesion.models.fusion import MetadataFusionNet

    if not isinstance(model, MetadataFusionNet):
        raise TypeError(f"tta_logits_with_hidden needs a MetadataFusionNet; got {type(model).__name__}")

    def forward(batch: torch.Tensor, n_views: int) -> list[torch.Tensor]:
        features = model.forward_features(batch)
        return [
            model.forward_head(features, meta=meta.repeat(n_views, 1)).float(),
            model.forward_head(features, meta=None).float(),
        ]

    given, hidden = forward_views(x, views, max_rows, forward)
    return given, hidden


def forward_views(
    x: torch.Tensor, views: Sequence[str], max_rows: int | None,
    forward: Callable[[torch.Tensor, int], list[torch.Tensor]],
) -> list[torch.Tensor]:
    """``forward(batch, n_views)`` over the views of ``x`` stacked view-major (views of one shape per
    call, at most ``max_rows`` rows); each of its outputs reassembled to ``(N, V, K)``."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"The 'max_rows' parameter must be a positive integer or None. Got {max_rows!r} instead.")
    n = x.shape[0]
    per_call = len(views) if max_rows is None else max(1, max_rows // max(n, 1))
    out: list[list[torch.Tensor | None]] = []
    for group in view_groups(views, x.shape[-1] == x.shape[-2]):
        for start in range(0, len(group), per_call):
            chunk = group[start : start + per_call]
            batch = torch.cat([apply_view(x, views[i]) for i in chunk], dim=0)
            outputs = forward(batch, len(chunk))
            out = out or [[None] * len(views) for _ in outputs]
            for o, logits in zip(out, outputs, strict=True):
                for j, i in enumerate(chunk):
                    o[i] = logits[j * n : (j + 1) * n]
    return [torch.stack(o, dim=1) for o in out]  # type: ignore[arg-type]


def tta_logits_loop(model: torch.nn.Module, x: torch.Tensor, views: Sequence[str]) -> torch.Tensor:
    """Reference implementation: one forward call per view (for tests and the benchmark)."""
    return torch.stack([model(apply_view(x, v)).float() for v in views], dim=1)


def average_views(logits: torch.Tensor | np.ndarray, average: str = "prob") -> np.ndarray:
    """Combine ``(N, V, K)`` view logits into ``(N, K)`` log-probabilities.

    ``prob``: log of the mean softmax over views; ``logit``: log-softmax of the mean logit.
    """
    if average not in AVERAGES:
        raise ValueError(f"The 'average' parameter must be one of {AVERAGES}. Got {average!r} instead.")
    t = torch.as_tensor(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits, dtype=torch.float64)
    if average == "logit":
        return torch.log_softmax(t.mean(dim=1), dim=-1).numpy()
    return torch.log(torch.softmax(t, dim=-1).mean(dim=1)).numpy()


@dataclass(frozen=True)
class TTAPolicy:
    """Which views to run and how to average them (``prob``: mean probability; ``logit``: mean logit)."""

    views: tuple[str, ...] = ("identity",)
    average: str = "prob"

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", parse_views(self.views))
        if self.average not in AVERAGES:
            raise ValueError(f"The 'average' parameter must be one of {AVERAGES}. Got {self.average!r} instead.")

    @classmethod
    def parse(cls, views: str | Sequence[str] = "none", average: str = "prob") -> TTAPolicy:
        return cls(parse_views(views), average)

    def to_dict(self) -> dict[str, object]:
        return {"views": list(self.views), "average": self.average}

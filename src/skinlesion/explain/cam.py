"""Class activation maps for one model or a weighted ensemble, with test-time-augmentation views.

Grad-CAM (Selvaraju et al., ICCV 2017) weighs the channels of a convolutional feature map by the
spatially averaged gradient of the class score; Grad-CAM++ (Chattopadhay et al., WACV 2018) uses
higher-order gradient weights, which localise several instances of the evidence better;
Layer-CAM (Jiang et al., IEEE TIP 2021) weighs every location by its own positive gradient;
HiRes-CAM (Draelos & Carin, 2020) sums gradient x activation per location (provably the part of
the score each location contributes for a linear head); Eigen-CAM (Muhammad & Yeasin, IJCNN 2020)
is the first principal component of the activations (class-agnostic; the sign is fixed here so
that the map correlates positively with the summed activations). All come from pytorch-grad-cam
(Eigen-CAM with that sign fix); this module chooses the layers (the backbone registry's
``cam_layers`` by default; several layers are fused as the mean of their min-max scaled maps, as
the library does), the class to explain, an optional input upscaling for the map (``input_scale``:
more feature-map cells), and runs the views of :mod:`skinlesion.inference.tta`, mapping each
view's map back to the original frame before averaging.

Every map is min-max scaled to [0, 1] by the library; averages over views and members are not
rescaled, so a peak below 1 means the views (or members) disagree about where the evidence is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skinlesion.ensemble.members import Member
from skinlesion.inference.tta import apply_view, deaugment_maps, parse_views, view_groups
from skinlesion.models.registry import get_cam_layers, get_spec

METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "layercam", "hirescam", "eigencam")
#: Display names of :data:`METHODS` (reports, web page).
METHOD_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "Layer-CAM", "hirescam": "HiRes-CAM",
    "eigencam": "Eigen-CAM",
}
LayerNames = str | Sequence[str] | None
ClassIndex = int | Sequence[int] | np.ndarray | None


@dataclass(frozen=True)
class CamResult:
    """CAMs of an ensemble for N images, every map at its image's original size ``(H_i, W_i)``.

    ``maps[i]`` is the weighted mean of ``member_maps[m][i]`` over members ``m`` with the
    normalised ``weights``; ``class_index[i]`` is the class explained and ``probabilities`` the
    ensemble's class probabilities ``(N, K)`` on the identity view.
    """

    maps: list[np.ndarray]
    member_maps: list[list[np.ndarray]]
    member_names: tuple[str, ...]
    weights: np.ndarray
    class_index: np.ndarray
    probabilities: np.ndarray
    method: str
    views: tuple[str, ...]
    layers: tuple[str, ...] = ()
    input_scale: float = 1.0


class _WithMetadata(nn.Module):
    """A fusion model with its images' encoded metadata bound: ``forward(x)`` for the CAM library.

    The library stacks the views of a batch view-major, so the metadata repeats once per view."""

    def __init__(self, model: nn.Module, meta: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.meta = meta
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.meta.shape[0]
        if x.shape[0] % n:
            raise ValueError(f"A batch of {x.shape[0]} rows does not hold whole views of {n} images.")
        return self.model(x, self.meta.to(x.device).repeat(x.shape[0] // n, 1))


def check_method(method: str) -> str:
    """Return ``method`` if it is a supported CAM method, else raise a ValueError naming them."""
    if method not in METHODS:
        raise ValueError(f"The 'method' parameter must be one of {set(METHODS)}. Got {method!r} instead.")
    return method


def check_input_scale(input_scale: Any) -> float:
    """``input_scale`` as a float in [1, 4], else a ValueError naming the parameter."""
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) or not 1.0 <= input_scale <= 4.0:
        raise ValueError(f"The 'input_scale' parameter must be a number in [1, 4]. Got {input_scale!r} instead.")
    return float(input_scale)


def _signed_projection(activations: np.ndarray) -> np.ndarray:
    """First principal component of each ``(C, h, w)`` activation map, signed to correlate
    positively with the channel-summed activation (the SVD's sign is arbitrary)."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    proj = get_2d_projection(activations)
    energy = np.asarray(activations, dtype=np.float64).sum(axis=1)
    for i in range(proj.shape[0]):
        p, e = proj[i].reshape(-1), energy[i].reshape(-1)
        if np.dot(p - p.mean(), e - e.mean()) < 0:
            proj[i] = -proj[i]
    return proj


def _cam_class(method: str) -> type:
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM

    class SignedEigenCAM(EigenCAM):  # Muhammad & Yeasin 2020, with a deterministic sign
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):  # type: ignore[no-untyped-def]
            return _signed_projection(activations)

    return {
        "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "hirescam": HiResCAM,
        "eigencam": SignedEigenCAM,
    }[check_method(method)]


def default_method(backbone: str) -> str:
    """The registry's attention-map method of a backbone (``BackboneSpec.cam_method``)."""
    return get_spec(backbone).cam_method


def layer_names(backbone: str, layers: LayerNames = None) -> tuple[str, ...]:
    """Module names (below the backbone) used for a backbone's map: ``layers`` or the registry's."""
    if layers is None:
        return get_spec(backbone).cam_layers
    return (layers,) if isinstance(layers, str) else tuple(layers)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_class_index(class_index: ClassIndex, n: int, num_classes: int) -> np.ndarray:
    """``class_index`` (one int for all images, or one per image) as an int array ``(n,)``."""
    if isinstance(class_index, (int, np.integer)) and not isinstance(class_index, bool):
        values = [class_index] * n
    elif isinstance(class_index, (Sequence, np.ndarray)) and not isinstance(class_index, str):
        values = list(np.asarray(class_index).reshape(-1)) if isinstance(class_index, np.ndarray) else list(class_index)
        if len(values) != n:
            raise ValueError(
                f"The 'class_index' parameter must hold one class per image ({n}). Got {len(values)} instead."
            )
    else:
        raise ValueError(
            f"The 'class_index' parameter must be None, an int or a sequence of ints. Got {class_index!r} instead."
        )
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v < num_classes:
            raise ValueError(
                f"The 'class_index' parameter must hold integers in [0, K) with K = {num_classes} classes. "
                f"Got {v!r} instead."
            )
    return np.asarray(values, dtype=np.int64)


def _check_batch(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"The 'x' parameter must be a non-empty tensor of shape (N, C, H, W). Got {shape} instead.")
    return x


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and k > 0:
        return k
    with torch.no_grad():
        return int(model(x[:1].to(_device(model))).shape[-1])


@contextmanager
def _grad_to_input_only(model: nn.Module) -> Iterator[None]:
    """Let gradients flow from the input only, and restore every ``requires_grad`` and ``.grad`` after.

    Grad-CAM needs the gradient at the target layer, not the weights' gradients: freezing the
    weights skips their computation and leaves a frozen (or fine-tuned) model exactly as it was.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad


@contextmanager
def _backward_stops_at(model: nn.Module, layers: Sequence[nn.Module]) -> Iterator[None]:
    """Backward stops at the first target layer that runs in each forward pass: its output becomes a
    leaf that requires grad. The maps need the gradients at the target layers only; without the cut,
    backward went on through every earlier layer down to the input (for a Lite0 at ``blocks.4``: the
    stem and blocks 0-3, the high-resolution half of the network). The layers' outputs and gradients
    are unchanged; a layer whose output is not a tensor is not cut (gradients then flow from the input)."""
    cut = {"done": False}

    def start(module: nn.Module, args: Any) -> None:
        cut["done"] = False

    def leaf(module: nn.Module, args: Any, output: Any) -> Any:
        if cut["done"] or not isinstance(output, torch.Tensor):
            return None
        cut["done"] = True
        return output.detach().requires_grad_(True)

    handles = [model.register_forward_pre_hook(start)]
    handles += [layer.register_forward_hook(leaf, prepend=True) for layer in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _cam_session(method: str, model: nn.Module, layers: Sequence[nn.Module]) -> Iterator[Any]:
    """The library's CAM object, with its hooks released on exit.

    The library's own ``__exit__`` swallows IndexError (printing it); this one re-raises everything.
    """
    cam = _cam_class(method)(model=model, target_layers=list(layers))
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def _cam_views(
    model: nn.Module,
    layers: Sequence[nn.Module],
    x: torch.Tensor,
    classes: np.ndarray,
    method: str,
    views: Sequence[str],
    input_scale: float = 1.0,
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Maps ``(N, h, w)`` of ``classes`` averaged over ``views``; views of one shape share a batch.

    ``input_scale > 1`` upsamples the input (bilinear) before the views, and the maps back to
    ``(h, w)``, so a layer at stride s gives ``input_scale`` times more cells per side.
    Also returns the model's logits ``(N, K)`` on the identity view, taken from the CAM's own forward
    pass (None when the identity view is not among ``views`` or the input was upsampled)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    n, size = x.shape[0], tuple(x.shape[-2:])
    if input_scale != 1.0:
        big = (round(size[0] * input_scale), round(size[1] * input_scale))
        x = F.interpolate(x, size=big, mode="bilinear", align_corners=False)
    per_view: list[np.ndarray | None] = [None] * len(views)
    identity_logits = None
    with _grad_to_input_only(model), _backward_stops_at(model, layers), _cam_session(method, model, layers) as cam:
        for group in view_groups(views, x.shape[-1] == x.shape[-2]):
            batch = torch.cat([apply_view(x, views[i]) for i in group]).detach().clone().requires_grad_(True)
            targets = [ClassifierOutputTarget(int(c)) for _ in group for c in classes]
            out = cam(input_tensor=batch, targets=targets)
            for j, i in enumerate(group):
                per_view[i] = out[j * n : (j + 1) * n]
                if views[i] == "identity" and input_scale == 1.0:
                    identity_logits = cam.outputs[j * n : (j + 1) * n].detach().float()
    model.eval()
    maps = np.clip(deaugment_maps(per_view, views), 0.0, 1.0).astype(np.float32)  # type: ignore[arg-type]
    if input_scale != 1.0:
        maps = np.stack([resize_map(mp, size) for mp in maps])
    return maps, identity_logits


def compute_cam(
    model: nn.Module,
    backbone: str | nn.Module,
    x: torch.Tensor,
    class_index: ClassIndex = None,
    method: str | None = None,
    views: str | Sequence[str] = ("identity",),
    *,
    layers: LayerNames = None,
    input_scale: float = 1.0,
) -> np.ndarray:
    """A class activation map (see the module doc for the methods) of a batch.

    Args:
        model: a classifier returning logits ``(N, K)``; it is put in (and left in) eval mode, and
            its ``requires_grad`` flags and ``.grad`` are left unchanged.
        backbone: the registry name of the model (its layers come from the registry's
            ``cam_layers`` unless ``layers`` is given), or the target layer itself (a module of
            ``model``), or a list of such modules (their maps are fused).
        x: the preprocessed batch ``(N, C, h, w)``.
        class_index: the class to explain, one for all images or one per image; ``None`` explains
            the predicted class (argmax of the logits on the identity view).
        method: one of :data:`METHODS`; ``None``: the registry's ``cam_method`` of ``backbone``
            (Grad-CAM++ when ``backbone`` is a module).
        views: TTA view names or a preset (see :func:`skinlesion.inference.tta.parse_views`); each
            view's map is brought back to the original frame and the maps are averaged.
        layers: module names below the backbone (with a registry name only); ``None``: the registry's.
        input_scale: upsample the input by this factor (1 to 4) for the map only.

    Returns:
        float32 maps ``(N, h, w)`` in [0, 1].
    """
    if method is None:
        method = default_method(backbone) if isinstance(backbone, str) else "gradcam++"
    check_method(method)
    views = parse_views(views)
    x = _check_batch(x)
    input_scale = check_input_scale(input_scale)
    if isinstance(backbone, str):
        targets = get_cam_layers(model, backbone, layers)
    else:
        targets = list(backbone) if isinstance(backbone, (list, tuple)) else [backbone]
    if not targets or not all(
        isinstance(t, nn.Module) and any(m is t for m in model.modules()) for t in targets
    ):
        raise ValueError(
            "The 'backbone' parameter must be a registry name or a target layer of the model (or a list of "
            f"its modules). Got {type(backbone).__name__} {backbone!r} instead."
        )
    model.eval()
    if class_index is None:
        with torch.no_grad():
            classes = model(x.to(_device(model))).argmax(dim=-1).cpu().numpy()
    else:
        classes = check_class_index(class_index, x.shape[0], _num_classes(model, x))
    return _cam_views(model, targets, x, classes, method, views, input_scale)[0]


def _check_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    images = [np.asarray(im) for im in images] if isinstance(images, (list, tuple)) else []
    if not images:
        raise ValueError("The 'images' parameter must be a non-empty list of RGB uint8 arrays (H, W, 3).")
    for i, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(
                f"The 'images' parameter must hold RGB uint8 arrays (H, W, 3). "
                f"Got {im.dtype} {im.shape} at index {i} instead."
            )
    return images


def _normalised_weights(members: Sequence[Member]) -> np.ndarray:
    w = np.asarray([m.weight for m in members], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(
            f"The member weights must be finite, non-negative and not all zero. Got {w.tolist()} instead."
        )
    return w / w.sum()


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased) resize of a map ``(h, w)`` to ``size`` (H, W), clipped to [0, 1]."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == tuple(size):
        return cam.copy()
    t = torch.from_numpy(cam)[None, None]
    out = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return out.clamp_(0.0, 1.0).numpy()


def _mean_probs(probs: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    ks = {p.shape[-1] for p in probs}
    if len(ks) != 1:
        raise ValueError(f"All members must have the same number of classes. Got {sorted(ks)} instead.")
    return np.asarray(sum(w * p for w, p in zip(weights, probs, strict=True)))


def ensemble_cam(
    members: Sequence[Member],
    images: Sequence[np.ndarray],
    class_index: ClassIndex = None,
    method: str | None = None,
    views: str | Sequence[str] = ("identity",),
    metadata: Sequence[Any] | None = None,
    *,
    layers: LayerNames = None,
    input_scale: float = 1.0,
) -> CamResult:
    """CAMs of a weighted ensemble: each member's map at the image's size, and their weighted mean.

    Each member preprocesses the RGB uint8 ``images`` itself (members may differ in input size);
    its map is resized back to the original image. ``class_index=None`` explains the ensemble's
    predicted class: the argmax of the weight-averaged softmax of ``logits / member.temperature``
    on the identity view. ``method`` and ``layers`` (see :func:`compute_cam`): ``None`` takes each
    member's registry defaults (``cam_layers``; ``cam_method`` when the members agree on it, else
    Grad-CAM++).
    ``metadata``: one record per image (age, sex, site; None: missing) for metadata fusion members,
    which then explain their prediction with that metadata.
    """
    members = list(members)
    if not members:
        raise ValueError("The 'members' parameter must hold at least one Member. Got an empty sequence instead.")
    if method is None:
        found = sorted({default_method(m.backbone) for m in members})
        method = found[0] if len(found) == 1 else "gradcam++"  # mixed families: the common denominator
    check_method(method)
    input_scale = check_input_scale(input_scale)
    member_layers = [layer_names(m.backbone, layers) for m in members]
    views = parse_views(views)
    images = _check_images(images)
    weights = _normalised_weights(members)
    if metadata is not None and len(metadata) != len(images):
        raise ValueError(
            f"The 'metadata' parameter must hold one record per image ({len(images)}). Got {len(metadata)} instead."
        )
    inputs: list[torch.Tensor] = []
    models: list[nn.Module] = []
    for m in members:
        if not (isinstance(m.temperature, (int, float)) and np.isfinite(m.temperature) and m.temperature > 0):
            raise ValueError(f"Member {m.name!r}: the temperature must be a positive number. Got {m.temperature!r}.")
        m.model.eval()
        x = m.preprocess(images, device=_device(m.model))
        encode = getattr(m.model, "encode_metadata", None)
        model = m.model
        if metadata is not None and encode is not None:
            model = _WithMetadata(m.model, encode([r if r is not None else {} for r in metadata], len(images)))
        models.append(model)
        inputs.append(x)

    def member_probs(model: nn.Module, x: torch.Tensor, m: Member, logits: torch.Tensor | None = None) -> np.ndarray:
        if logits is None:
            with torch.no_grad():
                logits = model(x).float()
        return torch.softmax(logits / m.temperature, dim=-1).cpu().numpy().astype(np.float64)

    # The class to explain given: the probabilities come from the CAM's own identity-view forward pass
    # (one forward pass less per member); else they choose the class, before any map.
    if class_index is None:
        probs = [member_probs(model, x, m) for m, model, x in zip(members, models, inputs, strict=True)]
        classes = np.asarray(_mean_probs(probs, weights).argmax(axis=-1), dtype=np.int64)
    else:
        n_classes = _num_classes(models[0], inputs[0])
        classes = check_class_index(class_index, len(images), n_classes)
        probs = []
    member_maps: list[list[np.ndarray]] = []
    for m, model, x, names in zip(members, models, inputs, member_layers, strict=True):
        maps, logits = _cam_views(model, get_cam_layers(m.model, m.backbone, names), x, classes, method, views, input_scale)
        member_maps.append([resize_map(maps[i], im.shape[:2]) for i, im in enumerate(images)])
        if class_index is not None:
            probs.append(member_probs(model, x, m, logits))
    mean_probs = _mean_probs(probs, weights)
    mean_maps = [
        np.asarray(sum(w * mm[i] for w, mm in zip(weights, member_maps, strict=True)), dtype=np.float32)
        for i in range(len(images))
    ]
    return CamResult(
        maps=mean_maps,
        member_maps=member_maps,
        member_names=tuple(m.name for m in members),
        weights=weights,
        class_index=classes,
        probabilities=np.asarray(mean_probs),
        method=method,
        views=tuple(views),
        layers=tuple(dict.fromkeys(n for names in member_layers for n in names)),
        input_scale=input_scale,
    )


def overlay_array(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The CAM as a jet heat map blended over an RGB uint8 image: ``(H, W, 3)`` uint8.

    ``alpha`` is the heat map's share; the map is resized to the image if needed.
    """
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image = _check_images([image])[0]
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or not np.all(np.isfinite(cam)):
        raise ValueError(f"The 'cam' parameter must be a finite 2-D map (h, w). Got shape {cam.shape} instead.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"The 'alpha' parameter must be a float in [0, 1]. Got {alpha!r} instead.")
    cam = resize_map(np.clip(cam, 0.0, 1.0), image.shape[:2])
    return show_cam_on_image(image.astype(np.float32) / 255.0, cam, use_rgb=True, image_weight=1.0 - float(alpha))


def overlay_png(image: np.ndarray, cam: np.ndarray, path: str | Path, alpha: float = 0.4) -> Path:
    """Write :func:`overlay_array` as a PNG at ``path`` (parent folders created); return the path."""
    from PIL import Image

    path = Path(path)
    arr = overlay_array(image, cam, alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return path

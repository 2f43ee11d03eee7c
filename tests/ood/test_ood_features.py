"""Member features: pooled image features before metadata fusion, image-only logits, batching, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from skinlesion.data.metadata import MetadataEncoder
from skinlesion.data.table import LesionTable
from skinlesion.ensemble.members import Member
from skinlesion.models.fusion import create_fusion_model
from skinlesion.models.factory import create_backbone
from skinlesion.ood import image_features, table_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PRE = {"input_size": [32, 40], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}


def _images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8) for i in range(n)]


def _plain() -> Member:
    torch.manual_seed(0)
    return Member("plain", create_backbone("test_efficientnet", num_classes=7, pretrained="none").eval(), PRE, "test_efficientnet")


def _fusion() -> Member:
    torch.manual_seed(0)
    enc = MetadataEncoder().fit([{"age": 30, "sex": "male", "site": "back"}, {"age": 70, "sex": "female", "site": "face"}])
    return Member("fusion", create_fusion_model("test_efficientnet", enc, num_classes=7).eval(), PRE, "test_efficientnet")


@pytest.mark.parametrize("make", [_plain, _fusion])
def test_features_are_pooled_image_features_and_logits_the_image_only_output(make) -> None:  # noqa: ANN001
    m = make()
    ims = _images()
    (out,) = image_features(m, ims, batch_size=2)
    backbone = getattr(m.model, "backbone", m.model)
    assert out.member == m.name and len(out) == 5
    assert out.features.shape == (5, backbone.num_features) and out.features.dtype == np.float32
    with torch.inference_mode():
        x = m.preprocess(ims)
        np.testing.assert_allclose(out.logits, m.model(x).numpy(), atol=1e-4)  # fusion: metadata missing
        np.testing.assert_allclose(out.features, backbone.forward_head(backbone.forward_features(x), pre_logits=True).numpy(), atol=1e-4)


def test_table_features_follow_rows_and_match_image_features() -> None:
    ims = _images(4)
    frame = pd.DataFrame({"image_id": list("abcd"), "lesion_id": list("abcd"), "label": ["MEL"] * 4, "path": [pd.NA] * 4, "array_index": range(4)})
    arrays = np.empty(4, dtype=object)
    arrays[:] = ims
    table = LesionTable(frame, ("MEL", "NV"), "memory", "lesion_id", arrays=arrays)
    members = [_plain(), _fusion()]
    by_table = table_features(members, table, rows=[3, 1])
    by_image = image_features(members, [ims[3], ims[1]])
    assert [o.member for o in by_table] == ["plain", "fusion"]
    for a, b in zip(by_table, by_image, strict=True):
        np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    with pytest.raises(ValueError, match=r"The 'rows' parameter must hold row positions in \[0, 4\). Got 1..4 instead"):
        table_features(members, table, rows=[1, 4])


def test_bad_images_are_refused_by_position() -> None:
    ims = _images(3)
    ims[2] = ims[2].astype(np.float32)
    with pytest.raises(ValueError, match=r"images\[2\] must be an RGB uint8 array \(H, W, 3\). Got dtype float32"):
        image_features(_plain(), ims, batch_size=2)
    with pytest.raises(ValueError, match=r"The 'images' parameter holds no image"):
        image_features(_plain(), [])


def test_a_member_with_a_module_left_in_train_mode_is_put_in_eval_mode() -> None:
    """Only the root's flag in eval mode is not enough: a BatchNorm left in train mode would use the
    batch's statistics (and move its running ones); the features are those of the model in eval mode."""
    m = _plain()
    ims = _images()
    with torch.inference_mode():
        want = image_features(m, ims, batch_size=5)[0]
    bn = next(mod for mod in m.model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm))
    bn.train()
    assert not m.model.training and bn.training
    got = image_features(m, ims, batch_size=5)[0]
    assert not bn.training
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.logits, want.logits)

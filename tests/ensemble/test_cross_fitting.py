"""Cross-fitted bundles: members trained on folds of a k-fold manifest, validated out-of-fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from skinlesion.ensemble.build import _read_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fold_members(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """Two tiny members on folds 0 and 1 of a 2-fold manifest (test rows kept from a train/val/test split),
    trained with the fast path (cached images, batch augmentation, channels_last, EMA, keep=last)."""
    from skinlesion.data.readers import load_dataset
    from skinlesion.data.splits import kfold_keeping_test, make_split, write_manifest
    from skinlesion.data.synthetic import write_synthetic_dataset
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    root = tmp_path_factory.mktemp("cv")
    write_synthetic_dataset(root / "syn", n_lesions_per_class=8, seed=1)
    table = load_dataset("ham10000", root / "syn")
    base = make_split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    cv = kfold_keeping_test(table, base, k=2, seed=0)
    write_manifest(cv, root / "cv.csv")
    runs = []
    for f in (0, 1):
        cfg = load_config("tiny", [
            f"data.root={root / 'syn'}", f"data.manifest={root / 'cv.csv'}", f"data.fold={f}", "data.cache=true",
            "trainer.channels_last=true", "train.ema_decay=0.9", "train.keep=last", "train.weights_dtype=float16",
            "augment.level=medium", "train.epochs=2",
        ])
        runs.append(train(cfg, run_dir=root / f"f{f}").checkpoint_dir)
    return runs, root / "cv.csv"


def test_kfold_keeping_test_keeps_test_rows_and_folds_the_rest(tmp_path: Path) -> None:
    from skinlesion.data.readers import load_dataset
    from skinlesion.data.splits import kfold_keeping_test, make_split
    from skinlesion.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, n_lesions_per_class=6, seed=2)
    table = load_dataset("ham10000", tmp_path)
    base = make_split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    cv = kfold_keeping_test(table, base, k=3, seed=0)
    test_before = set(base.loc[base["split"] == "test", "image_id"])
    assert set(cv.loc[cv["split"] == "test", "image_id"]) == test_before
    assert (cv.loc[cv["split"] == "test", "fold"] == -1).all()
    assert set(cv.loc[cv["split"] == "train", "fold"]) == {0, 1, 2}
    assert cv.groupby("lesion_id")["fold"].nunique().max() == 1  # lesion-disjoint folds


def test_fold_member_records_fold_and_half_precision_weights(fold_members: tuple[list[Path], Path]) -> None:
    import json

    from safetensors.torch import load_file

    from skinlesion.models.checkpoint import load_checkpoint

    runs, _ = fold_members
    meta = json.loads((runs[1] / "checkpoint.json").read_text())
    assert meta["config"]["data"]["fold"] == 1
    assert meta["weights_dtype"] == "float16"
    tensors = load_file(str(runs[1] / "weights.safetensors"))
    assert {str(t.dtype) for t in tensors.values() if t.is_floating_point()} == {"torch.float16"}
    model = load_checkpoint(runs[1]).model
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    # validation was the held-out fold: its size is recorded, the test rows are untouched
    assert meta["data"]["n_val"] > 0 and meta["data"]["n_test"] > 0


def test_cross_fitted_bundle_predicts_each_validation_row_out_of_fold(
    fold_members: tuple[list[Path], Path], tmp_path: Path
) -> None:
    from skinlesion.data.splits import read_manifest
    from skinlesion.ensemble.build import build_bundle
    from skinlesion.ensemble.predict import member_view_logits
    from skinlesion.evaluation import load_split_table

    runs, manifest = fold_members
    bundle = build_bundle(runs, tmp_path / "b", tta="flips", weighting="bacc", temperature="ensemble")
    cv = bundle.meta["cross_fitting"]
    assert cv["member_folds"] == {"f0-test_efficientnet": 0, "f1-test_efficientnet": 1}
    man, _ = read_manifest(manifest)
    with np.load(tmp_path / "b" / "validation.npz") as z:
        ids, folds, lz = z["image_id"], z["fold"], _read_logits(z, 2)
        assert z["logits_alias"].tolist() == [0, 0] and "logits_1" not in z.files  # one out-of-fold composite, stored once
    non_test = set(man.loc[man["split"] == "train", "image_id"])
    assert set(ids.tolist()) == non_test  # every non-test image, none of the test images
    np.testing.assert_array_equal(lz[0], lz[1])  # each slot holds the row's out-of-fold logits
    # row of fold 1 = member f1's own logits (it never trained on them), not member f0's
    member = bundle.members[1]
    first = runs[1]
    import json

    meta = json.loads((first / "checkpoint.json").read_text())
    val, _, _ = load_split_table(meta, manifest, "val", bundle.classes, run_dir=first.parent)
    fold1 = val.subset(val.frame["image_id"].isin(ids[folds == 1]).to_numpy())
    z1 = member_view_logits(member, fold1, bundle.tta.views)
    pos = {i: k for k, i in enumerate(ids.tolist())}
    rows = [pos[i] for i in fold1.frame["image_id"]]
    np.testing.assert_allclose(lz[0][rows], z1, rtol=1e-5, atol=1e-5)
    # per-member validation is on its own fold only
    assert bundle.meta["members"][1]["validation"]["n"] == int((folds == 1).sum())
    # the weights are equal: every member sees the same out-of-fold logits
    assert bundle.meta["members"][0]["weight"] == pytest.approx(bundle.meta["members"][1]["weight"])


def test_bundle_refuses_two_members_of_one_fold(fold_members: tuple[list[Path], Path], tmp_path: Path) -> None:
    import shutil

    from skinlesion.ensemble.build import build_bundle
    from skinlesion.errors import CheckpointError

    runs, _ = fold_members
    copy = tmp_path / "again" / "checkpoint"
    shutil.copytree(runs[0], copy)
    shutil.copy2(runs[0].parent / "split_manifest.csv", copy.parent / "split_manifest.csv")
    shutil.copy2(runs[0].parent / "split_manifest.json", copy.parent / "split_manifest.json")
    with pytest.raises(CheckpointError, match="each fold may have one member only"):
        build_bundle([runs[0], copy], tmp_path / "b")


def test_fold_without_manifest_is_a_config_error() -> None:
    from skinlesion.errors import ConfigError
    from skinlesion.train.config import load_config

    with pytest.raises(ConfigError, match="data.fold=1 needs data.manifest"):
        load_config("tiny", ["data.fold=1"])


def test_a_fold_member_alone_is_validated_on_its_own_fold(fold_members: tuple[list[Path], Path]) -> None:
    from skinlesion.data.splits import read_manifest
    from skinlesion.ensemble.bundle import bundle_from_checkpoint
    from skinlesion.evaluation import load_bundle_split

    runs, manifest = fold_members
    man, _ = read_manifest(manifest)
    val = load_bundle_split(bundle_from_checkpoint(runs[1]), "val")
    assert sorted(val.frame["image_id"]) == sorted(man.loc[man["fold"] == 1, "image_id"])
    test = load_bundle_split(bundle_from_checkpoint(runs[1]), "test")
    assert sorted(test.frame["image_id"]) == sorted(man.loc[man["split"] == "test", "image_id"])


def test_caches_store_identical_logits_once_and_read_old_files(tmp_path: Path) -> None:
    from skinlesion.ensemble.build import _write_cache

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 2, 3)).astype(np.float32), rng.normal(size=(4, 2, 3)).astype(np.float32)
    ids, groups, y = np.array(list("abcd")), np.array(list("aabc")), np.arange(4) % 3
    _write_cache(tmp_path / "c.npz", ids, groups, y, ["m0", "m1", "m2"], ["identity", "hflip"], [a, b, a.copy()])
    with np.load(tmp_path / "c.npz") as z:
        assert z["logits_alias"].tolist() == [0, 1, 0] and "logits_2" not in z.files
        got = _read_logits(z, 3)
    for want, have in zip([a, b, a], got, strict=True):
        np.testing.assert_array_equal(want, have)
    np.savez(tmp_path / "old.npz", logits_0=a, logits_1=b)  # written before aliases: one array per member
    with np.load(tmp_path / "old.npz") as z:
        np.testing.assert_array_equal(_read_logits(z, 2)[1], b)


def test_levers_stack_out_of_fold_on_a_cross_fitted_bundle(
    fold_members: tuple[list[Path], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from bench import levers
    from skinlesion.ensemble.build import build_bundle

    runs, _ = fold_members
    build_bundle(runs, tmp_path / "b", tta="flips", weighting="bacc", temperature="ensemble")
    assert levers.main([str(tmp_path / "b"), "--n-boot", "10"]) == 0
    res = json.loads(capsys.readouterr().out)
    stacking = [k for k in res["levers"] if k.startswith("stacking: ")]
    assert len(stacking) == 3 and all("cross-fitted by fold" in k for k in stacking)
    for k in stacking:
        for m in ("bacc", "mel_auc"):
            r = res["levers"][k][m]
            assert r["difference"] == pytest.approx(r["variant"] - r["reference"]) and r["ci"][0] <= r["difference"] <= r["ci"][1]
    assert levers.main([str(tmp_path / "b"), "--n-boot", "10", "--no-stacking"]) == 0
    assert not [k for k in json.loads(capsys.readouterr().out)["levers"] if k.startswith("stacking: ")]

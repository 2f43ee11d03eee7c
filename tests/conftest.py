"""Shared fixtures. No test touches the internet: the hub is forced offline here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")  # belt and braces; timm reads the HF variable
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_HAM10000 = REPO_ROOT.parent / "shared" / "data" / "ham10000"


@pytest.fixture(scope="session")
def ham10000_root() -> Path:
    """The shared HAM10000 folder. When CI=true a missing folder is a failure, not a skip."""
    if not (SHARED_HAM10000 / "HAM10000_metadata.csv").is_file():
        msg = f"real-data test needs {SHARED_HAM10000} (HAM10000_metadata.csv + images/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + ", and CI=true forbids skipping it")
        pytest.skip(msg)
    return SHARED_HAM10000


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny convolutions run fastest on one thread and do not fight other jobs on a busy 2-core CPU.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny checkpoints (different backbones and input sizes) trained in seconds on one split of
    synthetic lesions: the members of every test bundle."""
    from skinlesion.data.synthetic import write_synthetic_dataset
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    root = tmp_path_factory.mktemp("members")
    write_synthetic_dataset(root / "synthetic", n_lesions_per_class=8, seed=0, write_masks=True)  # true masks too
    data = f"data.root={root / 'synthetic'}"
    runs = []
    for name, backbone, size in (("a", "test_efficientnet", "[48, 64]"), ("b", "test_resnet", "[56, 56]")):
        cfg = load_config("tiny", [data, f"model.backbone={backbone}", f"model.input_size={size}", "train.epochs=2"])
        runs.append(train(cfg, run_dir=root / name).checkpoint_dir)
    return runs


@pytest.fixture(scope="session")
def tiny_bundle(tiny_members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the two tiny members (flips TTA, BACC weights, ensemble temperature). Copy it
    before changing it: it is shared by the whole session."""
    from skinlesion.ensemble.build import build_bundle

    out = tiny_members[0].parents[1] / "bundle"  # beside synthetic/, a/ and b/
    build_bundle(tiny_members, out, weighting="bacc", tta="flips", temperature="ensemble")
    return out


@pytest.fixture(scope="session")
def calibrated_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with what a delivered bundle has: a MEL threshold (the MEL flag), the diagnosis
    rule, the referral, the out-of-distribution gate and a review flag (MC dropout, 3 passes).
    Shared by the session: copy it before changing it."""
    import shutil

    from skinlesion.calibration.thresholds import Target
    from skinlesion.ensemble.build import calibrate_bundle
    from skinlesion.uncertainty.review_fit import fit_review_flag

    out = tmp_path_factory.mktemp("delivery") / "bundle"
    shutil.copytree(tiny_bundle, out)
    calibrate_bundle(out, [Target("MEL", 0.6, 0.5)], confidence=None, ood=True)
    fit_review_flag(out, n_samples=3, target=0.5)
    return out


@pytest.fixture(scope="session")
def fusion_bundle(tiny_members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of a tiny metadata fusion member (age, sex, site; ``m0-...``) and the image-only
    tiny member ``a`` (``m1-...``), trained on the same synthetic split (flips TTA, uniform weights,
    no temperature). Shared by the session: copy it before changing it."""
    from skinlesion.ensemble.build import build_bundle
    from skinlesion.train.config import load_config
    from skinlesion.train.run import train

    root = tiny_members[0].parents[1]
    cfg = load_config("tiny", [f"data.root={root / 'synthetic'}", "model.metadata=[age,sex,site]", "train.epochs=2"])
    fusion = train(cfg, run_dir=root / "fusion").checkpoint_dir
    out = tmp_path_factory.mktemp("fusion") / "bundle"
    build_bundle([fusion, tiny_members[0]], out, weighting="uniform", tta="flips", temperature="none")
    return out


@pytest.fixture(scope="session")
def calibrated_fusion_bundle(fusion_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fusion bundle's two members rebuilt with an ensemble temperature and calibrated for MEL and
    AKIEC targets (point estimates): it has both operating points (``decision.without_metadata``)
    and ``validation_no_metadata.npz``. Shared by the session: copy it before changing it."""
    import json

    from skinlesion.calibration.thresholds import Target
    from skinlesion.ensemble.build import build_bundle, calibrate_bundle

    members = [m["source_checkpoint"] for m in json.loads((fusion_bundle / "bundle.json").read_text())["members"]]
    out = tmp_path_factory.mktemp("fusion-calibrated") / "bundle"
    build_bundle(members, out, weighting="uniform", tta="flips", temperature="ensemble")
    calibrate_bundle(out, [Target("MEL", 0.6, 0.5), Target("AKIEC", 0.5, 0.5)], confidence=None)
    return out

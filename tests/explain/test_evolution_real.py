"""Follow-up comparison on real HAM10000 images of one lesion (the same visit: no change)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skinlesion.data.table import read_rgb
from skinlesion.explain.evolution import compare_lesions

pytestmark = pytest.mark.realdata

#: Lesions with two images at different magnifications (lesion id: image ids).
PAIRS = {"HAM_0000002": ("ISIC_0033848", "ISIC_0032622"), "HAM_0000012": ("ISIC_0030085", "ISIC_0029348")}


@pytest.mark.parametrize("lesion", sorted(PAIRS))
def test_two_photographs_of_one_lesion_register_and_agree(ham10000_root: Path, lesion: str) -> None:
    before, after = (read_rgb(str(ham10000_root / "images" / f"{i}.jpg")) for i in PAIRS[lesion])
    r = compare_lesions(before, after).result
    reg = r["registration"]
    assert reg["fit"] == "good" and reg["ncc"] > reg["ncc_unregistered"] + 0.3 and reg["mask_dice"] > 0.85
    # the apparent magnification explains the segmented areas' ratio: the lesion did not change size
    area_b, area_a = r["abcde"]["before"]["area_px"], r["abcde"]["after"]["area_px"]
    assert area_a * reg["scale"] ** 2 / area_b == pytest.approx(1.0, abs=0.15)
    assert abs(area_a / area_b - 1) > 0.3  # ... which the raw pixel areas would have called growth or shrinkage
    g = {c["name"]: c for c in r["summary"]["criteria"]}["growth"]
    assert g["assessed"] is False and "magnification" in g["detail"]

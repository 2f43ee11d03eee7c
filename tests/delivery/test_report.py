"""The per-image HTML report: self-contained, escaped, and every section the clinician needs."""

from __future__ import annotations

import base64
import copy
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import skinlesion
from skinlesion.data.synthetic import generate_lesion
from skinlesion.delivery.engine import Predictor
from skinlesion.delivery.report import MAX_SIDE, probability_svg, render_report
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.records import NOTICE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def explained(calibrated_bundle: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray], Predictor]:
    predictor = Predictor(load_bundle(calibrated_bundle), mc_samples=2)
    image, _, _ = generate_lesion("MEL", 3, size=(64, 80), hair=False, vignette=False)
    result, arrays = predictor.explain(image)
    return result, image, arrays, predictor


def _data_uris(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_has_every_section_and_is_self_contained(explained: tuple) -> None:
    result, image, arrays, predictor = explained
    html = render_report(result, image, arrays)
    for section in ("decision", "probabilities", "images", "uncertainty", "abcde", "provenance"):
        assert f'<section id="{section}">' in html
    assert NOTICE in html and "Not a diagnosis" in html
    p = result["prediction"]
    assert f"Diagnosis: <strong>{p['diagnosis']}</strong>" in html and p["diagnosis_rule"] in html
    for flag in p["flags"]:
        assert flag["text"] in html
    assert p["referral"]["text"] in html
    assert ('class="ood"' in html) == result["ood"]["gated"]
    images = _data_uris(html)
    assert len(images) == 3 and all(im.size == (80, 64) for im in images)  # image, CAM overlay, outline
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "Total Dermoscopy Score" in html and "px (spacing unknown)" in html  # no spacing given
    assert "Predictive entropy" in html and "Epistemic part: mutual information" in html and "nats" in html
    assert predictor.bundle.bundle_id in html and f"<td>{skinlesion.__version__}</td>" in html
    assert "Class thresholds (the flags above)" in html and "Priority order" not in html  # the default policy


def test_threshold_markers_in_the_chart() -> None:
    svg = probability_svg({"MEL": 0.3, "NV": 0.7}, {"MEL": 0.25, "NV": None}, "MEL")
    assert svg.count("<line") == 1 and "threshold of MEL: 0.2500" in svg
    assert svg.count("<rect") == 4 and 'fill="#b45309"' in svg  # the decision's bar stands out


def test_review_banner_only_when_flagged(explained: tuple) -> None:
    result, image, arrays, _ = explained
    flagged = copy.deepcopy(result)
    flagged["uncertainty"]["review"]["flag"] = True
    assert '<div class="review"><strong>REVIEW</strong>' in render_report(flagged, image, arrays)
    flagged["uncertainty"]["review"]["flag"] = False
    html = render_report(flagged, image, arrays)
    assert 'class="review"' not in html and "<strong>not flagged</strong>" in html
    flagged["uncertainty"] = None
    assert "Not computed (MC-dropout passes set to 0)" in render_report(flagged, image, arrays)


def test_review_banner_says_why_in_words_and_names_an_overridden_most_probable_class(explained: tuple) -> None:
    """A probability score flags low values (<=), an entropy high ones (>=); a decision that is not the
    most probable class is named as such in the banner."""
    result, image, arrays, _ = explained
    r = copy.deepcopy(result)
    probs = r["prediction"]["probabilities"]
    top = max(probs, key=probs.get)
    other = next(c for c in probs if c != top)
    r["prediction"].update(decision=other, argmax=top)
    r["uncertainty"]["review"].update(flag=True, score="decision_prob", value=0.03, threshold=0.398)
    html = render_report(r, image, arrays)
    assert "probability of the decided class 0.0300 &le; threshold 0.3980" in html
    assert f"the decision {other} is not the most probable class ({top}, p = " in html
    r["prediction"].update(decision=top)
    r["uncertainty"]["review"].update(score="mutual_information", value=0.5, threshold=0.2)
    html = render_report(r, image, arrays)
    assert "mutual information (epistemic) 0.5000 &ge; threshold 0.2000" in html and "is not the most probable class" not in html


def test_diameter_in_mm_only_with_spacing(explained: tuple) -> None:
    _, image, _, predictor = explained
    result, arrays = predictor.explain(image, pixel_spacing_mm=0.05)
    html = render_report(result, image, arrays)
    assert f"{result['abcde']['diameter_mm']:.1f} mm (pixel spacing 0.0500 mm)" in html and "spacing unknown" not in html


def test_hostile_strings_are_escaped(explained: tuple) -> None:
    result, image, arrays, _ = explained
    r = copy.deepcopy(result)
    r["input"] = {"image": "<script>alert(1)</script>", "path": "/x/<img src=x onerror=alert(1)>.png", "sha256": "0" * 64}
    r["bundle"]["name"] = '"><script>alert(2)</script>'
    html = render_report(r, image, arrays)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_large_images_are_downscaled_and_missing_parts_are_said(explained: tuple) -> None:
    result, _, _, _ = explained
    big = np.asarray(Image.fromarray(generate_lesion("NV", 1, size=(64, 80))[0]).resize((1200, 900)))
    mask = np.zeros(big.shape[:2], dtype=bool)
    mask[300:600, 400:800] = True
    html = render_report(result, big, {"cam": np.random.default_rng(0).random((30, 40)), "mask": mask})
    assert all(max(im.size) == MAX_SIDE for im in _data_uris(html))
    r = copy.deepcopy(result)
    r["abcde"] = r["dermoscopy_score"] = None
    html = render_report(r, big, None)
    assert len(_data_uris(html)) == 1 and "No lesion was found by the automatic segmentation" in html
    assert "No attention map or segmentation was computed" in html


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'image' parameter must be an RGB uint8 array"):
        render_report({"prediction": {}}, np.zeros((8, 8), dtype=np.uint8), None)
    with pytest.raises(ValueError, match="'result' parameter must hold 'prediction'"):
        render_report({}, np.zeros((8, 8, 3), dtype=np.uint8), None)

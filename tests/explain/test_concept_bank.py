"""Concept banks of a bundle: TCAV (Kim et al., ICML 2018) per member, weighted, per-image sensitivity."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from skinlesion.cli.explain_concepts import concepts_command
from skinlesion.data.synthetic import FIELD_OF_VIEW_MM, generate_lesion
from skinlesion.ensemble.bundle import load_bundle
from skinlesion.evaluation import load_bundle_split
from skinlesion.errors import DataError
from skinlesion.explain.concept_bank import learn as cb
from skinlesion.explain.concept_bank import (
    ConceptBank,
    concept_layer,
    concept_sensitivity,
    dataset_pixel_spacing,
    learn_concept_bank,
)
from skinlesion.explain.concepts import TCAVExplainer
from skinlesion.models.factory import create_backbone
from skinlesion.models.registry import get_spec

MIN_EXAMPLES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the session's tiny bundle (banks are saved into it)."""
    out = tmp_path_factory.mktemp("concept-bank") / "bundle"
    shutil.copytree(tiny_bundle, out)
    return out


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path):  # noqa: ANN201 - a Bundle
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def bank(bundle) -> ConceptBank:  # noqa: ANN001
    return learn_concept_bank(bundle, n_per_class=3, n_runs=3, min_concept_examples=MIN_EXAMPLES)


def _write_concepts(root: Path, spec: dict[str, tuple[str, int]]) -> Path:
    """``root/<concept>/<i>.png`` from synthetic lesions: concept -> (class, number of images)."""
    for concept, (label, n) in spec.items():
        (root / concept).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(generate_lesion(label, seed=100 + i, size=(60, 80))[0]).save(root / concept / f"{i}.png")
    return root


# --- layers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backbone", "layer"), [
    ("test_efficientnet", "blocks"), ("test_resnet", "layer3"), ("tf_efficientnet_lite0", "blocks"),
    ("efficientnet_b0", "blocks"), ("resnet50", "layer3"), ("densenet121", "features.denseblock4"),
    ("mobilenetv3_large_100", "blocks"),
])
def test_concept_layer_per_family(backbone: str, layer: str) -> None:
    assert concept_layer(backbone) == layer


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_concept_layer_gives_image_dependent_gradients(backbone: str) -> None:
    """At the pooled classifier input every image has the same gradient (Kim et al. need them to differ)."""
    torch.manual_seed(0)
    model = create_backbone(backbone, num_classes=7).eval()
    x = torch.randn(2, 3, 48, 48)
    deep = TCAVExplainer(model, layer=concept_layer(backbone), n_runs=2).gradients(x, 1)
    pooled = TCAVExplainer(model, layer="pooled", n_runs=2).gradients(x, 1)
    np.testing.assert_allclose(pooled[0], pooled[1])
    assert not np.allclose(deep[0], deep[1])


def test_concept_layer_unknown_family(monkeypatch: pytest.MonkeyPatch) -> None:
    vit = replace(get_spec("test_resnet"), timm_name="vit_tiny_patch16_224")
    monkeypatch.setattr(cb, "get_spec", lambda name: vit)
    with pytest.raises(ValueError, match=r"No TCAV concept layer is known for backbone 'test_resnet' \(timm model "
                                         r"'vit_tiny_patch16_224'\).*layers="):
        concept_layer("test_resnet")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="Unknown backbone 'nope'"):
        concept_layer("nope")


# --- learning -------------------------------------------------------------------------------------


def test_bank_learns_cavs_for_concepts_with_examples(bank: ConceptBank, bundle) -> None:  # noqa: ANN001
    n_sampled = sum(bank.settings["n_class_images"].values())
    assert n_sampled == 3 * len(bank.classes)
    expected = [n for n, c in bank.concept_counts.items() if c["examples"] >= MIN_EXAMPLES]
    assert expected and bank.concepts == expected
    assert set(bank.concept_counts) == {"asymmetric", "irregular_border", "multicolour", "large"}
    for c in bank.concept_counts.values():
        assert c["examples"] + c["negative"] + c["unknown"] == n_sampled
    for name, c in bank.concept_counts.items():  # skipped concepts are explained
        if name not in expected:
            assert any(note.startswith(f"{name}: skipped, {c['examples']} example(s)") for note in bank.notes)
    image = load_bundle_split(bundle, "train").load_image(0)
    for m in bundle.members:
        dim = TCAVExplainer(m, layer=concept_layer(m.backbone), n_runs=2).activations([image]).shape[1]
        for concept in expected:
            v = bank.cavs[(m.name, concept)]
            assert v.layer == concept_layer(m.backbone) and v.vector.shape == (dim,) and v.n_runs == 3
            assert np.linalg.norm(v.vector) == pytest.approx(1.0, abs=1e-5) and 0 < v.consistency <= 1 + 1e-9
    # one row per (class, concept), in the weighted table and in every member's
    pairs = {(r.class_index, r.concept) for r in bank.results}
    assert pairs == {(k, c) for k in range(len(bank.classes)) for c in expected} and len(bank.results) == len(pairs)
    for rows in bank.member_results.values():
        assert {(r.class_index, r.concept) for r in rows} == pairs


def test_weighted_table_is_run_by_run_weighted_mean(bank: ConceptBank) -> None:
    w = {m.name: m.weight for m in bank.members}
    for r in bank.results:
        runs = sum(w[m] * np.asarray(bank.result(r.concept, r.class_index, m).scores) for m in w)
        np.testing.assert_allclose(r.scores, runs)
        assert r.score_mean == pytest.approx(sum(w[m] * bank.result(r.concept, r.class_index, m).score_mean for m in w))
        assert r.significant == (r.p_value_corrected < r.alpha and r.cav_accuracy >= 0.6)
        assert r.p_value_corrected == pytest.approx(min(1.0, r.p_value * len(bank.results)))


def test_scores_come_from_each_class_gradients(
    bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """Constructed case: even classes get gradient +g, odd classes -g, the same for every image, so
    every CAV scores 1 for one parity and 0 for the other (Kim et al. eq. 2)."""
    original = TCAVExplainer.gradients

    def fake(self: TCAVExplainer, images: object, class_index: int) -> np.ndarray:
        g = original(self, images, 0)
        base = np.linspace(-1.0, 1.0, g.shape[1]) + 0.3
        return np.tile(base if class_index % 2 == 0 else -base, (len(g), 1))

    monkeypatch.setattr(TCAVExplainer, "gradients", fake)
    folders = _write_concepts(tmp_path / "concepts", {"melanoma_like": ("MEL", 4), "vascular_like": ("VASC", 4)})
    bank = learn_concept_bank(bundle, n_per_class=2, n_runs=3, concepts_dir=folders, abcde_concepts=False,
                              min_concept_examples=MIN_EXAMPLES)
    assert bank.concepts == ["melanoma_like", "vascular_like"]
    assert bank.concept_counts["melanoma_like"] == {"source": "folder", "examples": 4, "negative": None,
                                                    "unknown": None}
    for rows in [bank.results, *bank.member_results.values()]:
        by = {(r.class_index, r.concept): r for r in rows}
        for concept in bank.concepts:
            even, odd = by[(0, concept)], by[(1, concept)]
            np.testing.assert_allclose(np.add(even.scores, odd.scores), 1.0)
            assert even.random_mean + odd.random_mean == pytest.approx(1.0)
            np.testing.assert_allclose(by[(2, concept)].scores, even.scores)


def test_errors_name_the_concepts_and_counts(bundle, tmp_path: Path) -> None:  # noqa: ANN001
    folders = _write_concepts(tmp_path / "few", {"dots": ("NV", 1), "veils": ("MEL", 2)})
    with pytest.raises(DataError, match=r"No concept has enough examples \(at least min_concept_examples=5\).*"
                                        r"'dots': 1, 'veils': 2"):
        learn_concept_bank(bundle, n_per_class=1, n_runs=2, concepts_dir=folders, abcde_concepts=False)
    with pytest.raises(ValueError, match="No concept source: the 'abcde_concepts' parameter is False"):
        learn_concept_bank(bundle, abcde_concepts=False)
    with pytest.raises(ValueError, match=r"The 'layers' parameter names unknown member\(s\) \['x'\]"):
        learn_concept_bank(bundle, layers={"x": "blocks"})
    with pytest.raises(ValueError, match="The 'n_runs' parameter must be an integer in"):
        learn_concept_bank(bundle, n_runs=1)


def test_large_is_unknown_without_pixel_spacing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dataset_pixel_spacing({"config": {"data": {"format": "synthetic"}}}, (150, 200)) == FIELD_OF_VIEW_MM / 200
    ham = {"config": {"data": {"format": "ham10000"}}, "data": {"format": "ham10000"}}
    assert dataset_pixel_spacing(ham, (150, 200)) is None
    images = [generate_lesion("MEL", seed=s, size=(60, 80))[0] for s in range(2)]
    notes: list[str] = []
    _, counts = cb._abcde_concepts(images, ham, notes)
    assert counts["large"] == {"source": "abcde", "examples": 0, "negative": 0, "unknown": 2}
    assert any("pixel spacing of this dataset is not recorded" in n for n in notes)


# --- persistence ----------------------------------------------------------------------------------


def test_save_load_round_trip(bank: ConceptBank, bundle_dir: Path, tmp_path: Path) -> None:
    out = bank.save(tmp_path / "bank")
    assert {p.name for p in out.iterdir()} == {"concepts.json", "cavs.npz"}
    loaded = ConceptBank.load(out)
    assert loaded == bank and loaded.results == bank.results and loaded.member_results == bank.member_results
    key = next(iter(bank.cavs))
    changed = replace(loaded, cavs={**loaded.cavs, key: replace(loaded.cavs[key], vector=-loaded.cavs[key].vector)})
    assert changed != bank
    assert bank.save() == bundle_dir / "concepts"  # default: next to the bundle
    assert ConceptBank.load(bundle_dir) == bank
    (out / "cavs.npz").unlink()
    with pytest.raises(DataError, match=r"cavs\.npz is missing"):
        ConceptBank.load(out)


# --- per-image sensitivity ------------------------------------------------------------------------


def test_concept_sensitivity_is_finite_and_flips_with_the_cav(bank: ConceptBank, bundle) -> None:  # noqa: ANN001
    image = load_bundle_split(bundle, "val").load_image(0)
    sens = concept_sensitivity(bundle, bank, image, "MEL")
    assert list(sens) == bank.concepts
    w = {m.name: m.weight for m in bank.members}
    for concept, s in sens.items():
        assert np.isfinite(float(s)) and set(s.per_member) == set(w)
        assert float(s) == pytest.approx(sum(w[m] * v for m, v in s.per_member.items()))
        r = bank.result(concept, 0)
        assert (s.tcav_score, s.significant) == (r.score_mean, r.significant)
        assert ("matters for MEL" if s.significant else "is not significant for MEL") in s.summary()
    negated = replace(bank, cavs={k: replace(v, vector=-v.vector) for k, v in bank.cavs.items()})
    flipped = concept_sensitivity(bundle, negated, image, 0)
    for concept, s in sens.items():
        assert float(flipped[concept]) == pytest.approx(-float(s), rel=1e-6, abs=1e-12)
        assert float(s) != 0.0
    other = concept_sensitivity(bundle, bank, image, 1)
    assert any(float(other[c]) != float(sens[c]) for c in sens)


def test_concept_sensitivity_errors(bank: ConceptBank, bundle) -> None:  # noqa: ANN001
    image = np.zeros((30, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"The 'class_index' parameter must be one of \['MEL'"):
        concept_sensitivity(bundle, bank, image, "XYZ")
    with pytest.raises(ValueError, match=r"The 'class_index' parameter must be an integer in \[0, 7\)"):
        concept_sensitivity(bundle, bank, image, 7)
    with pytest.raises(ValueError, match=r"The 'image' parameter must be an RGB uint8 \(H, W, 3\) array"):
        concept_sensitivity(bundle, bank, image[..., 0], 0)
    stale = replace(bank, members=[replace(bank.members[0], weights_sha256="0" * 64), *bank.members[1:]])
    with pytest.raises(ValueError, match="has with other weights; learn the bank again"):
        concept_sensitivity(bundle, stale, image, 0)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_learns_saves_and_prints_the_table(bundle_dir: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(concepts_command)
    folders = _write_concepts(tmp_path / "c", {"melanoma_like": ("MEL", 5), "naevus_like": ("NV", 5)})
    out = tmp_path / "bank"
    r = CliRunner().invoke(app, ["--bundle", str(bundle_dir), "--no-abcde", "--concepts-dir", str(folders),
                                 "--n-per-class", "2", "--n-runs", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "melanoma_like" in r.output and "AKIEC" in r.output and "±" in r.output
    assert "significant" in r.output and f"saved: {out}" in r.output.replace("\n", "")
    assert ConceptBank.load(out).concepts == ["melanoma_like", "naevus_like"]
    r = CliRunner().invoke(app, ["--bundle", str(bundle_dir), "--checkpoint", str(bundle_dir)])
    assert r.exit_code == 1 and "Give exactly one of --bundle or --checkpoint" in r.output

"""TCAV (Kim et al., ICML 2018): CAVs, class-dependent scores, significance, concept sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from skinlesion.data.synthetic import SYNTHETIC_CLASSES, generate_lesion
from skinlesion.errors import DataError
from skinlesion.explain.concepts import (
    DEFAULT_ABCDE_RULES,
    ConceptActivationVector,
    TCAVExplainer,
    concept_examples_from_folders,
    concepts_from_measurements,
    correct_pvalues,
    directional_derivatives,
    tcav_report,
    tcav_score,
    two_sided_pvalue,
)

D = 8  # toy feature dimension


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ToyNet(nn.Module):
    """timm-like model whose pooled features are its input vector: logits = W x + b."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, :, None, None]

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = f.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.fixture(scope="module")
def toy() -> dict:
    """Concept direction e0 raises logit 0 and lowers logit 1; logit 2 ignores it."""
    direction = torch.zeros(D)
    direction[0] = 1.0
    weight = torch.stack([2 * direction, -2 * direction, torch.eye(D)[1]])
    rng = np.random.default_rng(0)
    pool = torch.tensor(rng.normal(size=(80, D)), dtype=torch.float32)
    concept = torch.tensor(rng.normal(size=(30, D)), dtype=torch.float32) + 3 * direction
    random_concept = torch.tensor(rng.normal(size=(30, D)), dtype=torch.float32)
    class_images = torch.tensor(rng.normal(size=(20, D)), dtype=torch.float32)
    return {"model": ToyNet(weight), "pool": pool, "class": class_images,
            "concepts": {"real": concept, "random_like": random_concept}}


def _explain(toy: dict, class_index: int, **kwargs) -> dict:
    explainer = TCAVExplainer(toy["model"], n_runs=kwargs.pop("n_runs", 10), n_random=20, **kwargs)
    return {r.concept: r for r in explainer.explain(class_index, toy["class"], toy["concepts"], toy["pool"])}


# --- core -----------------------------------------------------------------------------------------


def test_tcav_score_counts_strictly_positive_directional_derivatives() -> None:
    grads = np.array([[1.0, 0.0], [-1.0, 5.0], [2.0, 0.0], [0.0, 1.0]])
    assert directional_derivatives(grads, np.array([1.0, 0.0])).tolist() == [1.0, -1.0, 2.0, 0.0]
    assert tcav_score(grads, np.array([1.0, 0.0])) == 0.5  # the zero derivative is not positive
    assert tcav_score(-grads, np.array([1.0, 0.0])) == 0.25


def test_cav_points_to_the_concept_and_reports_accuracy() -> None:
    rng = np.random.default_rng(1)
    concept, rand = rng.normal(size=(40, 5)) + [4, 0, 0, 0, 0], rng.normal(size=(40, 5))
    cav = ConceptActivationVector(seed=0).fit(concept, rand)
    assert cav.vector_[0] > 0.9 and np.isclose(np.linalg.norm(cav.vector_), 1.0)
    assert cav.accuracy_ > 0.95 and cav.n_concept_ == 40 and cav.n_random_ == 40
    assert (cav.decision_function(concept) > 0).mean() > 0.9
    noise = ConceptActivationVector(seed=0).fit(rng.normal(size=(40, 5)), rand)
    assert noise.accuracy_ < 0.7  # indistinguishable sets: near chance (0.5)


def test_unfitted_cav_raises() -> None:
    with pytest.raises(RuntimeError, match="not fitted yet. Call 'fit'"):
        tcav_score(np.ones((3, 2)), ConceptActivationVector())
    with pytest.raises(RuntimeError, match="not fitted yet"):
        ConceptActivationVector().decision_function(np.ones((3, 2)))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"regularization": 0}, r"The 'regularization' parameter must be a number in \(0, inf\). Got 0 instead."),
        ({"cv": 1}, r"The 'cv' parameter must be an integer in \[2, inf\). Got 1 instead."),
        ({"seed": -1}, r"The 'seed' parameter must be an integer in \[0, inf\). Got -1 instead."),
    ],
)
def test_cav_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConceptActivationVector(**params).fit(np.ones((4, 2)), np.zeros((4, 2)))


def test_cav_bad_inputs() -> None:
    with pytest.raises(ValueError, match="'random_acts' parameter must have as many features as 'concept_acts' "
                                         r"\(3\). Got 2 instead."):
        ConceptActivationVector().fit(np.ones((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"'concept_acts' parameter must be a 2-D array .* at least 2 row"):
        ConceptActivationVector().fit(np.ones((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="'concept_acts' parameter must be finite"):
        ConceptActivationVector().fit(np.full((4, 3), np.nan), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="'gradients' parameter must have 2 columns"):
        tcav_score(np.ones((3, 4)), np.array([1.0, 0.0]))


def test_pvalue_and_bonferroni() -> None:
    assert two_sided_pvalue([1, 1, 1], [1, 1, 1]) == 1.0
    assert two_sided_pvalue([1, 1, 1], [0, 0, 0]) == 0.0
    assert 0.3 < two_sided_pvalue([1, 1, 1], [1, 0, 1]) < 0.5
    assert correct_pvalues([0.01, 0.2, 0.6], "bonferroni") == pytest.approx([0.03, 0.6, 1.0])
    assert correct_pvalues([0.01, 0.2], "none") == [0.01, 0.2]
    with pytest.raises(ValueError, match=r"The 'correction' parameter must be one of \('bonferroni', 'none'\)"):
        correct_pvalues([0.1], "holm")
    with pytest.raises(ValueError, match="at least 2 scores per group"):
        two_sided_pvalue([1.0], [0.0, 1.0])


# --- the explainer on a model with a known answer -------------------------------------------------


@pytest.fixture(scope="module")
def toy_results(toy: dict) -> tuple[TCAVExplainer, dict]:
    """One report over classes 0-2 (CAVs fitted once, shared by the classes)."""
    explainer = TCAVExplainer(toy["model"], n_runs=10, n_random=20)
    results = explainer.explain_classes({k: toy["class"] for k in range(3)}, toy["concepts"], toy["pool"])
    return explainer, {(r.class_index, r.concept): r for r in results}


def test_tcav_is_class_dependent_and_tested_for_significance(toy_results: tuple) -> None:
    _, res = toy_results
    up, down = res[0, "real"], res[1, "real"]
    # The concept raises logit 0 and lowers logit 1: TCAV 1 for class 0, 0 for class 1.
    assert up.score_mean == 1.0 and up.score_std == 0.0
    assert down.score_mean == 0.0 and down.score_std == 0.0
    assert up.significant and down.significant and up.p_value < 0.01
    assert up.cav_accuracy > 0.85 and up.cav_accurate
    # Logit 2 ignores the concept direction; a concept drawn like the random pool is noise.
    assert not res[2, "real"].significant
    for k in range(3):
        rnd = res[k, "random_like"]
        assert not rnd.significant
        assert rnd.cav_accuracy < 0.6 and not rnd.cav_accurate
        assert 0.0 < rnd.random_mean < 1.0 and len(rnd.scores) == len(rnd.random_scores) == 10
    assert up.n_concept_examples == 30 and up.n_class_examples == 20


def test_explain_classes_shares_cavs_and_corrects_over_all_tests(toy_results: tuple) -> None:
    explainer, res = toy_results
    assert list(res) == [(k, c) for k in range(3) for c in ("real", "random_like")]
    for r in res.values():  # Bonferroni over the 6 (class, concept) tests of the report
        assert r.p_value_corrected == pytest.approx(min(1.0, 6 * r.p_value))
        assert r.significant == (r.p_value_corrected < 0.05 and r.cav_accurate)
    assert set(explainer.cavs_) == {"real", "random_like"} and len(explainer.random_cavs_) == 10
    report = tcav_report(list(res.values()))
    assert report.splitlines()[1].startswith("real -> class 0") and "NOT significant" in report
    assert "not meaningful" in report


def test_cav_accuracy_gate_keeps_a_consistent_random_set_out(toy: dict, toy_results: tuple) -> None:
    # A fixed random sample gives CAVs that all follow its sample-mean shift: for class 2 they agree
    # (score 0 every run), so the t-test alone calls it significant; its CAV accuracy is at chance.
    _, res = toy_results
    rnd = res[2, "random_like"]
    assert rnd.score_std == 0.0 and rnd.p_value_corrected < 0.05 and not rnd.significant
    assert "p below alpha, but the CAV is near chance" in rnd.summary()
    ungated = TCAVExplainer(toy["model"], n_runs=10, n_random=20, min_cav_accuracy=0.0).explain_classes(
        {k: toy["class"] for k in range(3)}, toy["concepts"], toy["pool"])
    assert [r.significant for r in ungated] == [r.p_value_corrected < 0.05 for r in ungated]
    assert [r.p_value for r in ungated] == [r.p_value for r in res.values()]
    assert ungated[5].significant


def test_explain_is_deterministic_and_layers_agree(toy: dict) -> None:
    first, again = _explain(toy, 0, seed=3, n_runs=5), _explain(toy, 0, seed=3, n_runs=5)
    assert first == again and first["random_like"].scores == again["random_like"].scores
    # explain() corrects over its 2 concepts.
    assert first["random_like"].p_value_corrected == pytest.approx(min(1.0, 2 * first["random_like"].p_value))
    for layer in ("body", "features"):  # forward hook on a module, flattened feature map
        other = _explain(toy, 0, seed=3, n_runs=5, layer=layer)
        assert other["random_like"].scores == first["random_like"].scores
        assert other["real"].p_value == first["real"].p_value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_runs": 1}, r"The 'n_runs' parameter must be an integer in \[2, inf\). Got 1 instead."),
        ({"alpha": 1.5}, r"The 'alpha' parameter must be a number in \(0, 1\). Got 1.5 instead."),
        ({"correction": "holm"}, r"The 'correction' parameter must be one of \('bonferroni', 'none'\). Got 'holm'"),
        ({"layer": "nope"}, r"The 'layer' parameter must be one of \('pooled', 'features'\) or a module name"),
        ({"n_random": 1}, r"The 'n_random' parameter must be an integer in \[2, inf\). Got 1 instead."),
        ({"min_cav_accuracy": 2}, r"The 'min_cav_accuracy' parameter must be a number in \[0, 1\]. Got 2"),
        ({"cv": 0}, r"The 'cv' parameter must be an integer in \[2, inf\). Got 0 instead."),
        ({"layer": ""}, r"The 'layer' parameter must be one of .* or a module name of the model. Got '' instead."),
        ({"input_size": (64,)}, r"The 'input_size' parameter must be a \(height, width\) pair .* Got \(64,\)"),
    ],
)
def test_explainer_bad_parameters(toy: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TCAVExplainer(toy["model"], **kwargs)


def test_explain_bad_inputs(toy: dict) -> None:
    ex = TCAVExplainer(toy["model"], n_runs=2, n_random=20)
    c, pool = toy["concepts"], toy["pool"]
    with pytest.raises(ValueError, match="'class_index' parameter must be below the model's 3 classes. Got 3"):
        ex.explain(3, toy["class"], c, pool)
    with pytest.raises(ValueError, match="'concepts' parameter must not contain 'random'"):
        ex.explain(0, toy["class"], {"random": pool}, pool)
    with pytest.raises(ValueError, match=r"'random_pool' parameter must hold at least 2 \* n_random = 40"):
        ex.explain(0, toy["class"], c, pool[:30])
    with pytest.raises(ValueError, match=r"'concepts\['real'\]' parameter must hold at least 2 image\(s\). Got 1"):
        ex.explain(0, toy["class"], {"real": c["real"][:1]}, pool)
    with pytest.raises(ValueError, match="'backbone' parameter must name a registered backbone"):
        ex.explain(0, [np.zeros((8, 8, 3), np.uint8)] * 2, c, pool)
    with pytest.raises(ValueError, match="'concepts' parameter must be a non-empty mapping .* Got dict of length 0"):
        ex.explain(0, toy["class"], {}, pool)
    with pytest.raises(ValueError, match=r"The 'class_index' parameter must be an integer in \[0, inf\). Got -1"):
        ex.explain(-1, toy["class"], c, pool)
    with pytest.raises(ValueError, match="The 'model' parameter must be a torch nn.Module or a Member. Got str"):
        TCAVExplainer("resnet18")


# --- concept sources ------------------------------------------------------------------------------


def _measurements(truth) -> dict:  # noqa: ANN001 - LesionTruth
    return {"asymmetric_axes": truth.asymmetric_axes, "colours": list(truth.colours),
            "diameter_mm": truth.diameter_mm, "border_irregularity": truth.border_irregularity}


def test_concepts_from_measurements_follow_the_documented_rules() -> None:
    ms = [
        {"asymmetric_axes": 2, "colours": ["black", "blue-gray", "dark brown"], "diameter_mm": 7.0,
         "compactness": 1.6, "border_irregularity": 0.0},
        {"asymmetric_axes": 1, "colours": ["light brown"], "diameter_mm": None, "border_irregularity": 0.2},
        {"asymmetric_axes": None, "colours": ["a", "a", "b"], "diameter_mm": float("nan")},
        {},
    ]
    out = concepts_from_measurements(["a", "b", "c", "d"], ms)
    assert out == {"asymmetric": ["a"], "irregular_border": ["a", "b"], "multicolour": ["a"], "large": ["a"]}
    # None = unknown is excluded, not counted as negative: a custom rule sees all three verdicts.
    custom = concepts_from_measurements([0, 1, 2], [{"v": True}, {"v": False}, {}], {"v": lambda m: m.get("v")})
    assert custom == {"v": [0]}


def test_concepts_from_measurements_errors() -> None:
    with pytest.raises(ValueError, match=r"'measurements' parameter must hold one dict per image \(2\). Got 1"):
        concepts_from_measurements([1, 2], [{}])
    with pytest.raises(TypeError, match="Concept rule 'x' must return True, False or None. Got 'yes'"):
        concepts_from_measurements([1], [{}], {"x": lambda m: "yes"})
    with pytest.raises(ValueError, match="measurement 'colours' must be a list of colour names. Got 'black'"):
        concepts_from_measurements([1], [{"colours": "black"}])
    with pytest.raises(ValueError, match="measurement 'asymmetric_axes' must be 0, 1 or 2. Got 3"):
        concepts_from_measurements([1], [{"asymmetric_axes": 3}])
    with pytest.raises(ValueError, match="'rules' parameter must be a non-empty mapping"):
        concepts_from_measurements([1], [{}], {})


def test_concept_folders(tmp_path) -> None:  # noqa: ANN001
    for name, n in (("multicolour", 2), ("random", 3)):
        (tmp_path / name / "sub").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((6, 5, 3), i, np.uint8)).save(tmp_path / name / "sub" / f"{i}.png")
    (tmp_path / "multicolour" / "notes.txt").write_text("ignored")
    out = concept_examples_from_folders(tmp_path)
    assert sorted(out) == ["multicolour", "random"] and len(out["random"]) == 3
    assert out["multicolour"][1].shape == (6, 5, 3) and out["multicolour"][1].dtype == np.uint8
    (tmp_path / "multicolour" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"(?s)1 unreadable concept image\(s\).*broken.jpg"):
        concept_examples_from_folders(tmp_path)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable concept image\(s\).*broken.jpg"):
        assert len(concept_examples_from_folders(tmp_path, on_error="skip")["multicolour"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Concept folder .*empty has no images"):
        concept_examples_from_folders(tmp_path, on_error="skip")
    with pytest.raises(DataError, match="Concept folder root not found"):
        concept_examples_from_folders(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"The 'on_error' parameter must be one of \('raise', 'skip'\)"):
        concept_examples_from_folders(tmp_path, on_error="ignore")


# --- end to end on a real (tiny) backbone ---------------------------------------------------------


def test_end_to_end_on_test_resnet_with_synthetic_lesions() -> None:
    from skinlesion.ensemble.members import Member
    from skinlesion.models.factory import create_backbone
    from skinlesion.models.registry import data_config

    torch.manual_seed(0)
    model = create_backbone("test_resnet", num_classes=3)
    lesions = [generate_lesion(label, seed, size=(64, 64)) for label in SYNTHETIC_CLASSES for seed in range(5)]
    images = [im for im, _, _ in lesions]
    truths = [t for _, _, t in lesions]
    concepts = concepts_from_measurements(images, [_measurements(t) for t in truths], DEFAULT_ABCDE_RULES)
    assert len(concepts["multicolour"]) == sum(len(t.colours) >= 3 for t in truths) >= 4
    pool = [im for im, t in zip(images, truths) if len(t.colours) < 3]
    mel = [im for (im, _, t) in lesions if t.label == "MEL"]
    explainer = TCAVExplainer(model, "test_resnet", input_size=(64, 64), n_runs=4, n_random=6, seed=0)
    chosen = {"multicolour": concepts["multicolour"], "large": concepts["large"]}
    results = explainer.explain(0, mel, chosen, pool)
    assert [r.concept for r in results] == ["multicolour", "large"]
    for r in results:
        assert 0.0 <= r.p_value <= r.p_value_corrected <= 1.0
        assert 0.0 <= r.score_mean <= 1.0 and 0.0 <= r.cav_accuracy <= 1.0 and r.class_index == 0
    assert explainer.activations(mel).shape == (len(mel), model.num_features)
    member = Member("m", model, data_config("test_resnet", (64, 64)), "test_resnet")
    again = TCAVExplainer(member, n_runs=4, n_random=6, seed=0, layer="layer3").explain(0, mel, chosen, pool)
    assert [r.concept for r in again] == ["multicolour", "large"]
    assert TCAVExplainer(member, n_runs=4, n_random=6, seed=0).explain(0, mel, chosen, pool) == results
    with pytest.raises(ValueError, match=r"'class_images' parameter must hold RGB uint8 \(H, W, 3\) images"):
        explainer.gradients([np.zeros((8, 8), np.uint8)], 0)

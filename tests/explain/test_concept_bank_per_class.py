"""Per-class digest of a concept bank: significant concepts named with their numbers, "none" said plainly."""

from __future__ import annotations

from skinlesion.explain._tcav_stats import ConceptResult
from skinlesion.explain.concept_bank import ConceptBank


def _result(concept: str, k: int, score: float, significant: bool) -> ConceptResult:
    return ConceptResult(concept=concept, class_index=k, score_mean=score, score_std=0.05, random_mean=0.5,
                         random_std=0.1, p_value=0.001 if significant else 0.4, p_value_corrected=0.004 if significant else 1.0,
                         significant=significant, cav_accuracy=0.8, cav_accurate=True, alpha=0.05, n_runs=10,
                         n_concept_examples=30, n_class_examples=40)


def test_per_class_names_significant_concepts_and_says_none_plainly() -> None:
    results = [_result("multicolour", 0, 0.9, True), _result("large", 0, 0.2, True), _result("large", 1, 0.55, False),
               _result("multicolour", 1, 0.45, False)]
    bank = ConceptBank(classes=("MEL", "NV", "DF"), members=[], cavs={}, results=results, member_results={},
                       concept_counts={})
    out = bank.per_class()
    assert [s["concept"] for s in out["MEL"]["significant"]] == ["multicolour", "large"]
    assert out["MEL"]["significant"][0]["direction"] == "raises" and out["MEL"]["significant"][1]["direction"] == "lowers"
    assert "multicolour raises the MEL logit (TCAV 0.90 vs random 0.50, corrected p 0.004)" in out["MEL"]["line"]
    assert out["NV"]["significant"] == [] and out["NV"]["line"] == "NV: none of the 2 concepts tested is significant (random-CAV test)."
    assert out["DF"]["line"] == "DF: no concept was tested." and out["DF"]["tested"] == []

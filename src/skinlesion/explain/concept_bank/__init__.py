"""A concept bank for a decision bundle: TCAV (Kim et al., ICML 2018) per member, weighted over members.

:func:`learn_concept_bank` samples images of a split of the bundle's own manifest (one per lesion,
seeded), turns ABCDE measurements (:func:`~skinlesion.explain.abcde.measure_abcde`) into the
concepts ``asymmetric``, ``irregular_border``, ``multicolour`` and ``large``
(:data:`~skinlesion.explain.concepts.DEFAULT_ABCDE_RULES`; its keys are those of
:meth:`ABCDEResult.to_dict`) and/or reads user concept folders, and runs
:class:`~skinlesion.explain.concepts.TCAVExplainer` for every member at an intermediate layer
(:func:`concept_layer`). The weighted table combines the members run by run: every member sees
the same random negative set in run ``i`` (same seed, same pool), so the ensemble's score of run
``i`` is the weighted mean of the members' run-``i`` scores, t-tested against the weighted random
runs as in Kim et al. §3.2 and Bonferroni-corrected over all (class, concept) tests.

:func:`concept_sensitivity` gives, for one image, the conceptual sensitivity ``S_{C,k}(x)``
(Kim et al. eq. 1) along each member's mean CAV, weighted over members, next to the concept's
TCAV significance for that class. Decision support only: a concept that is not significant for a
class must not be read as an explanation, and per-image sensitivities are local derivatives.

Modules by question: ``bank`` (what a bank holds; save/load), ``learn`` (sampling, concept
examples, TCAV per member), ``_stats`` (mean CAVs, member-weighted test), ``sensitivity``
(one image).
"""

from skinlesion.explain.concept_bank.bank import BankMember, ConceptBank, ConceptVector
from skinlesion.explain.concept_bank.learn import (
    FAMILY_LAYERS,
    concept_layer,
    dataset_pixel_spacing,
    learn_concept_bank,
)
from skinlesion.explain.concept_bank.sensitivity import ConceptSensitivity, concept_sensitivity

__all__ = [
    "FAMILY_LAYERS",
    "BankMember",
    "ConceptBank",
    "ConceptSensitivity",
    "ConceptVector",
    "concept_layer",
    "concept_sensitivity",
    "dataset_pixel_spacing",
    "learn_concept_bank",
]

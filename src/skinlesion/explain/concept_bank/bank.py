"""What a concept bank holds and how it is stored: members, mean CAVs, TCAV tables; save and load.

A bank is written next to its bundle as ``concepts/concepts.json`` (members, CAV statistics, the
weighted and per-member TCAV tables, settings) and ``concepts/cavs.npz`` (the CAV arrays).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skinlesion.errors import DataError
from skinlesion.explain._tcav_stats import ConceptResult

FORMAT = "skinlesion-concept-bank"
FORMAT_VERSION = 1
CONCEPTS_JSON = "concepts.json"
CAVS_NPZ = "cavs.npz"
BANK_FOLDER = "concepts"


@dataclass(frozen=True)
class BankMember:
    """A bundle member as the bank saw it (``weights_sha256`` ties the CAVs to its weights)."""

    name: str
    backbone: str
    layer: str
    weight: float
    weights_sha256: str | None


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """Mean CAV of one concept at one member's layer (Kim et al. 2018, §3.1).

    ``vector``: unit-normalised mean of the ``n_runs`` unit CAVs (float32, flattened layer);
    ``consistency``: norm of that mean before normalising (1 when all runs agree, near 0 when they
    point anywhere); ``accuracy``/``accuracy_std``: cross-validated balanced accuracy over runs.
    """

    member: str
    concept: str
    layer: str
    vector: np.ndarray
    accuracy: float
    accuracy_std: float
    consistency: float
    n_runs: int


@dataclass(eq=False)
class ConceptBank:
    """CAVs and TCAV results of a bundle (Kim et al. 2018), saved next to the bundle.

    ``results``: the member-weighted TCAV table; ``member_results``: each member's own table;
    ``cavs``: ``(member, concept) -> ConceptVector``; ``concept_counts``: per concept its
    ``source`` (``abcde``/``folder``) and ``examples``/``negative``/``unknown`` counts;
    ``notes``: what could not be learned and why; ``settings``: how the bank was learned.
    """

    classes: tuple[str, ...]
    members: list[BankMember]
    cavs: dict[tuple[str, str], ConceptVector]
    results: list[ConceptResult]
    member_results: dict[str, list[ConceptResult]]
    concept_counts: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        """Names of the learned concepts, in learning order."""
        return list(dict.fromkeys(c for _, c in self.cavs))

    def result(self, concept: str, class_index: int, member: str | None = None) -> ConceptResult | None:
        """The weighted (or ``member``'s) TCAV result of ``concept`` for ``class_index``, if tested."""
        rows = self.results if member is None else self.member_results[member]
        return next((r for r in rows if r.concept == concept and r.class_index == class_index), None)

    def table(self, member: str | None = None) -> list[dict[str, Any]]:
        """Rows (class, concept, TCAV mean/std, random baseline, p raw/corrected, significant, CAV
        accuracy) of the weighted table or of one member's, ordered by class then concept."""
        rows = self.results if member is None else self.member_results[member]
        return [{"class": self.classes[r.class_index], "class_index": r.class_index, "concept": r.concept,
                 "tcav_mean": r.score_mean, "tcav_std": r.score_std, "random_mean": r.random_mean,
                 "p_value": r.p_value, "p_value_corrected": r.p_value_corrected, "significant": r.significant,
                 "cav_accuracy": r.cav_accuracy, "n_concept_examples": r.n_concept_examples,
                 "n_class_examples": r.n_class_examples} for r in sorted(rows, key=lambda r: r.class_index)]

    def per_class(self, member: str | None = None) -> dict[str, dict[str, Any]]:
        """Per class: ``significant`` concepts (name, TCAV mean, random mean, corrected p; the
        direction is "raises" when the score is above the random one, else "lowers"), ``tested``
        and a plain ``line`` ("none of the N concepts tested is significant" where none is)."""
        rows = self.results if member is None else self.member_results[member]
        out: dict[str, dict[str, Any]] = {}
        for k, name in enumerate(self.classes):
            tested = [r for r in rows if r.class_index == k]
            sig = [{"concept": r.concept, "tcav_mean": r.score_mean, "random_mean": r.random_mean,
                    "p_value_corrected": r.p_value_corrected, "cav_accuracy": r.cav_accuracy,
                    "direction": "raises" if r.score_mean > r.random_mean else "lowers"}
                   for r in tested if r.significant]
            if not tested:
                line = f"{name}: no concept was tested."
            elif not sig:
                line = f"{name}: none of the {len(tested)} concepts tested is significant (random-CAV test)."
            else:
                line = f"{name}: " + "; ".join(
                    f"{s['concept']} {s['direction']} the {name} logit (TCAV {s['tcav_mean']:.2f} vs random "
                    f"{s['random_mean']:.2f}, corrected p {s['p_value_corrected']:.2g})" for s in sig) + "."
            out[name] = {"significant": sig, "tested": [r.concept for r in tested], "line": line}
        return out

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest: concepts, example counts, significant pairs, notes."""
        return {"concepts": self.concepts, "members": [asdict(m) for m in self.members],
                "concept_counts": self.concept_counts, "n_tests": len(self.results),
                "significant": [f"{r.concept}->{self.classes[r.class_index]}" for r in self.results if r.significant],
                "notes": self.notes, "settings": self.settings}

    # -- persistence --

    def _meta(self) -> dict[str, Any]:
        keys = list(self.cavs)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "classes": list(self.classes),
            "members": [asdict(m) for m in self.members],
            "cavs": [_vector_meta(self.cavs[key]) | {"array": f"cav_{i}"} for i, key in enumerate(keys)],
            "results": [asdict(r) for r in self.results],
            "member_results": {m: [asdict(r) for r in rows] for m, rows in self.member_results.items()},
            "concept_counts": self.concept_counts, "notes": self.notes, "settings": self.settings,
        }

    def save(self, directory: str | Path | None = None) -> Path:
        """Write ``concepts.json`` and ``cavs.npz`` into ``directory`` (default: the folder recorded
        at learning time, ``<bundle>/concepts``); returns the folder."""
        if directory is None:
            directory = self.settings.get("default_dir")
            if directory is None:
                raise ValueError("The 'directory' parameter is required: this bank records no default folder.")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        np.savez(out / CAVS_NPZ, **{e["array"]: self.cavs[(e["member"], e["concept"])].vector for e in meta["cavs"]})
        (out / CONCEPTS_JSON).write_text(json.dumps(meta, indent=2, default=_json_default))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> ConceptBank:
        """Read a bank written by :meth:`save` (``directory`` or a bundle folder holding ``concepts/``)."""
        d = Path(directory)
        if not (d / CONCEPTS_JSON).is_file() and (d / BANK_FOLDER / CONCEPTS_JSON).is_file():
            d = d / BANK_FOLDER
        for name in (CONCEPTS_JSON, CAVS_NPZ):
            if not (d / name).is_file():
                raise DataError(f"Concept bank file {d / name} is missing: expected {CONCEPTS_JSON} and {CAVS_NPZ} "
                                "written by ConceptBank.save (`skinlesion explain concepts`).")
        try:
            meta = json.loads((d / CONCEPTS_JSON).read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{d / CONCEPTS_JSON} is not valid JSON ({e}).") from None
        if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise DataError(f"{d / CONCEPTS_JSON}: expected format {FORMAT!r} version <= {FORMAT_VERSION}. "
                            f"Got {meta.get('format')!r} version {meta.get('format_version')!r}.")
        with np.load(d / CAVS_NPZ) as arrays:
            missing = [e["array"] for e in meta["cavs"] if e["array"] not in arrays]
            if missing:
                raise DataError(f"{d / CAVS_NPZ} lacks the CAV array(s) {missing} listed in {CONCEPTS_JSON}.")
            cavs = {(e["member"], e["concept"]): ConceptVector(
                **{k: v for k, v in e.items() if k != "array"}, vector=arrays[e["array"]]) for e in meta["cavs"]}
        return cls(classes=tuple(meta["classes"]), members=[BankMember(**m) for m in meta["members"]], cavs=cavs,
                   results=[_result(r) for r in meta["results"]],
                   member_results={m: [_result(r) for r in rows] for m, rows in meta["member_results"].items()},
                   concept_counts=meta["concept_counts"], notes=list(meta["notes"]), settings=meta["settings"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConceptBank):
            return NotImplemented
        same_meta = json.loads(json.dumps(self._meta(), default=_json_default)) == json.loads(
            json.dumps(other._meta(), default=_json_default))
        return same_meta and all(np.array_equal(v.vector, other.cavs[k].vector) and v.vector.dtype ==
                                 other.cavs[k].vector.dtype for k, v in self.cavs.items())


def _vector_meta(v: ConceptVector) -> dict[str, Any]:
    return {"member": v.member, "concept": v.concept, "layer": v.layer, "accuracy": v.accuracy,
            "accuracy_std": v.accuracy_std, "consistency": v.consistency, "n_runs": v.n_runs}


def _result(d: Mapping[str, Any]) -> ConceptResult:
    return ConceptResult(**{**d, "scores": tuple(d["scores"]), "random_scores": tuple(d["random_scores"])})


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Cannot write {type(o).__name__} to {CONCEPTS_JSON}")


__all__ = ["BANK_FOLDER", "CAVS_NPZ", "CONCEPTS_JSON", "FORMAT", "FORMAT_VERSION", "BankMember", "ConceptBank",
           "ConceptVector"]

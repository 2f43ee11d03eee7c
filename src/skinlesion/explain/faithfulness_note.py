"""What the report says about the attention map's measured faithfulness, and where it comes from.

Measurements are made by ``bench/faithfulness.py --compare`` (:mod:`.faithfulness_compare`) and
kept as data: in the bundle's ``bundle.json`` under ``attention_faithfulness`` (a list of
entries) or in the packaged :data:`MEASURED_FILE`. An entry names the member weights it was
measured on (``weights_sha256``) and their input sizes (``input_sizes``; an entry without them was
measured at the members' training size), the configuration (``config``, e.g. ``"layercam@blocks.4+bn2"``)
and the paired results against smooth random maps and the lesion's area fraction.

:func:`faithfulness_note` finds the entry for the map shown: measured on these very weights at the
size the bundle feeds them, else on these weights at another size (said so), else on another bundle
of the same backbone(s) (said so), else none (said so: unverified). The line
states the numbers whether or not the map beats random maps; it never hides a failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from skinlesion._params import hw_text
from skinlesion.explain.faithfulness import beats_random

MEASURED_FILE = Path(__file__).with_name("attention_faithfulness.json")
META_KEY = "attention_faithfulness"
_RESULT_KEYS = ("deletion", "insertion", "mass_in_bbox", "mass_in_segmentation")


@lru_cache(maxsize=4)
def _packaged(path: str) -> tuple[dict[str, Any], ...]:
    p = Path(path)
    if not p.is_file():
        return ()
    data = json.loads(p.read_text())
    return tuple(data.get("entries", []))


def measured_entries(bundle: Any = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Entries of the bundle's ``bundle.json`` (first) and of the packaged file ``path``."""
    own = list((getattr(bundle, "meta", None) or {}).get(META_KEY, []) or [])
    return own + list(_packaged(str(path or MEASURED_FILE)))


def config_name(method: str, layers: Sequence[str], views: Sequence[str] = ("identity",), input_scale: float = 1.0) -> str:
    """The configuration's spec string (as :class:`~.faithfulness_compare.CamConfig` names it)."""
    from skinlesion.explain.faithfulness_compare import CamConfig

    return CamConfig(method, tuple(layers), tuple(views), float(input_scale)).name


def describe(config: str) -> str:
    """``"layercam@blocks.4+bn2;views=..."`` -> ``"Layer-CAM at blocks.4 + bn2 (views ...)"``."""
    from skinlesion.explain.cam import METHOD_NAMES

    head, *opts = config.split(";")
    method, _, layers = head.partition("@")
    out = METHOD_NAMES.get(method, method) + (f" at {layers.replace('+', ' + ')}" if layers else "")
    extras = [o.replace("views=", "views ").replace("scale=", "input x") for o in opts]
    return out + (f" ({'; '.join(extras)})" if extras else "")


def _ci(s: Mapping[str, Any], digits: int = 3) -> str:
    return f"{s['difference']:+.{digits}f}, 95% CI {s['ci_low']:+.{digits}f} to {s['ci_high']:+.{digits}f}"


def note_line(entry: Mapping[str, Any], scope: str) -> str:
    """One sentence with the numbers of an entry; ``scope`` says what it was measured on."""
    d, i = entry["deletion"], entry["insertion"]
    parts = [
        f"deletion AUC {d['mean']:.3f} vs {d['reference']:.3f} for smooth random maps ({_ci(d)}; lower is better)",
        f"insertion AUC {i['mean']:.3f} vs {i['reference']:.3f} ({_ci(i)}; higher is better)",
    ]
    for key, what in (("mass_in_bbox", "the reference lesion box"), ("mass_in_segmentation", "the segmented lesion")):
        m = entry.get(key)
        if m:
            parts.append(f"{100 * m['mean']:.0f}% of the map inside {what} vs {100 * m['reference']:.0f}% of the image it covers")
    fails = [
        what for ok, what in (
            (beats_random("deletion", d), "deletion"), (beats_random("insertion", i), "insertion"),
            (all(beats_random(k, entry[k]) for k in ("mass_in_bbox", "mass_in_segmentation") if entry.get(k)), "mass in the lesion"),
        ) if not ok
    ]
    verdict = ("It beats random maps on deletion and insertion and concentrates on the lesion (intervals exclude 0)."
               if not fails else f"It is NOT shown to beat chance on: {', '.join(fails)}; read it with caution.")
    return (f"Measured faithfulness of this attention map ({describe(entry['config'])}; {scope}; "
            f"{entry.get('split', 'test')} split of {entry.get('dataset', 'HAM10000')}, {entry['n_lesions']} lesions, "
            f"paired lesion bootstrap; {entry.get('source', 'bench/faithfulness.py')}): " + "; ".join(parts) + ". " + verdict)


def stratum_of(entry: Mapping[str, Any], class_name: str | None) -> str | None:
    """The ``by_prediction`` stratum of an entry that holds maps explaining ``class_name``: its own
    class when it has one, else ``"other classes"``; None when the entry has no strata."""
    strata = entry.get("by_prediction") or {}
    if not strata or class_name is None:
        return None
    return class_name if class_name in strata else "other classes" if "other classes" in strata else None


def stratum_line(entry: Mapping[str, Any], stratum: str) -> str:
    """One sentence on the images of one predicted-class stratum (deletion and insertion vs random maps)."""
    r = entry["by_prediction"][stratum]
    d, i = r["deletion"], r["insertion"]
    what = f"images predicted {stratum}" if stratum != "other classes" else "images predicted as classes without their own stratum"
    fails = [name for name, res in (("deletion", d), ("insertion", i)) if not beats_random(name, res)]
    verdict = "it beats random maps on both" if not fails else f"it does NOT beat random maps on {' and '.join(fails)}"
    return (f"For the {r['n']} {what}: deletion {_ci(d)}, insertion {_ci(i)} against random maps; {verdict}.")


def _hashes(bundle: Any) -> tuple[list[str], list[str]]:
    members = list(getattr(bundle, "members", []))
    return sorted(str(m.meta.get("weights_sha256")) for m in members), sorted({m.backbone for m in members})


def _sizes(bundle: Any, *, trained: bool = False) -> list[str]:
    """The members' input sizes ``"HxW"`` (sorted): what the bundle feeds them, or (``trained``) what
    they were trained at, which differs when the bundle predicts at a test-time resolution."""
    out = []
    for m in getattr(bundle, "members", []):
        pre = getattr(m, "preprocessing", None) or {}
        size = (trained and pre.get("trained_input_size")) or pre.get("input_size")
        if size:
            out.append(hw_text(size))
    return sorted(out)


def faithfulness_note(
    bundle: Any, config: str, path: str | Path | None = None, *, class_name: str | None = None
) -> dict[str, Any]:
    """``{"measured", "scope", "beats_random", "line", "config", ...numbers}`` for the map ``config``
    shown for ``bundle`` (see the module doc). ``measured`` is False when nothing matches.

    ``class_name``: the class the map explains; when the entry was also measured per predicted
    class (``by_prediction``), the line adds that class's stratum and ``for_class`` holds it."""
    weights, backbones = _hashes(bundle)
    sizes, trained = _sizes(bundle), _sizes(bundle, trained=True)
    entries = [e for e in measured_entries(bundle, path) if e.get("config") == config]
    own = [e for e in entries if sorted(e.get("weights_sha256", [])) == weights]
    at = lambda e: sorted(e["input_sizes"]) if e.get("input_sizes") else trained  # noqa: E731 - older entries: the training size
    exact = [e for e in own if at(e) == sizes]
    same = [e for e in entries if sorted(e.get("backbones", [])) == backbones]
    if exact:
        entry, scope = exact[0], "measured on this bundle's members"
    elif own:
        entry = own[0]
        scope = (f"measured on this bundle's members at input {'/'.join(at(entry))}, not at the {'/'.join(sizes)} "
                 "this bundle predicts at")
    elif same:
        entry = same[0]
        scope = f"measured on {entry.get('bundle', 'another bundle')} with the same backbone, not on this bundle"
    else:
        return {"measured": False, "scope": None, "beats_random": None, "config": config,
                "line": f"The faithfulness of this attention map ({describe(config)}) has not been measured for this "
                        "bundle or its backbone: treat it as unverified."}
    stratum = stratum_of(entry, class_name)
    line = note_line(entry, scope) + (f" {stratum_line(entry, stratum)}" if stratum else "")
    for_class = None
    if stratum:
        r = entry["by_prediction"][stratum]
        for_class = {"stratum": stratum, "n": r["n"], "beats_random": all(beats_random(k, r[k]) for k in ("deletion", "insertion")),
                     **{k: {f: r[k][f] for f in ("difference", "ci_low", "ci_high")} for k in ("deletion", "insertion")}}
    return {
        "measured": True, "scope": scope, "beats_random": bool(entry.get("passes")), "config": config,
        "line": line, "for_class": for_class,
        **{k: {f: entry[k][f] for f in ("mean", "reference", "difference", "ci_low", "ci_high")} for k in _RESULT_KEYS if entry.get(k)},
        "n_lesions": entry["n_lesions"], "source": entry.get("source"),
    }


def entry_from_comparison(result: Mapping[str, Any], config: str, bundle: Any, *, label: str, source: str) -> dict[str, Any]:
    """An entry for :data:`MEASURED_FILE` from a :func:`~.faithfulness_compare.compare_configurations` result."""
    if config not in result["summary"]:
        raise ValueError(f"The 'config' parameter must be one of the compared configurations "
                         f"{sorted(result['summary'])}. Got {config!r} instead.")
    s = result["summary"][config]
    weights, backbones = _hashes(bundle)
    keep = ("mean", "reference", "difference", "ci_low", "ci_high", "p_value", "n")
    return {
        "bundle": label, "weights_sha256": weights, "backbones": backbones, "input_sizes": _sizes(bundle),
        "config": config, "dataset": "HAM10000",
        "split": result["split"], "n": result["n"], "n_lesions": result["n_lesions"], "passes": s["passes"],
        **{k: {f: s[k][f] for f in keep} for k in _RESULT_KEYS}, "source": source,
        "by_prediction": {
            name: {"n": r["n"], **{k: {f: r[k][f] for f in keep if f in r[k]} for k in ("deletion", "insertion")}}
            for name, r in (s.get("by_prediction") or {}).items()
        },
        "settings": {k: result["settings"][k] for k in ("steps", "baseline", "n_random", "random_kind", "seed", "n_boot")},
    }


def write_entries(entries: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Path:
    """Add ``entries`` to the packaged file, replacing any of the same weights and configuration."""
    p = Path(path or MEASURED_FILE)
    old = json.loads(p.read_text()).get("entries", []) if p.is_file() else []
    key = lambda e: (tuple(sorted(e["weights_sha256"])), e["config"], tuple(sorted(e.get("input_sizes") or [])))  # noqa: E731
    new_keys = {key(e) for e in entries}
    data = {"about": "Attention-map faithfulness measured by bench/faithfulness.py --compare; read by "
                     "skinlesion.explain.faithfulness_note.", "entries": [e for e in old if key(e) not in new_keys] + list(entries)}
    from skinlesion.metrics.classification import to_jsonable

    p.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")
    _packaged.cache_clear()
    return p


__all__ = ["MEASURED_FILE", "META_KEY", "config_name", "describe", "entry_from_comparison", "faithfulness_note",
           "measured_entries", "note_line", "write_entries"]

"""One vocabulary for diagnostic classes across ISIC 2018, ISIC 2019, HAM10000 and DermaMNIST.

Canonical names are the upper-case ISIC 2018 abbreviations, extended with the two ISIC 2019
classes. ``AK`` (ISIC 2019, actinic keratosis) maps to ``AKIEC`` (HAM10000 / ISIC 2018: actinic
keratoses *and* intraepithelial carcinoma / Bowen's disease). The mapping is a convention, not an
identity: ISIC 2019 files Bowen's disease under ``SCC``. Keep that in mind when mixing datasets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

#: Canonical class names, in ISIC 2018 then ISIC 2019 order.
CANONICAL: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC", "SCC", "UNK")

#: Column order of the ISIC 2018 Task 3 ground truth and submission files (canonical names).
ISIC2018_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

#: Column names of the ISIC 2019 ground truth file, in file order (dataset-native names).
ISIC2019_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")

#: DermaMNIST (MedMNIST v2) integer labels -> canonical names.
DERMAMNIST_CLASSES: tuple[str, ...] = ("AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC")

#: Classes counted as malignant (or malignant precursor) for the malignant BACC.
MALIGNANT: frozenset[str] = frozenset({"MEL", "BCC", "AKIEC", "SCC"})

#: Human-readable names for reports.
DISPLAY_NAMES: dict[str, str] = {
    "MEL": "Melanoma",
    "NV": "Melanocytic nevus",
    "BCC": "Basal cell carcinoma",
    "AKIEC": "Actinic keratosis / intraepithelial carcinoma",
    "BKL": "Benign keratosis-like lesion",
    "DF": "Dermatofibroma",
    "VASC": "Vascular lesion",
    "SCC": "Squamous cell carcinoma",
    "UNK": "Unknown / none of the others",
}

_ALIASES: dict[str, str] = {
    "mel": "MEL",
    "melanoma": "MEL",
    "nv": "NV",
    "nevus": "NV",
    "naevus": "NV",
    "bcc": "BCC",
    "akiec": "AKIEC",
    "ak": "AKIEC",
    "actinic keratosis": "AKIEC",
    "bkl": "BKL",
    "df": "DF",
    "dermatofibroma": "DF",
    "vasc": "VASC",
    "scc": "SCC",
    "unk": "UNK",
    "unknown": "UNK",
}


class UnknownLabelError(ValueError):
    """A label that is not part of the class vocabulary."""


def canonical_label(name: str) -> str:
    """Map a dataset-native label (``akiec``, ``AK``, ``AKIEC``, ``mel``...) to its canonical name.

    Raises:
        UnknownLabelError: the label is not known; the message lists the accepted names.
    """
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    accepted = sorted(set(_ALIASES) | {c.lower() for c in CANONICAL})
    raise UnknownLabelError(f"Unknown class label {name!r}; expected one of {accepted} (case-insensitive).")


def canonical_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names for a sequence of labels, keeping order and rejecting duplicates."""
    out = tuple(canonical_label(n) for n in names)
    if len(set(out)) != len(out):
        raise ValueError(f"Class list {list(names)!r} maps to duplicate canonical names {list(out)!r}.")
    return out


def order_classes(present: Iterable[str]) -> tuple[str, ...]:
    """The classes in ``present`` in canonical order (ISIC 2018 order first)."""
    s = {canonical_label(p) for p in present}
    return tuple(c for c in CANONICAL if c in s)


def malignant_indices(classes: Sequence[str]) -> list[int]:
    """Indices of the malignant classes (MEL, BCC, AKIEC, SCC) in ``classes``."""
    return [i for i, c in enumerate(classes) if c in MALIGNANT]

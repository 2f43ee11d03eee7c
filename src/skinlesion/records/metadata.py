"""The record's ``metadata`` part: patient metadata (age, sex, anatomical site) checked and summarised.

Optional everywhere: an absent field is *missing*, which metadata fusion members
(:mod:`skinlesion.models.fusion`) were trained for (metadata dropout); image-only members ignore
it. Values are checked and normalised as the training encoder checks them
(:mod:`skinlesion.data.metadata`: age a number of years in [0, 120], sex male/female, site text;
``""``/``"unknown"`` mean missing), so an invalid value is refused before any model runs, with the
field and the value named (:class:`MetadataError`).

Every prediction record carries :func:`metadata_summary`: the normalised values the fusion members
received (``used``; ``None`` when everything was missing), which members take metadata, and what
was given but not used (a site the model never saw in training is encoded as unknown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from skinlesion.data.metadata import FEATURES, MetadataEncoder, parse_age, parse_sex, parse_site
from skinlesion.errors import SkinLesionError
from skinlesion.records.schema import MetadataInfo

if TYPE_CHECKING:
    from skinlesion.ensemble.bundle import Bundle
    from skinlesion.ensemble.members import Member

#: Metadata fields accepted with an image (the encoder's features).
FIELDS: tuple[str, ...] = FEATURES
_PARSERS = {"age": parse_age, "sex": parse_sex, "site": parse_site}


class MetadataError(SkinLesionError, ValueError):
    """An invalid metadata value (reason code ``invalid_metadata``); ``field`` and ``value`` name it."""

    reason = "invalid_metadata"

    def __init__(self, message: str, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field, self.value = field, value


def normalise_metadata(record: Mapping[str, Any] | None, where: str = "the metadata") -> dict[str, Any] | None:
    """``{"age": float | None, "sex": str | None, "site": str | None}``, or None when nothing is given.

    Raises :class:`MetadataError` for a key other than age/sex/site or an invalid value.
    """
    if record is None:
        return None
    if not isinstance(record, Mapping):
        raise MetadataError(f"{where} must be a dict with keys among {list(FIELDS)}. Got {record!r} instead.")
    unknown = sorted(str(k) for k in record if k not in FIELDS)
    if unknown:
        raise MetadataError(f"{where} has unknown field(s) {unknown}; metadata fields are {list(FIELDS)}.", unknown[0])
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = record.get(field)
        try:
            out[field] = _PARSERS[field](value, where)
        except ValueError as e:
            raise MetadataError(str(e), field, value) from None
    if out["age"] != out["age"]:  # NaN: missing
        out["age"] = None
    return out if any(v is not None for v in out.values()) else None


def normalise_records(metadata: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[dict[str, Any]] | None:
    """One normalised record per image (``{}``-like all-None dicts for missing ones), or None when
    every image's metadata is missing (the same prediction as giving none)."""
    if metadata is None:
        return None
    if isinstance(metadata, (Mapping, str)) or not isinstance(metadata, Sequence) or len(metadata) != n:
        got = len(metadata) if isinstance(metadata, Sequence) and not isinstance(metadata, str) else type(metadata).__name__
        raise MetadataError(
            f"The 'metadata' parameter must hold one record (a dict or None) per image ({n}). Got {got} instead."
        )
    records = [normalise_metadata(r, f"metadata[{i}]") for i, r in enumerate(metadata)]
    if all(r is None for r in records):
        return None
    return [r if r is not None else dict.fromkeys(FIELDS) for r in records]


def encoder_of(member: Member) -> MetadataEncoder | None:
    """The fitted metadata encoder of a fusion member, None for an image-only member."""
    encoder = getattr(member.model, "metadata_encoder", None)
    return encoder if isinstance(encoder, MetadataEncoder) else None


def metadata_members(bundle: Bundle) -> list[Member]:
    """The bundle's members that take metadata (metadata fusion members)."""
    return [m for m in bundle.members if encoder_of(m) is not None]


def metadata_summary(bundle: Bundle, record: Mapping[str, Any] | None) -> MetadataInfo:
    """What a prediction used: ``used`` (normalised values of the features the fusion members take,
    None for a missing one; None when all are missing), ``members_using_metadata``, ``features``
    (what the bundle can use) and, when something given was not used, ``ignored`` (field -> why)."""
    members = metadata_members(bundle)
    encoders = [encoder_of(m) for m in members]
    features = [f for f in FIELDS if any(f in e.features for e in encoders if e is not None)]
    given = {f: v for f, v in (record or {}).items() if v is not None}
    ignored: dict[str, str] = {}
    used: dict[str, Any] | None = None
    if given:
        used = {}
        for f in features:
            value = given.get(f)
            known = [e.sites_ for e in encoders if e is not None and "site" in e.features]
            if f == "site" and value is not None and not any(value in sites for sites in known):
                ignored[f] = f"{value!r} is not a site the model was trained with: encoded as unknown"
                value = None
            used[f] = value
        for f in given:
            if f not in features:
                ignored[f] = "no member of this bundle uses it" if members else "this bundle's members use no metadata"
        if all(v is None for v in used.values()):
            used = None
    out = MetadataInfo(used=used, members_using_metadata=[m.name for m in members], features=features)
    if ignored:
        out["ignored"] = ignored
    return out

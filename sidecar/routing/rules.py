"""Route rules as typed, validated configuration (conf/routes.yaml).

A rule matches header values of a series' first instance (and model-contributed predicates) and
names a model, a mode, the outputs and the destinations. Nothing here is evaluated as code.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    """An inclusive range; either bound may be left out."""

    min: int | None = None
    max: int | None = None


class Match(_Strict):
    """Header conditions; every condition given must hold. Lists mean "any of".

    String comparisons of coded values (Modality, BodyPartExamined, Manufacturer, calling AE)
    are case-insensitive. `*_regex` fields are Python regular expressions searched
    (not anchored) case-insensitively. A missing tag never matches a condition on it.
    """

    modality: list[str] | None = None
    body_part: list[str] | None = None
    series_description_regex: str | None = None
    protocol_name_regex: str | None = None
    description_regex: str | None = None  # SeriesDescription OR ProtocolName
    image_type_contains: list[str] | None = None  # all of these values in ImageType
    image_type_excludes: list[str] | None = None  # none of these values in ImageType
    sop_class_uid: list[str] | None = None
    number_of_frames: IntRange | None = None
    manufacturer_regex: str | None = None
    calling_ae: list[str] | None = None
    predicates: list[str] | None = None  # model-contributed, e.g. "us.has_doppler"; all must hold
    not_predicates: list[str] | None = None  # none of these may hold

    @field_validator(
        "series_description_regex",
        "protocol_name_regex",
        "description_regex",
        "manufacturer_regex",
    )
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return v


class Route(_Strict):
    """One ordered rule of routes.yaml; the first enabled rule that matches wins."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    mode: Literal["instance", "series"] = "series"
    match: Match = Match()
    outputs: list[Literal["sr", "sc", "gsps", "alert"]] = ["sr"]
    destinations: list[str] = []
    quiet_s: float = Field(default=10.0, gt=0)
    expected_count: int | None = Field(default=None, ge=1)
    complete_on_release: bool = False
    enabled: bool = True

"""Route rules as typed, validated configuration (conf/routes.yaml).

A rule matches header values of a series' first instance (and model-contributed predicates) and
names a model, a mode, the outputs and the destinations. Nothing here is evaluated as code.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntRange(_Strict):
    """An inclusive range; either bound may be left out."""

    min: int | None = None
    max: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Match(_Strict):
    """Header conditions; every condition given must hold. Lists mean "any of".

    String comparisons of coded values (Modality, BodyPartExamined, Manufacturer, calling AE)
    are case-insensitive. `*_regex` fields are Python regular expressions searched
    (not anchored) case-insensitively. A missing tag never matches a condition on it.

    ImageType (0008,0008) is multi-valued; its values are compared case-insensitively, and a
    missing ImageType fails `image_type_excludes` too. NumberOfFrames (0028,0008) absent counts
    as 1 (a single-frame object); a non-integer value fails the condition. A predicate that
    raises, or whose name no model contributes, fails its condition in `predicates` and
    `not_predicates` alike: an unknown cue never sends a series to a model.

    A list given must name at least one value: an empty list could never match and is rejected
    when the file is loaded rather than silently disabling the rule.
    """

    modality: list[str] | None = None
    body_part: list[str] | None = None
    series_description_regex: str | None = None
    protocol_name_regex: str | None = None
    description_regex: str | None = None  # SeriesDescription OR ProtocolName
    description_excludes_regex: str | None = None  # in neither; holds when both are missing
    image_type_contains: list[str] | None = None  # all of these values in ImageType
    image_type_excludes: list[str] | None = None  # none of these values in ImageType
    sop_class_uid: list[str] | None = None
    number_of_frames: IntRange | None = None
    manufacturer_regex: str | None = None
    calling_ae: list[str] | None = None
    predicates: list[str] | None = None  # model-contributed, e.g. "us.has_doppler"; all must hold
    not_predicates: list[str] | None = None  # none of these may hold

    @field_validator(
        "modality",
        "body_part",
        "image_type_contains",
        "image_type_excludes",
        "sop_class_uid",
        "calling_ae",
        "predicates",
        "not_predicates",
    )
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("at least one value (leave the key out to not test it)")
            if any(not item.strip() for item in v):
                raise ValueError("values must not be blank")
        return v

    @field_validator(
        "series_description_regex",
        "protocol_name_regex",
        "description_regex",
        "description_excludes_regex",
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
    # A series short of its known expected count waits this long with no new instance before the
    # quiet timer completes it anyway (None: 10 x quiet_s), so a cut-short send gets one result.
    short_grace_s: float | None = Field(default=None, gt=0)
    complete_on_release: bool = False
    enabled: bool = True
    # An input outside the model's validated domain (models/guard.py) is never an alert; "flag"
    # writes the model's result beside the "not assessed" statement, "suppress" only the statement.
    out_of_domain: Literal["flag", "suppress"] = "flag"
    # Silent trial: false runs the model on real traffic and keeps results and would-be alerts in
    # the results store, journal and dashboard, but sends nothing to the PACS or the console.
    live: bool = True

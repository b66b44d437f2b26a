"""The pure routing function: which rule of routes.yaml sends this instance to which model.

`route()` tries the rules in order and returns the first whose every condition holds, with a
trace of every condition of every rule it tried, so `sidecar route explain PATH` can show each
cue. Nothing is evaluated as code: conditions are the typed fields of `Match`, and predicates are
plain callables that the models contribute by name.

A missing tag or a malformed value never raises; the condition is false and the trace says
"(missing)" or "(malformed ...)". The trace only ever holds the header values the conditions
look at (never the patient's name, ID or birth date; see `_PhiMask`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID

from sidecar.routing.rules import IntRange, Match, Route

Predicate = Callable[[Dataset], bool]

MISSING = "(missing)"
_MAX_SHOWN = 80  # characters of a header value shown in a trace


@dataclass(frozen=True)
class ConditionResult:
    """One condition of one rule: what it wanted, what the header held, whether it held."""

    condition: str
    expected: str
    actual: str
    ok: bool


@dataclass(frozen=True)
class RuleTrace:
    """How one rule fared: matched, or skipped (with the reason), with every condition."""

    rule: str
    model: str
    matched: bool
    skipped: str | None
    conditions: tuple[ConditionResult, ...]


@dataclass(frozen=True)
class RouteDecision:
    """The winning rule (or None) and the trace of every rule tried, in order."""

    route: Route | None
    trace: tuple[RuleTrace, ...]

    @property
    def model(self) -> str | None:
        return self.route.model if self.route is not None else None


# --- reading header values without ever raising ---------------------------------------------


class _Malformed:
    """A value that is present but cannot be read as the condition needs."""

    def __init__(self, shown: str) -> None:
        self.shown = shown


def _raw(ds: Dataset, keyword: str) -> object | _Malformed | None:
    """The element's value; None when absent or empty; _Malformed when it cannot be read."""
    try:
        if keyword not in ds:
            return None
        value: object = ds[keyword].value
    except Exception as exc:  # pydicom value conversion of a corrupt element
        return _Malformed(f"(malformed: {type(exc).__name__})")
    if value is None or value == "" or (isinstance(value, Sequence) and len(value) == 0):
        return None
    return value


def _values(ds: Dataset, keyword: str) -> list[str] | _Malformed | None:
    """All values of a (possibly multi-valued) string element, stripped; None when absent."""
    value = _raw(ds, keyword)
    if value is None or isinstance(value, _Malformed):
        return value
    if isinstance(value, bytes):
        return _Malformed("(malformed: bytes)")
    # MultiValue and pydicom's Sequence are both abc Sequences (neither is a list).
    items: Iterable[object] = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, Dataset | bytes):
            return _Malformed(f"(malformed: {type(item).__name__})")
        out.append(str(item).strip())
    return [v for v in out if v] or None


def _text(ds: Dataset, keyword: str) -> str | _Malformed | None:
    """A string element as one string (multiple values joined with a backslash)."""
    vals = _values(ds, keyword)
    if vals is None or isinstance(vals, _Malformed):
        return vals
    return "\\".join(vals)


def _number_of_frames(ds: Dataset) -> int | _Malformed:
    """NumberOfFrames (0028,0008); absent or empty counts as 1 (a single-frame object)."""
    value = _raw(ds, "NumberOfFrames")
    if value is None:
        return 1
    if isinstance(value, _Malformed):
        return value
    if isinstance(value, bool):
        return _Malformed(f"(malformed: {value!r})")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    shown = value if isinstance(value, str) else repr(value)
    return _Malformed(f"(malformed: {_clip(shown)!r})")


# --- showing values --------------------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


class _PhiMask:
    """Masks this instance's own patient identifiers wherever a shown value repeats them.

    A technologist may type a name into SeriesDescription, or a predicate's error may quote the
    dataset; the trace feeds logs and the explain CLI, so neither may carry it.
    """

    _KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientBirthName")

    def __init__(self, ds: Dataset) -> None:
        found: set[str] = set()
        for keyword in self._KEYWORDS:
            vals = _values(ds, keyword)
            if not isinstance(vals, list):
                continue
            for v in vals:
                found.add(v)
                found.update(p.strip() for p in re.split(r"[\^=]", v))
        phi = sorted((s for s in found if len(s) >= 3), key=len, reverse=True)
        self._re = re.compile("|".join(map(re.escape, phi)), re.IGNORECASE) if phi else None

    def __call__(self, text: str) -> str:
        return self._re.sub("[phi]", text) if self._re is not None else text


def _show(value: str | _Malformed | None, mask: _PhiMask) -> str:
    if value is None:
        return MISSING
    if isinstance(value, _Malformed):
        return value.shown
    return repr(_clip(mask(value)))


def _one_of(values: Sequence[str]) -> str:
    return "one of " + ", ".join(values)


def _regex_shown(pattern: str) -> str:
    return f"/{pattern}/i"


def _range_shown(r: IntRange) -> str:
    if r.min is not None and r.max is not None:
        return f"{r.min}..{r.max}" if r.min != r.max else f"= {r.min}"
    if r.min is not None:
        return f">= {r.min}"
    if r.max is not None:
        return f"<= {r.max}"
    return "any"


def _uid_shown(uid: str) -> str:
    name = UID(uid).name
    return f"{uid} ({name})" if name and name != uid else uid


# --- conditions ------------------------------------------------------------------------------


def _coded(name: str, keyword: str, wanted: list[str], ds: Dataset, mask: _PhiMask) -> ConditionResult:
    value = _text(ds, keyword)
    ok = isinstance(value, str) and value.casefold() in {w.strip().casefold() for w in wanted}
    return ConditionResult(name, _one_of(wanted), _show(value, mask), ok)


def _searched(pattern: str, value: str | _Malformed | None) -> bool:
    return isinstance(value, str) and re.search(pattern, value, re.IGNORECASE) is not None


def _regex(name: str, keyword: str, pattern: str, ds: Dataset, mask: _PhiMask) -> ConditionResult:
    value = _text(ds, keyword)
    return ConditionResult(name, _regex_shown(pattern), _show(value, mask), _searched(pattern, value))


def _description(pattern: str, ds: Dataset, mask: _PhiMask) -> ConditionResult:
    """SeriesDescription (0008,103E) or ProtocolName (0018,1030) holds the pattern."""
    desc, proto = _text(ds, "SeriesDescription"), _text(ds, "ProtocolName")
    ok = _searched(pattern, desc) or _searched(pattern, proto)
    if desc is None and proto is None:
        actual = MISSING
    else:
        actual = f"SeriesDescription {_show(desc, mask)} / ProtocolName {_show(proto, mask)}"
    return ConditionResult("description_regex", _regex_shown(pattern), actual, ok)


def _description_excludes(pattern: str, ds: Dataset, mask: _PhiMask) -> ConditionResult:
    """Neither SeriesDescription nor ProtocolName holds the pattern. Missing text has nothing to
    exclude, so the condition holds; a malformed value fails closed."""
    desc, proto = _text(ds, "SeriesDescription"), _text(ds, "ProtocolName")
    malformed = isinstance(desc, _Malformed) or isinstance(proto, _Malformed)
    ok = not malformed and not (_searched(pattern, desc) or _searched(pattern, proto))
    if desc is None and proto is None:
        actual = f"{MISSING} (nothing to exclude)"
    else:
        actual = f"SeriesDescription {_show(desc, mask)} / ProtocolName {_show(proto, mask)}"
    return ConditionResult("description_excludes_regex", "not " + _regex_shown(pattern), actual, ok)


def _image_type(match: Match, ds: Dataset) -> list[ConditionResult]:
    out: list[ConditionResult] = []
    vals = _values(ds, "ImageType")
    have = {v.upper() for v in vals} if isinstance(vals, list) else set()
    actual = "\\".join(vals) if isinstance(vals, list) else (MISSING if vals is None else vals.shown)
    if match.image_type_contains is not None:
        want = [w.strip().upper() for w in match.image_type_contains]
        ok = isinstance(vals, list) and all(w in have for w in want)
        out.append(ConditionResult("image_type_contains", "all of " + ", ".join(want), actual, ok))
    if match.image_type_excludes is not None:
        bad = [w.strip().upper() for w in match.image_type_excludes]
        ok = isinstance(vals, list) and not any(w in have for w in bad)
        out.append(ConditionResult("image_type_excludes", "none of " + ", ".join(bad), actual, ok))
    return out


def _sop_class(wanted: list[str], ds: Dataset) -> ConditionResult:
    value = _text(ds, "SOPClassUID")
    ok = isinstance(value, str) and value in {w.strip() for w in wanted}
    if isinstance(value, str):
        actual = _clip(_uid_shown(value))
    else:
        actual = MISSING if value is None else value.shown
    return ConditionResult("sop_class_uid", _one_of([_uid_shown(w.strip()) for w in wanted]), actual, ok)


def _frames(r: IntRange, ds: Dataset) -> ConditionResult:
    n = _number_of_frames(ds)
    if isinstance(n, _Malformed):
        return ConditionResult("number_of_frames", _range_shown(r), n.shown, False)
    ok = (r.min is None or n >= r.min) and (r.max is None or n <= r.max)
    shown = str(n) if _raw(ds, "NumberOfFrames") is not None else "1 (absent)"
    return ConditionResult("number_of_frames", _range_shown(r), shown, ok)


def _calling_ae(wanted: list[str], calling_ae: str | None) -> ConditionResult:
    ae = calling_ae.strip() if calling_ae is not None else ""
    ok = bool(ae) and ae.casefold() in {w.strip().casefold() for w in wanted}
    return ConditionResult("calling_ae", _one_of(wanted), repr(ae) if ae else MISSING, ok)


def _predicate(
    name: str, expect: bool, ds: Dataset, predicates: Mapping[str, Predicate], mask: _PhiMask
) -> ConditionResult:
    """A model-contributed predicate; unknown or raising fails the condition (fails closed)."""
    label = "predicate" if expect else "not_predicate"
    expected = "true" if expect else "false"
    fn = predicates.get(name)
    if fn is None:
        return ConditionResult(f"{label} {name}", expected, "unknown predicate", False)
    try:
        value = bool(fn(ds))
    except Exception as exc:  # a model's cue must not take routing down; shown in the trace
        return ConditionResult(
            f"{label} {name}", expected, _clip(mask(f"error: {type(exc).__name__}: {exc}")), False
        )
    return ConditionResult(f"{label} {name}", expected, "true" if value else "false", value is expect)


def _conditions(
    match: Match,
    ds: Dataset,
    calling_ae: str | None,
    predicates: Mapping[str, Predicate],
    mask: _PhiMask,
) -> tuple[ConditionResult, ...]:
    """Every condition of `match`, evaluated; no short-circuit so the trace shows each cue."""
    out: list[ConditionResult] = []
    if match.modality is not None:
        out.append(_coded("modality", "Modality", match.modality, ds, mask))
    if match.body_part is not None:
        out.append(_coded("body_part", "BodyPartExamined", match.body_part, ds, mask))
    if match.series_description_regex is not None:
        out.append(
            _regex("series_description_regex", "SeriesDescription", match.series_description_regex, ds, mask)
        )
    if match.protocol_name_regex is not None:
        out.append(_regex("protocol_name_regex", "ProtocolName", match.protocol_name_regex, ds, mask))
    if match.description_regex is not None:
        out.append(_description(match.description_regex, ds, mask))
    if match.description_excludes_regex is not None:
        out.append(_description_excludes(match.description_excludes_regex, ds, mask))
    out.extend(_image_type(match, ds))
    if match.sop_class_uid is not None:
        out.append(_sop_class(match.sop_class_uid, ds))
    if match.number_of_frames is not None:
        out.append(_frames(match.number_of_frames, ds))
    if match.manufacturer_regex is not None:
        out.append(_regex("manufacturer_regex", "Manufacturer", match.manufacturer_regex, ds, mask))
    if match.calling_ae is not None:
        out.append(_calling_ae(match.calling_ae, calling_ae))
    for name in match.predicates or []:
        out.append(_predicate(name, True, ds, predicates, mask))
    for name in match.not_predicates or []:
        out.append(_predicate(name, False, ds, predicates, mask))
    return tuple(out)


# --- public ----------------------------------------------------------------------------------


def route(
    rules: Sequence[Route],
    ds: Dataset,
    *,
    calling_ae: str | None,
    predicates: Mapping[str, Predicate],
    available_models: Collection[str] | None = None,
) -> RouteDecision:
    """The first enabled rule, whose model is available, that `ds` satisfies; with the trace.

    Rules after the winner are not tried (predicates may read pixel data). `available_models`
    None means every model is available.
    """
    mask = _PhiMask(ds)
    trace: list[RuleTrace] = []
    for rule in rules:
        if not rule.enabled:
            trace.append(RuleTrace(rule.name, rule.model, False, "disabled", ()))
            continue
        if available_models is not None and rule.model not in available_models:
            trace.append(RuleTrace(rule.name, rule.model, False, f"model {rule.model!r} not available", ()))
            continue
        conds = _conditions(rule.match, ds, calling_ae, predicates, mask)
        matched = all(c.ok for c in conds)
        trace.append(RuleTrace(rule.name, rule.model, matched, None, conds))
        if matched:
            return RouteDecision(rule, tuple(trace))
    return RouteDecision(None, tuple(trace))


def explain(decision: RouteDecision, source_label: str) -> str:
    """A human-readable account: rule by rule, condition by condition, and the outcome.

    Only the header values the conditions look at are shown (see `_PhiMask`).
    """
    lines = [f"Routing {source_label}"]
    for i, rt in enumerate(decision.trace, start=1):
        head = f"  rule {i} {rt.rule!r} -> {rt.model}"
        if rt.skipped is not None:
            lines.append(f"{head}: skipped ({rt.skipped})")
            continue
        lines.append(f"{head}: {'MATCHED' if rt.matched else 'no match'}")
        if not rt.conditions:
            lines.append("      (no conditions: matches every instance)")
        for c in rt.conditions:
            mark = "✓" if c.ok else "✗"
            lines.append(f"    {mark} {c.condition}: expected {c.expected}; got {c.actual}")
    r = decision.route
    if r is None:
        lines.append(f"Result: no route matched ({len(decision.trace)} rules considered)")
    else:
        dests = ", ".join(r.destinations) or "(none)"
        lines.append(
            f"Result: rule {r.name!r} -> model {r.model} (mode {r.mode}); "
            f"outputs {', '.join(r.outputs)}; destinations {dests}"
        )
    return "\n".join(lines)


def validate_routes(routes: Sequence[Route], known_predicates: Collection[str]) -> list[str]:
    """Warnings about rules that load but cannot behave as written.

    Unknown predicate names (no model contributes them: the rule can never match), and rules
    that an earlier enabled rule without conditions makes unreachable.
    """
    warnings: list[str] = []
    known = set(known_predicates)
    catch_all: str | None = None
    for i, r in enumerate(routes):
        for field in ("predicates", "not_predicates"):
            for name in getattr(r.match, field) or []:
                if name not in known:
                    warnings.append(
                        f"routes.{i} ({r.name}): {field} names unknown predicate {name!r}; "
                        "the rule cannot match until a model provides it"
                    )
        if catch_all is not None and r.enabled:
            warnings.append(
                f"routes.{i} ({r.name}): unreachable while {catch_all!r} (before it, no conditions) "
                "is enabled and its model available"
            )
        if catch_all is None and r.enabled and r.match == Match():
            catch_all = r.name
    return warnings

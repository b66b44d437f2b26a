"""Routing rules: each condition, ordering, bad headers, predicates, explain, and routes.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import MRImageStorage, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from models.registry import load_predicates
from sidecar.routing import (
    Match,
    Predicate,
    Route,
    RouteDecision,
    explain,
    route,
    validate_routes,
)
from sidecar.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
PATIENT_NAME = "Zzyzx^Quentin"
PATIENT_ID = "PIDX-98765"
BIRTH_DATE = "19600229"


def make_ds(**attrs: Any) -> Dataset:
    """A minimal header with patient data present, so tests can check it never leaks."""
    ds = Dataset()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def raw(ds: Dataset, tag: int, vr: str, value: bytes) -> Dataset:
    """Put an element that pydicom will only convert when it is read (as from a file)."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)
    return ds


def rule(name: str = "r", model: str = "m", **match: Any) -> Route:
    return Route(name=name, model=model, match=Match(**match))


def decide(rules: list[Route], ds: Dataset, **kw: Any) -> RouteDecision:
    kw.setdefault("calling_ae", None)
    kw.setdefault("predicates", {})
    return route(rules, ds, **kw)


def ok_of(decision: RouteDecision, condition: str, rule_index: int = 0) -> bool:
    (c,) = [c for c in decision.trace[rule_index].conditions if c.condition == condition]
    return c.ok


class TestCodedValues:
    def test_modality_matches_case_insensitively(self) -> None:
        """Modality compares case-insensitively and a list means any of."""
        assert decide([rule(modality=["mr", "ct"])], make_ds(Modality="MR")).model == "m"
        assert decide([rule(modality=["US"])], make_ds(Modality="MR")).route is None

    def test_body_part_matches_any_of_list(self) -> None:
        """BodyPartExamined matches any listed value, ignoring case and padding."""
        assert decide([rule(body_part=["hand", "wrist"])], make_ds(BodyPartExamined="WRIST ")).route
        assert not decide([rule(body_part=["HAND"])], make_ds(BodyPartExamined="KNEE")).route

    def test_sop_class_uid_matches_exactly_and_shows_its_name(self) -> None:
        """SOP Class UID is compared exactly; the trace names the class."""
        rules = [rule(sop_class_uid=[UltrasoundImageStorage])]
        d = decide(rules, make_ds(SOPClassUID=UltrasoundImageStorage))
        assert d.route is not None
        assert "Ultrasound Image Storage" in d.trace[0].conditions[0].actual
        assert decide(rules, make_ds(SOPClassUID=UltrasoundMultiFrameImageStorage)).route is None

    def test_calling_ae_matches_case_insensitively(self) -> None:
        """The calling AE title compares case-insensitively, padding ignored."""
        r = [rule(calling_ae=["US_ROOM1"])]
        assert decide(r, make_ds(), calling_ae="us_room1 ").route
        assert not decide(r, make_ds(), calling_ae="MR_ROOM").route

    def test_unknown_calling_ae_is_missing(self) -> None:
        """No calling AE given fails the condition with "(missing)"."""
        d = decide([rule(calling_ae=["US_ROOM1"])], make_ds(), calling_ae=None)
        assert d.route is None
        assert d.trace[0].conditions[0].actual == "(missing)"

    def test_manufacturer_regex_is_searched(self) -> None:
        """manufacturer_regex is searched, not anchored, case-insensitively."""
        assert decide([rule(manufacturer_regex="siemens")], make_ds(Manufacturer="SIEMENS Healthineers")).route
        assert not decide([rule(manufacturer_regex="^ge")], make_ds(Manufacturer="Philips")).route


class TestRegexes:
    def test_series_description_regex_is_case_insensitive_search(self) -> None:
        """A lower-case pattern finds an upper-case word anywhere in the description."""
        ds = make_ds(SeriesDescription="SAX_PSIR_MOCO")
        assert decide([rule(series_description_regex="psir")], ds).route

    def test_protocol_name_regex_looks_only_at_protocol(self) -> None:
        """protocol_name_regex ignores SeriesDescription."""
        ds = make_ds(SeriesDescription="lge", ProtocolName="cine")
        assert not decide([rule(protocol_name_regex="lge")], ds).route
        assert decide([rule(protocol_name_regex="CINE")], ds).route

    def test_description_regex_accepts_either_description_or_protocol(self) -> None:
        """description_regex holds when SeriesDescription OR ProtocolName matches."""
        r = [rule(description_regex="breast")]
        assert decide(r, make_ds(SeriesDescription="L Breast")).route
        assert decide(r, make_ds(ProtocolName="BREAST_SWE")).route
        assert not decide(r, make_ds(SeriesDescription="thyroid", ProtocolName="neck")).route

    def test_description_regex_missing_both_is_missing(self) -> None:
        """With neither description nor protocol, the condition is false and "(missing)"."""
        d = decide([rule(description_regex="x")], make_ds())
        c = d.trace[0].conditions[0]
        assert (c.ok, c.actual) == (False, "(missing)")


class TestImageType:
    def test_contains_requires_all_values(self) -> None:
        """image_type_contains needs every listed value, in any case."""
        ds = make_ds(ImageType=["ORIGINAL", "PRIMARY", "M_SE"])
        assert decide([rule(image_type_contains=["original", "primary"])], ds).route
        assert not decide([rule(image_type_contains=["ORIGINAL", "DERIVED"])], ds).route

    def test_excludes_rejects_any_listed_value(self) -> None:
        """image_type_excludes fails when any listed value is present."""
        ds = make_ds(ImageType=["DERIVED", "SECONDARY"])
        assert not decide([rule(image_type_excludes=["derived"])], ds).route
        assert decide([rule(image_type_excludes=["LOCALIZER"])], ds).route

    def test_single_valued_image_type_works(self) -> None:
        """A one-value ImageType (a plain str in pydicom) still matches."""
        assert decide([rule(image_type_contains=["ORIGINAL"])], make_ds(ImageType="ORIGINAL")).route

    def test_missing_image_type_fails_both(self) -> None:
        """A missing ImageType fails contains and excludes alike."""
        d = decide([rule(image_type_contains=["ORIGINAL"], image_type_excludes=["DERIVED"])], make_ds())
        assert d.route is None
        assert [c.actual for c in d.trace[0].conditions] == ["(missing)", "(missing)"]


class TestNumberOfFrames:
    def test_absent_counts_as_one(self) -> None:
        """No NumberOfFrames means a single frame."""
        assert decide([rule(number_of_frames={"max": 1})], make_ds()).route
        assert not decide([rule(number_of_frames={"min": 2})], make_ds()).route

    def test_range_is_inclusive(self) -> None:
        """min and max are both inclusive."""
        r = [rule(number_of_frames={"min": 10, "max": 20})]
        assert decide(r, make_ds(NumberOfFrames=10)).route
        assert decide(r, make_ds(NumberOfFrames=20)).route
        assert not decide(r, make_ds(NumberOfFrames=21)).route

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_non_numeric_value_is_false_not_an_error(self) -> None:
        """A NumberOfFrames of "abc" fails the condition and says it is malformed."""
        ds = raw(make_ds(), 0x00280008, "IS", b"abc ")
        d = decide([rule(number_of_frames={"min": 1})], ds)
        c = d.trace[0].conditions[0]
        assert not c.ok and "malformed" in c.actual and "abc" in c.actual

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_fractional_value_is_malformed(self) -> None:
        """A NumberOfFrames of 2.5 is not a frame count."""
        ds = raw(make_ds(), 0x00280008, "IS", b"2.5 ")
        assert not decide([rule(number_of_frames={"min": 1})], ds).route

    def test_inverted_range_is_rejected_at_load(self) -> None:
        """min greater than max is a configuration error."""
        with pytest.raises(ValidationError):
            Match.model_validate({"number_of_frames": {"min": 5, "max": 1}})


class TestMissingAndMalformed:
    def test_missing_tag_is_false_with_missing_actual(self) -> None:
        """A condition on an absent tag fails and shows "(missing)"."""
        d = decide([rule(modality=["MR"], body_part=["HAND"])], make_ds())
        assert d.route is None
        assert {c.actual for c in d.trace[0].conditions} == {"(missing)"}

    def test_empty_value_counts_as_missing(self) -> None:
        """A present but empty (type 2) element is treated as missing."""
        d = decide([rule(body_part=["HAND"])], make_ds(BodyPartExamined=""))
        assert d.trace[0].conditions[0].actual == "(missing)"

    def test_multi_valued_modality_does_not_match_or_raise(self) -> None:
        """A corrupt multi-valued Modality matches no single code."""
        ds = raw(make_ds(), 0x00080060, "CS", b"MR\\CT ")
        d = decide([rule(modality=["MR"])], ds)
        assert d.route is None
        assert "MR" in d.trace[0].conditions[0].actual and "CT" in d.trace[0].conditions[0].actual

    def test_undecodable_description_does_not_raise(self) -> None:
        """Bytes that are not valid text still give a result, not an exception."""
        ds = raw(make_ds(), 0x0008103E, "LO", b"\xff\xfe\x00a")
        d = decide([rule(series_description_regex="psir")], ds)
        assert d.route is None

    def test_sequence_where_text_expected_is_malformed(self) -> None:
        """An element holding a sequence instead of text fails, without raising."""
        ds = make_ds()
        ds.add_new(0x00180015, "SQ", [Dataset()])  # BodyPartExamined with a wrong VR
        d = decide([rule(body_part=["hand"])], ds)
        assert d.route is None
        assert "malformed" in d.trace[0].conditions[0].actual


class TestPredicates:
    def test_true_predicate_matches(self) -> None:
        """A predicate returning True satisfies its condition."""
        preds: dict[str, Predicate] = {"us.has_doppler": lambda ds: True}
        assert decide([rule(predicates=["us.has_doppler"])], make_ds(), predicates=preds).route

    def test_false_predicate_does_not_match(self) -> None:
        """A predicate returning False fails its condition."""
        preds: dict[str, Predicate] = {"us.has_doppler": lambda ds: False}
        d = decide([rule(predicates=["us.has_doppler"])], make_ds(), predicates=preds)
        assert d.route is None
        assert d.trace[0].conditions[0].actual == "false"

    def test_raising_predicate_is_false_with_error_text(self) -> None:
        """A predicate that raises is false and its error text is in `actual`."""

        def boom(ds: Dataset) -> bool:
            raise RuntimeError("no pixel data")

        d = decide([rule(predicates=["us.is_cine"])], make_ds(), predicates={"us.is_cine": boom})
        c = d.trace[0].conditions[0]
        assert not c.ok and "RuntimeError" in c.actual and "no pixel data" in c.actual

    def test_raising_predicate_never_leaks_the_patient_name(self) -> None:
        """An error message that quotes the patient is masked in the trace."""

        def leaky(ds: Dataset) -> bool:
            raise ValueError(f"bad image for {ds.PatientName} {ds.PatientID}")

        d = decide([rule(predicates=["p.x"])], make_ds(), predicates={"p.x": leaky})
        text = explain(d, "f.dcm")
        assert "Zzyzx" not in text and PATIENT_ID not in text and "[phi]" in text

    def test_unknown_predicate_is_false(self) -> None:
        """A predicate name no model contributes fails with "unknown predicate"."""
        d = decide([rule(predicates=["us.nope"])], make_ds())
        c = d.trace[0].conditions[0]
        assert (c.ok, c.actual) == (False, "unknown predicate")

    def test_not_predicates_require_false(self) -> None:
        """not_predicates hold only when the predicate returns False."""
        r = [rule(not_predicates=["us.is_cine"])]
        assert decide(r, make_ds(), predicates={"us.is_cine": lambda ds: False}).route
        assert not decide(r, make_ds(), predicates={"us.is_cine": lambda ds: True}).route

    def test_not_predicates_fail_closed_on_error_or_unknown(self) -> None:
        """A raising or unknown predicate in not_predicates fails the rule too."""

        def boom(ds: Dataset) -> bool:
            raise RuntimeError("x")

        r = [rule(not_predicates=["us.is_cine"])]
        assert not decide(r, make_ds(), predicates={"us.is_cine": boom}).route
        assert not decide(r, make_ds(), predicates={}).route


class TestOrderingAndSkips:
    def test_first_matching_rule_wins_and_later_rules_are_not_tried(self) -> None:
        """Rules are tried in order; the trace stops at the winner."""
        rules = [rule("a", "ma", modality=["CT"]), rule("b", "mb", modality=["MR"]), rule("c", "mc")]
        d = decide(rules, make_ds(Modality="MR"))
        assert d.route is not None and d.route.name == "b"
        assert [t.rule for t in d.trace] == ["a", "b"]
        assert [t.matched for t in d.trace] == [False, True]

    def test_rule_without_conditions_matches_everything(self) -> None:
        """An empty match is a catch-all."""
        assert decide([rule("all", "m")], make_ds()).route

    def test_every_condition_is_evaluated_after_a_failure(self) -> None:
        """A failing first condition does not hide the others from the trace."""
        called: list[bool] = []

        def pred(ds: Dataset) -> bool:
            called.append(True)
            return True

        d = decide(
            [rule(modality=["US"], body_part=["HAND"], predicates=["x.y"])],
            make_ds(Modality="MR", BodyPartExamined="HAND"),
            predicates={"x.y": pred},
        )
        assert [c.ok for c in d.trace[0].conditions] == [False, True, True]
        assert called == [True]

    def test_disabled_rule_is_skipped_with_reason(self) -> None:
        """A disabled rule never matches and its trace says why."""
        rules = [Route(name="off", model="m1", enabled=False), rule("on", "m2")]
        d = decide(rules, make_ds())
        assert d.model == "m2"
        assert d.trace[0].skipped == "disabled" and d.trace[0].conditions == ()

    def test_unavailable_model_is_skipped_with_reason(self) -> None:
        """A rule whose model is not loaded is skipped; the next rule can win."""
        rules = [rule("first", "lge_qa"), rule("second", "hand_joints")]
        d = decide(rules, make_ds(), available_models={"hand_joints"})
        assert d.model == "hand_joints"
        assert d.trace[0].skipped is not None and "lge_qa" in d.trace[0].skipped

    def test_no_rules_means_no_route(self) -> None:
        """An empty rule list routes nothing."""
        d = decide([], make_ds())
        assert d.route is None and d.trace == ()

    def test_decision_is_frozen(self) -> None:
        """A RouteDecision cannot be changed after the fact."""
        d = decide([rule()], make_ds())
        with pytest.raises(AttributeError):
            setattr(d, "route", None)  # by name: mypy would (rightly) refuse the assignment


class TestExplain:
    def _decision(self) -> RouteDecision:
        ds = make_ds(
            Modality="US",
            BodyPartExamined="HAND",
            SeriesDescription="MCP2 synovitis",
            ImageType=["ORIGINAL", "PRIMARY"],
        )
        rules = [
            Route(name="off", model="x", enabled=False),
            rule("mr-only", "lge_qa", modality=["MR"], description_regex="psir", predicates=["mr.is_lge_psir"]),
            rule("us-hand", "us_synovitis", modality=["US"], body_part=["HAND"], image_type_contains=["ORIGINAL"]),
        ]
        return decide(rules, ds, predicates={"mr.is_lge_psir": lambda ds: False})

    def test_shows_every_condition_with_marks(self) -> None:
        """Each condition appears with ✓ or ✗, and the winning rule is named."""
        text = explain(self._decision(), "study/1.dcm")
        assert "study/1.dcm" in text
        assert "✗ modality: expected one of MR; got 'US'" in text
        assert "✗ description_regex" in text and "MCP2 synovitis" in text
        assert "✗ predicate mr.is_lge_psir: expected true; got false" in text
        assert "✓ modality: expected one of US; got 'US'" in text
        assert "✓ body_part" in text and "✓ image_type_contains" in text
        assert "skipped (disabled)" in text
        assert "Result: rule 'us-hand' -> model us_synovitis" in text

    def test_says_when_no_route_matched(self) -> None:
        """With no winner the text says so."""
        text = explain(decide([rule(modality=["CT"])], make_ds(Modality="MR")), "x")
        assert "no route matched" in text

    def test_never_shows_patient_name_id_or_birth_date(self) -> None:
        """Patient identifiers are never in the text, even when typed into a description."""
        ds = make_ds(Modality="US", SeriesDescription="Zzyzx left hand")
        d = decide([rule(modality=["MR"], description_regex="hand", body_part=["HAND"])], ds)
        text = explain(d, "in.dcm")
        for secret in ("Zzyzx", "Quentin", PATIENT_NAME, PATIENT_ID, BIRTH_DATE):
            assert secret not in text
        assert "left hand" in text


class TestValidateRoutes:
    def test_warns_about_unknown_predicates(self) -> None:
        """Predicate names no model provides give one warning each."""
        rules = [rule("a", predicates=["us.has_doppler", "x.unknown"], not_predicates=["y.gone"])]
        warnings = validate_routes(rules, {"us.has_doppler"})
        assert len(warnings) == 2
        assert any("x.unknown" in w for w in warnings) and any("y.gone" in w for w in warnings)

    def test_known_predicates_give_no_warning(self) -> None:
        """A clean rule list gives no warnings."""
        assert validate_routes([rule("a", predicates=["us.is_cine"])], {"us.is_cine"}) == []

    def test_warns_about_rules_after_a_catch_all(self) -> None:
        """A rule behind an enabled rule without conditions can never match."""
        warnings = validate_routes([rule("all"), rule("later", modality=["MR"])], set())
        assert len(warnings) == 1 and "later" in warnings[0]


class TestRuleSchema:
    def test_empty_list_is_rejected(self) -> None:
        """An empty "any of" list would never match and is a load error."""
        with pytest.raises(ValidationError):
            Match(modality=[])

    def test_invalid_regex_is_rejected(self) -> None:
        """A regex that does not compile is a load error."""
        with pytest.raises(ValidationError):
            Match(description_regex="(unclosed")


SIDECAR_YAML = """\
destinations:
  - kind: folder
    name: pacs
    path: /tmp/sidecar-test-pacs
"""


class TestBundledRoutes:
    @pytest.fixture
    def settings_dir(self, tmp_path: Path) -> Path:
        shutil.copy(REPO / "conf" / "routes.yaml", tmp_path / "routes.yaml")
        (tmp_path / "sidecar.yaml").write_text(SIDECAR_YAML, encoding="utf-8")
        return tmp_path

    def test_routes_yaml_loads_through_settings(self, settings_dir: Path) -> None:
        """conf/routes.yaml validates with a sidecar.yaml that defines "pacs"."""
        routes = load_settings(settings_dir, env={}).routes
        assert {r.model for r in routes} == {
            "lge_qa",
            "synovitis_sgs",
            "synovitis_dgs",
            "synovitis_spd",
            "synovitis_dpd",
            "gout_mtp1",
            "breast_elastography",
            "hand_joints",
        }
        assert all(r.destinations == ["pacs"] for r in routes)

    def test_every_predicate_the_rules_name_is_registered(self, settings_dir: Path) -> None:
        """validate_routes warns about each model predicate when none is known, and about none
        when the installed models' predicates are loaded."""
        routes = load_settings(settings_dir, env={}).routes
        warnings = " ".join(validate_routes(routes, set()))
        for name in ("mr.is_lge_psir", "us.has_doppler", "us.is_cine"):
            assert name in warnings
        assert validate_routes(routes, load_predicates().keys()) == []

    @pytest.mark.parametrize(
        ("attrs", "model"),
        [
            ({"Modality": "MR", "SeriesDescription": "SAX PSIR"}, "lge_qa"),
            ({"Modality": "US", "SeriesDescription": "R MTP1 joint"}, "gout_mtp1"),
            ({"Modality": "US", "BodyPartExamined": "FOOT"}, "gout_mtp1"),
            ({"Modality": "US", "SeriesDescription": "MCP synovitis"}, "synovitis_sgs"),
            ({"Modality": "US", "BodyPartExamined": "WRIST"}, "synovitis_sgs"),
            ({"Modality": "US", "BodyPartExamined": "BREAST", "ImageType": ["ORIGINAL", "PRIMARY"]},
             "breast_elastography"),
            ({"Modality": "US", "SeriesDescription": "Breast L 2 o'clock", "ImageType": ["ORIGINAL", "PRIMARY"]},
             "breast_elastography"),
            ({"Modality": "US", "BodyPartExamined": "BREAST", "ImageType": ["DERIVED", "SECONDARY"]}, None),
            ({"Modality": "US", "ProtocolName": "Breast SWE"}, None),  # already an elastogram
            ({"Modality": "US", "BodyPartExamined": "BREAST", "SeriesDescription": "Strain elasto"}, None),
            ({"Modality": "DX", "BodyPartExamined": "HAND"}, "hand_joints"),
            ({"Modality": "CR", "SeriesDescription": "Hands PA"}, "hand_joints"),
            ({"Modality": "MR", "SeriesDescription": "cine SAX"}, None),
            ({"Modality": "CT", "BodyPartExamined": "HAND"}, None),
        ],
    )
    def test_bundled_rules_route_typical_series(
        self, settings_dir: Path, attrs: dict[str, str], model: str | None
    ) -> None:
        """Typical headers reach the intended model (MR PSIR only with its predicate true)."""
        routes = load_settings(settings_dir, env={}).routes
        predicates = {**load_predicates(), "mr.is_lge_psir": lambda ds: True}
        d = route(routes, make_ds(**attrs), calling_ae="CONSOLE", predicates=predicates)
        assert d.model == model


class TestDescriptionExcludes:
    def _rule(self) -> Route:
        return Route.model_validate({"name": "r", "model": "m", "match": {
            "modality": ["US"], "description_excludes_regex": "elasto|swe"}})

    def test_holds_when_neither_description_mentions_the_pattern(self) -> None:
        """A plain B-mode description passes the exclusion."""
        assert route([self._rule()], make_ds(Modality="US", SeriesDescription="Breast B-mode"),
                     calling_ae=None, predicates={}).route is not None

    def test_fails_when_protocol_name_mentions_the_pattern(self) -> None:
        """An elastography protocol is excluded, whichever of the two tags names it."""
        assert route([self._rule()], make_ds(Modality="US", ProtocolName="Breast SWE"),
                     calling_ae=None, predicates={}).route is None

    def test_holds_when_both_descriptions_are_missing(self) -> None:
        """Missing text has nothing to exclude; explain says so."""
        d = route([self._rule()], make_ds(Modality="US"), calling_ae=None, predicates={})
        assert d.route is not None
        assert "nothing to exclude" in explain(d, "x")

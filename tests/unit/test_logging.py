"""Logging: every PHI-scrubbing rule, the known-PHI store, and the wiring of structlog and stdlib."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from pydicom import Dataset
from pydicom.dataelem import DataElement

from sidecar.dicom.uids import short_uid
from sidecar.logging import (
    PhiRegistry,
    clear_phi,
    configure_logging,
    is_patient_key,
    register_phi,
    scrub_phi,
)


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Each test starts with no registered PHI and leaves logging as it found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    pnd_level = logging.getLogger("pynetdicom").level
    clear_phi()
    yield
    clear_phi()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pnd_level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def scrub(**event: Any) -> dict[str, Any]:
    return dict(scrub_phi(None, "info", event))


def json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


class TestPatientKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "patient_name",
            "patientname",
            "PatientName",
            "patient_id",
            "PatientID",
            "patientid",
            "birth_date",
            "birthdate",
            "PatientBirthDate",
            "patient_birth_date",
            "other_patient_ids",
            "OtherPatientIDs",
            "PATIENT_NAME",
            "dob",
        ],
    )
    def test_patient_keys_are_dropped(self, key: str) -> None:
        """A key that names patient data is removed, whatever its case or underscores."""
        out = scrub(event="x", **{key: "secret"})
        assert key not in out and "secret" not in json.dumps(out)

    @pytest.mark.parametrize("key", ["series_uid_tag", "model", "n_instances", "rule", "modality"])
    def test_ordinary_keys_are_kept(self, key: str) -> None:
        """Keys that are not patient data pass through."""
        assert not is_patient_key(key)
        assert key in scrub(event="x", **{key: "v"})


class TestDicomObjects:
    def test_dataset_value_becomes_placeholder(self) -> None:
        """A Dataset logged as a value is never rendered."""
        ds = Dataset()
        ds.PatientName = "Doe^Jane"
        out = scrub(event="x", ds=ds)
        assert out["ds"] == "<dataset>"

    def test_data_element_value_becomes_placeholder(self) -> None:
        """A DataElement logged as a value is never rendered."""
        out = scrub(event="x", elem=DataElement(0x00100010, "PN", "Doe^Jane"))
        assert out["elem"] == "<element>"

    def test_person_name_value_is_masked(self) -> None:
        """A PersonName under any key is masked."""
        ds = Dataset()
        ds.ReferringPhysicianName = "House^Gregory"
        assert scrub(event="x", who=ds.ReferringPhysicianName)["who"] == "[phi]"

    def test_nested_dataset_is_replaced(self) -> None:
        """Datasets inside lists and dicts are replaced too."""
        out = scrub(event="x", items=[Dataset(), {"inner": Dataset()}])
        assert out["items"] == ["<dataset>", {"inner": "<dataset>"}]

    def test_bytes_are_summarised(self) -> None:
        """Raw bytes (an encoded dataset) are replaced by their length."""
        assert scrub(event="x", payload=b"\x00" * 10)["payload"] == "<10 bytes>"


class TestUids:
    @pytest.mark.parametrize("key", ["series_uid", "study_instance_uid", "SOPInstanceUID", "sopinstanceuid"])
    def test_uid_keys_are_hashed(self, key: str) -> None:
        """Values of *_uid / *uid keys become short_uid hashes."""
        uid = "1.2.840.113619.2.55.3.1234"
        assert scrub(event="x", **{key: uid})[key] == short_uid(uid)

    def test_uid_lists_are_hashed_each(self) -> None:
        """A list under a *uids key is hashed element by element."""
        assert scrub(event="x", series_uids=["1.2", "1.3"])["series_uids"] == [short_uid("1.2"), short_uid("1.3")]

    def test_tag_keys_are_left_alone(self) -> None:
        """A *_tag key is taken as already hashed."""
        assert scrub(event="x", series_uid_tag="abc123")["series_uid_tag"] == "abc123"

    def test_missing_uid_stays_none(self) -> None:
        """None under a uid key is not hashed into a fake tag."""
        assert scrub(event="x", series_uid=None)["series_uid"] is None


class TestKnownPhi:
    def test_registered_values_are_masked_in_values_and_message(self) -> None:
        """Registered identifiers are masked in the event text and string values."""
        register_phi("PIDX-4242")
        out = scrub(event="stored PIDX-4242", note="for pidx-4242 today")
        assert out["event"] == "stored [phi]"
        assert out["note"] == "for [phi] today"

    def test_person_name_forms_are_masked(self) -> None:
        """A registered PN is also masked as its components and as "Given Family"."""
        register_phi("Quokka^Wilhelmina")
        out = scrub(event="Wilhelmina Quokka; Quokka^Wilhelmina; QUOKKA")
        assert "Quokka" not in out["event"] and "Wilhelmina" not in out["event"]

    def test_birth_date_iso_form_is_masked(self) -> None:
        """A registered DA birth date is also masked in its ISO form."""
        register_phi("19600229")
        assert scrub(event="born 1960-02-29 (19600229)")["event"] == "born [phi] ([phi])"

    def test_short_and_empty_values_are_ignored(self) -> None:
        """Values too short to mask safely are not registered."""
        register_phi("", "  ", None, "7")
        assert scrub(event="7 of 17")["event"] == "7 of 17"

    def test_store_is_bounded_lru(self) -> None:
        """The oldest identifiers are forgotten first; re-registering refreshes one."""
        reg = PhiRegistry(max_entries=3)
        reg.register("aaa1", "bbb2", "ccc3")
        reg.register("aaa1")  # refreshed: now the newest
        reg.register("ddd4")  # evicts bbb2, the least recent
        assert len(reg) == 3
        assert "bbb2" not in reg and "aaa1" in reg and "ddd4" in reg
        assert reg.mask("aaa1 bbb2") == "[phi] bbb2"

    def test_patient_group_dump_lines_are_masked(self) -> None:
        """A dataset dump's (0010,xxxx) lines lose their values even if never registered."""
        dump = "(0008,0060) CS [US]\n(0010,0010) PN [Unseen^Person]  # 1 PatientName\n(0010,0020) LO [X1]"
        out = scrub(event=dump)["event"]
        assert "Unseen" not in out and "X1" not in out and "(0008,0060) CS [US]" in out


class TestNeverCrash:
    def test_unprintable_value_does_not_raise(self) -> None:
        """An object whose __str__ raises is replaced, not propagated."""

        class Bad:
            def __str__(self) -> str:
                raise RuntimeError("no")

        assert scrub(event="x", thing=Bad())["thing"] == "<unprintable Bad>"

    def test_bad_positional_arguments_do_not_raise(self) -> None:
        """A format string with too few arguments loses the line, not the caller."""
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        structlog.get_logger("t").info("two %s %s", "one")
        assert json_lines(buf)[0]["event"] == "log_format_failed"


class TestConfigureLogging:
    def test_json_lines_are_scrubbed(self) -> None:
        """structlog events come out as JSON lines with every rule applied."""
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        register_phi("Doe^Jane", "PIDX-1")
        structlog.get_logger("t").info(
            "series_routed", patient_name="Doe^Jane", series_uid="1.2.3", note="Jane Doe", rule="r1"
        )
        (line,) = json_lines(buf)
        assert line["event"] == "series_routed" and line["level"] == "info" and line["rule"] == "r1"
        assert "patient_name" not in line
        assert line["series_uid"] == short_uid("1.2.3")
        assert line["note"] == "[phi]"

    def test_level_filters_events(self) -> None:
        """Events below the configured level are not written."""
        buf = io.StringIO()
        configure_logging("warning", "json", stream=buf)
        log = structlog.get_logger("t")
        log.info("quiet")
        log.warning("loud")
        assert [e["event"] for e in json_lines(buf)] == ["loud"]

    def test_auto_on_a_non_tty_is_json(self) -> None:
        """"auto" writes JSON when the stream is not a terminal."""
        buf = io.StringIO()
        configure_logging("info", "auto", stream=buf)
        structlog.get_logger().info("hello")
        assert json_lines(buf)[0]["event"] == "hello"

    def test_console_format_is_scrubbed_too(self) -> None:
        """The console renderer gets the same scrubbing."""
        buf = io.StringIO()
        configure_logging("info", "console", stream=buf)
        register_phi("Doe^Jane")
        structlog.get_logger().warning("seen Doe^Jane", PatientID="X")
        text = buf.getvalue()
        assert "seen [phi]" in text and "Jane" not in text and "PatientID" not in text

    def test_exception_tracebacks_are_scrubbed(self) -> None:
        """A traceback that quotes a registered identifier is masked."""
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        register_phi("PIDX-77")
        try:
            raise ValueError("bad instance of PIDX-77")
        except ValueError:
            structlog.get_logger().exception("ingest_failed")
        (line,) = json_lines(buf)
        assert "ValueError: bad instance of [phi]" in line["exception"]

    def test_pynetdicom_is_held_at_warning(self) -> None:
        """pynetdicom's info and debug lines are dropped, its warnings come through scrubbed."""
        buf = io.StringIO()
        configure_logging("debug", "json", stream=buf)
        pnd = logging.getLogger("pynetdicom.assoc")
        pnd.debug("(0010,0010) PN [Doe^Jane]")
        pnd.info("Association Accepted")
        pnd.warning("dump follows:\n(0010,0010) PN [Doe^Jane]  # 1 PatientName")
        (line,) = json_lines(buf)
        assert line["logger"] == "pynetdicom.assoc" and line["level"] == "warning"
        assert "Doe" not in line["event"]

    def test_other_stdlib_loggers_follow_the_level(self) -> None:
        """Standard-library loggers other than pynetdicom use the configured level and scrubbing."""
        buf = io.StringIO()
        configure_logging("info", "json", stream=buf)
        register_phi("PIDX-55")
        logging.getLogger("apscheduler").info("job for %s", "PIDX-55")
        (line,) = json_lines(buf)
        assert line["event"] == "job for [phi]"

    def test_reconfiguring_replaces_the_handler(self) -> None:
        """Calling configure_logging twice writes each line once, to the new stream."""
        first, second = io.StringIO(), io.StringIO()
        configure_logging("info", "json", stream=first)
        configure_logging("info", "json", stream=second)
        structlog.get_logger().info("once")
        assert first.getvalue() == "" and len(json_lines(second)) == 1

    def test_unknown_level_is_rejected(self) -> None:
        """A level name that is not one of ours is an error at start-up."""
        with pytest.raises(ValueError):
            configure_logging("loud", "json", stream=io.StringIO())

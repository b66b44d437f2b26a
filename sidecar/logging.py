"""structlog setup, and the processor that keeps patient data out of every log line.

Logs are events with fields (`log.info("series_routed", rule=..., model=...)`), rendered as JSON
lines, or for a person at a terminal by structlog's console renderer. The standard library's
logging (pynetdicom, which at debug level dumps whole datasets; pydicom; APScheduler) goes
through the same chain, so one processor, `scrub_phi`, sees every line before it is written:

- keys that name patient data (patient_name, PatientID, birth_date, ...) are dropped;
- pydicom Datasets and DataElements become placeholders, person names become "[phi]";
- values of `*_uid` / `*uid` keys become a short hash (`short_uid`); `*_tag` keys are taken as
  already hashed;
- string values and the event message are searched for the patient identifiers the listener
  registered at runtime (`register_phi`), and for dataset-dump lines of the Patient group
  (0010,xxxx); both are masked as "[phi]".

A logging call never raises: a processor that fails turns the line into `log_scrub_failed`
with the error's type only, and the handler drops a line it cannot format without echoing it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from sidecar.dicom.uids import short_uid

PHI_MASK = "[phi]"
_MAX_DEPTH = 4  # nesting of dicts/lists scrubbed; deeper values are replaced


# --- known PHI, registered at runtime --------------------------------------------------------


class PhiRegistry:
    """A bounded, thread-safe LRU set of patient identifiers seen on the wire, for masking.

    The listener registers each received instance's PatientName, PatientID and PatientBirthDate.
    Only the most recent `max_entries` strings are kept (least recently registered go first);
    strings shorter than `min_length` are ignored, as masking them would garble every line.
    Matching is case-insensitive on word boundaries (letters, digits and "_" make a word), so a
    name part such as "LGE" is masked in "PHANTOM LGE" but not inside the model id "lge_qa";
    the whole registered value is matched too, so "DOE^JOHN" is caught however it is embedded.
    """

    def __init__(self, max_entries: int = 4096, min_length: int = 3) -> None:
        self._max = max_entries
        self._min = min_length
        self._lock = threading.Lock()
        self._items: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] | None = None
        self._dirty = False

    def _forms(self, value: object) -> Iterable[str]:
        """The strings under which `value` may show up in a log line."""
        if value is None:
            return
        if isinstance(value, MultiValue | list | tuple | set | frozenset):
            for item in value:
                yield from self._forms(item)
            return
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip()
        if not text:
            return
        yield text
        if "^" in text or "=" in text:  # PN: family^given^middle^prefix^suffix, groups by '='
            for group in text.split("="):
                parts = [p.strip() for p in group.split("^") if p.strip()]
                yield from parts
                if len(parts) >= 2:
                    yield f"{parts[1]} {parts[0]}"
                    yield f"{parts[0]}, {parts[1]}"
                    yield " ".join(parts)
        if re.fullmatch(r"\d{8}", text):  # DA: YYYYMMDD, also seen as YYYY-MM-DD
            yield f"{text[:4]}-{text[4:6]}-{text[6:]}"

    def register(self, *values: object) -> None:
        """Remember these identifiers (str, PersonName, multi-values; None is ignored)."""
        forms = [f for v in values for f in self._forms(v) if len(f) >= self._min]
        if not forms:
            return
        with self._lock:
            for f in forms:
                key = f.casefold()
                if key in self._items:
                    self._items.move_to_end(key)
                    continue
                self._items[key] = None
                self._dirty = True
                while len(self._items) > self._max:
                    self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every registered identifier."""
        with self._lock:
            self._items.clear()
            self._pattern = None
            self._dirty = False

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value.strip().casefold() in self._items

    def mask(self, text: str) -> str:
        """`text` with every registered identifier replaced by "[phi]"."""
        with self._lock:
            if self._dirty:
                keys = sorted(self._items, key=len, reverse=True)
                alternatives = "|".join(map(re.escape, keys))
                self._pattern = (
                    re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if keys else None
                )
                self._dirty = False
            pattern = self._pattern
        return pattern.sub(PHI_MASK, text) if pattern is not None else text


_REGISTRY = PhiRegistry()


def register_phi(*values: object) -> None:
    """Remember patient identifiers seen at runtime so that no log line repeats them."""
    _REGISTRY.register(*values)


def clear_phi() -> None:
    """Forget every registered identifier (tests; a process that changes hands)."""
    _REGISTRY.clear()


# --- the scrubbing processor -----------------------------------------------------------------

_PATIENT_KEY = re.compile(
    r"^(other)?patients?"  # patientname, patientsname, patientid, otherpatientids, patientsex...
    r"|birth(date|time|name)"  # birthdate, patientbirthdate, mothersbirthname
    r"|^(dob|dateofbirth)$"
)
# A dataset-dump line of the Patient group (PS3.6: group 0010), as pydicom and pynetdicom print it.
_PATIENT_GROUP_LINE = re.compile(r"(\(0010,\s?[0-9A-Fa-f]{4}\))[^\n]*")


def _normal_key(key: str) -> str:
    return re.sub(r"[\s_\-'.]", "", key).casefold()


def is_patient_key(key: str) -> bool:
    """True when an event key's name looks like patient data (case and underscores ignored)."""
    return bool(_PATIENT_KEY.search(_normal_key(key)))


def _is_uid_key(key: str) -> bool:
    if key.casefold().endswith("_tag"):
        return False
    k = _normal_key(key)
    return k.endswith(("uid", "uids"))


def _scrub_text(text: str) -> str:
    return _REGISTRY.mask(_PATIENT_GROUP_LINE.sub(rf"\1 {PHI_MASK}", text))


def scrub_text(text: str) -> str:
    """`text` with the registered patient identifiers and Patient-group dump lines masked."""
    return _scrub_text(text)


def _hash_uid(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple | set | frozenset):
        return [_hash_uid(v) for v in value]
    return short_uid(str(value))


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, PersonName):
        return PHI_MASK
    if isinstance(value, Dataset):
        return "<dataset>"
    if isinstance(value, DataElement | RawDataElement):
        return "<element>"
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if depth >= _MAX_DEPTH:
        return "<nested>"
    if isinstance(value, Mapping):
        return _scrub_mapping(value, depth + 1)
    if isinstance(value, MultiValue | list | tuple | set | frozenset):
        return [_scrub_value(v, depth + 1) for v in value]
    try:
        return _scrub_text(str(value))
    except Exception:  # an object whose __str__ fails: say what it was, nothing more
        return f"<unprintable {type(value).__name__}>"


def _scrub_mapping(mapping: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        name = str(key)
        if is_patient_key(name):
            continue
        if _is_uid_key(name) and not isinstance(value, dict):
            out[key] = _hash_uid(value)
        else:
            out[key] = _scrub_value(value, depth)
    return out


def scrub_phi(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove or mask patient data in an event (see the module docstring)."""
    try:
        return _scrub_mapping(event_dict, 0)
    except Exception as exc:  # a logging call must never crash, nor leak what it failed on
        return {"event": "log_scrub_failed", "error": type(exc).__name__, "level": event_dict.get("level")}


# --- wiring ----------------------------------------------------------------------------------


class _SafeFormatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that renders a placeholder instead of raising."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except Exception as exc:  # never echo the record: its args may hold patient data
            return f'{{"event": "log_format_failed", "error": "{type(exc).__name__}", "logger": "{record.name}"}}'


class _SafeHandler(logging.StreamHandler[TextIO]):
    """A stream handler whose errors never print the record (stdlib prints its args)."""

    sidecar_handler = True

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"sidecar logging: a record from {record.name} could not be written\n")
        except Exception:  # stderr itself is gone; nothing left to tell
            return


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _level(name: str) -> int:
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, not {name!r}") from None


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    stream: TextIO | None = None,
    pynetdicom_level: str = "warning",
) -> None:
    """Set up structlog and the standard library to write scrubbed events to `stream`.

    `fmt` "auto" is the console renderer when `stream` is a terminal and JSON lines otherwise.
    The stream defaults to stderr so that CLI output on stdout stays clean. pynetdicom's loggers
    are held at `pynetdicom_level` (its debug output dumps datasets). Calling again replaces the
    previous setup.
    """
    out = stream if stream is not None else sys.stderr
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    try:
        tty = out.isatty()
    except Exception:  # a stream without isatty (or a closed one) is not a terminal
        tty = False
    console = fmt == "console" or (fmt == "auto" and tty)
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer()
    )

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = _SafeFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # before scrubbing: tracebacks quote values
            scrub_phi,
            renderer,
        ],
    )
    handler = _SafeHandler(out)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "sidecar_handler", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(level))
    logging.getLogger("pynetdicom").setLevel(_level(pynetdicom_level))
    logging.captureWarnings(True)  # pydicom warns with element values; let scrub_phi see them

    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so that a later configure_logging (tests, CLI flags) reaches every logger.
        cache_logger_on_first_use=False,
    )

"""Validation of every DICOM object a test writes: strict read-back and dciodvfy.

`assert_valid_dicom` fails on any dciodvfy line that starts with "Error" and prints warnings.
dciodvfy (Debian package `dicom3tools`) is required: without it the check fails loudly rather
than being skipped, so a green run always means the objects were validated.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pydicom
import pydicom.config
from pydicom import Dataset

DCIODVFY_TIMEOUT_S = 60


def read_strict(path: str | Path) -> Dataset:
    """Read `path` with pydicom's reading validation set to RAISE (restored afterwards)."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for _ in ds.iterall():  # touch every element so lazily parsed values are validated too
            pass
        return ds
    finally:
        settings.reading_validation_mode = saved


def dciodvfy_lines(path: str | Path) -> list[str]:
    """The output lines of `dciodvfy path` (it reports on stderr)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise AssertionError(
            "dciodvfy is not installed; install the Debian package 'dicom3tools' "
            "(apt-get install dicom3tools) to validate DICOM objects"
        )
    proc = subprocess.run(
        [exe, str(path)], capture_output=True, text=True, timeout=DCIODVFY_TIMEOUT_S, check=False
    )
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def assert_valid_dicom(path_or_dataset: str | Path | Dataset) -> Dataset:
    """Write (if a Dataset), read back strictly, validate with dciodvfy; return the read-back."""
    with tempfile.TemporaryDirectory(prefix="validate-") as tmp:
        if isinstance(path_or_dataset, Dataset):
            path = Path(tmp) / "object.dcm"
            path_or_dataset.save_as(path, enforce_file_format=True)
        else:
            path = Path(path_or_dataset)
        ds = read_strict(path)
        lines = dciodvfy_lines(path)
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    for line in warnings:
        print(f"dciodvfy: {line}")
    assert not errors, "dciodvfy reported errors:\n" + "\n".join(errors)
    return ds


PIXELMED_JARS = ("/usr/share/java/pixelmed.jar",)
PIXELMED_TIMEOUT_S = 900
_PIXELMED_DRIVER = Path(__file__).with_name("PixelmedSR.java")
# pixelmed's XPath use exceeds the JDK's default expression limits on TID 1500 documents.
_PIXELMED_JVM_FLAGS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)


def pixelmed_sr_lines(paths: list[Path]) -> dict[Path, list[str]]:
    """pixelmed's DicomSRValidator report for each SR file: its "Error"/"Warning" lines.

    Requires the Debian package `pixelmed-apps` (and a JDK for the source-file launcher); the
    check fails loudly without them rather than being skipped.
    """
    java = shutil.which("java")
    jars = [j for j in PIXELMED_JARS if Path(j).is_file()]
    if java is None or not jars:
        raise AssertionError(
            "pixelmed's DicomSRValidator is not installed; install the Debian package "
            "'pixelmed-apps' (apt-get install pixelmed-apps)"
        )
    proc = subprocess.run(
        [java, *_PIXELMED_JVM_FLAGS, "-cp", ":".join(jars), str(_PIXELMED_DRIVER), *map(str, paths)],
        capture_output=True, text=True, timeout=PIXELMED_TIMEOUT_S, check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"pixelmed validator failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    out: dict[Path, list[str]] = {}
    current: Path | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("=== FILE "):
            current = Path(line[len("=== FILE "):])
            out[current] = []
        elif current is not None and line.startswith(("Error", "Warning")):
            out[current].append(line)
    missing = [p for p in paths if Path(p) not in out]
    assert not missing, f"pixelmed reported nothing for {missing}"
    return out

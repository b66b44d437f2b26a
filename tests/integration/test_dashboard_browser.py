"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

A real sidecar with an LGE-like streaming route (the brightness test model, alerts on) receives
slices from dcmtk storescu; the page must show each slice, and each alert within a second of the
sidecar publishing it; a dead letter's Retry button, with the admin token, must requeue it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset

from tests.helpers.dcmtk import StoreSCP, storescu
from tests.helpers.dicom_factory import FAKE_PATIENT_ID, FAKE_PATIENT_NAME, make_mr_series
from tests.helpers.ports import free_port
from tests.helpers.sidecar import running_sidecar, write_config

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "dashboard-test-token"
ALERT_DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"headless Chromium not found at {CHROMIUM}: install the Debian package 'chromium'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _config(tmp: Path, destinations: list[dict[str, Any]]) -> Path:
    routes = [{"name": "lge-like", "model": "brightness", "mode": "instance", "match": {"modality": ["MR"]},
               "outputs": ["sr", "alert"], "destinations": [d["name"] for d in destinations], "quiet_s": 30}]
    return write_config(tmp / "conf", routes=routes, destinations=destinations,
                        sender={"max_attempts": 1, "poll_s": 0.05, "echo_on_start": False},
                        web={"enabled": True, "port": 0, "admin_token": TOKEN})


def _slices(tmp: Path, seed: int) -> list[tuple[Dataset, Path]]:
    """Slice 1 bright (a certain result), slice 2 mid-grey noise (uncertain: raises an alert)."""
    out = []
    for ds in make_mr_series(2, seed=seed):
        if int(ds.InstanceNumber) == 1:
            ds.PixelData = np.full((int(ds.Rows), int(ds.Columns)), 4000, dtype=np.uint16).tobytes()
        path = tmp / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((ds, path))
    return out


def _send(path: Path, port: int) -> None:
    res = storescu([path], port, aet="SCANNER1", called_aet="SIDECAR")
    assert res.returncode == 0, res.stderr


def _wait(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


class TestDashboardInChromium:
    def test_page_shows_a_slice_then_an_alert_within_a_second_of_it_being_raised(
        self, browser: Any, tmp_path: Path
    ) -> None:
        """A certain slice appears without alert; an uncertain one appears highlighted, its alert < 1 s after publish."""
        (certain, certain_path), (uncertain, uncertain_path) = _slices(tmp_path, seed=31)
        with running_sidecar(_config(tmp_path, [])) as app:
            assert app.web is not None
            page = browser.new_page()
            page.goto(app.web.url + "/")
            page.wait_for_selector("#conn.on", timeout=10_000)

            _send(certain_path, app.port)
            page.wait_for_selector(f'.slice[data-instance-uid="{certain.SOPInstanceUID}"]', timeout=10_000)
            assert page.locator("#alerts li.alert").count() == 0
            # the series row comes from its own event and may land just after the slice
            page.wait_for_selector(f'tr.series[data-series-uid="{certain.SeriesInstanceUID}"]', timeout=5_000)
            assert page.locator(f'tr.series[data-series-uid="{certain.SeriesInstanceUID}"]').count() == 1

            _send(uncertain_path, app.port)
            alert = page.wait_for_selector("#alerts li.alert", timeout=10_000)
            assert alert is not None
            raised_at = float(alert.get_attribute("data-raised-at") or 0)
            shown_at = float(alert.get_attribute("data-shown-at") or 0)
            assert raised_at > 0 and 0 <= shown_at - raised_at < ALERT_DEADLINE_S, shown_at - raised_at
            print(f"alert shown {1000 * (shown_at - raised_at):.0f} ms after the sidecar raised it")
            assert alert.get_attribute("data-instance-number") == "2"
            page.wait_for_selector(
                f'.slice.uncertain[data-instance-uid="{uncertain.SOPInstanceUID}"]', timeout=5_000)
            page.wait_for_selector('#timeline tr[data-kind="inferred"]', timeout=5_000)
            page.wait_for_selector('#models .card[data-model-id="brightness"]', timeout=5_000)
            text = page.inner_text("body")
            for phi in (FAKE_PATIENT_NAME, *FAKE_PATIENT_NAME.split("^"), FAKE_PATIENT_ID):
                assert phi not in text
            page.close()

    def test_retry_button_with_the_token_requeues_a_dead_letter_that_is_then_delivered(
        self, browser: Any, tmp_path: Path
    ) -> None:
        """A wrong token is refused on the page; the right one requeues the dead letter and the PACS gets it."""
        (certain, certain_path), _ = _slices(tmp_path, seed=32)
        pacs_port = free_port()  # nothing listens yet: the first delivery fails and, at max 1 attempt, dies
        pacs_dest = {"kind": "dicom", "name": "pacs", "host": "127.0.0.1", "port": pacs_port,
                     "ae_title": "PACS", "timeout_s": 2}
        with running_sidecar(_config(tmp_path, [pacs_dest])) as app:
            assert app.web is not None
            page = browser.new_page()
            page.goto(app.web.url + "/")
            page.wait_for_selector("#conn.on", timeout=10_000)
            _send(certain_path, app.port)
            _wait(lambda: len(app.journal.dead_letters()) == 1)
            [dead] = app.journal.dead_letters()
            row = f'#dead-letters tr[data-id="{dead.id}"]'
            page.wait_for_selector(f"{row} button.retry", timeout=10_000)

            page.fill("#token", "not-the-token")
            page.click(f"{row} button.retry")
            page.wait_for_selector('#retry-status[data-result="error"]', timeout=5_000)
            assert [d.id for d in app.journal.dead_letters()] == [dead.id]

            pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS")
            pacs.port = pacs_port  # the destination comes back where the sidecar expects it
            with pacs:
                page.fill("#token", TOKEN)
                page.click(f"{row} button.retry")
                page.wait_for_selector('#retry-status[data-result="ok"]', timeout=5_000)
                _wait(lambda: [o.state for o in app.journal.outbox() if o.id == dead.id] == ["sent"])
                assert len(pacs.wait_for_files(1, timeout=10)) == 1
                page.wait_for_selector(row, state="detached", timeout=5_000)
            kinds = [e.kind for e in app.journal.events(str(certain.SeriesInstanceUID))]
            assert kinds.index("dead") < kinds.index("requeued") < kinds.index("sent")
            page.close()

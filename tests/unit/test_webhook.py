"""The webhook alert channel, through httpx's MockTransport (tests/reliability/test_phi.py posts to a real server)."""

from __future__ import annotations

import json

import httpx
import pytest
from structlog.testing import capture_logs

from sidecar.alerts.fanout import Alert, AlertFanout, WebhookChannel
from sidecar.errors import AlertError

SERIES = "1.2.826.0.1.3680043.8.498.12345678901234567890"
INSTANCE = "1.2.826.0.1.3680043.8.498.98765432109876543210"
URL = "http://127.0.0.1:9/alerts?key=url-secret"


def _alert() -> Alert:
    return Alert(series_uid=SERIES, key=f"{SERIES}/uncertain", model_id="lge_qa", label="uncertain",
                 probability=0.42, lines=("LGE QA: uncertain", "check the TI"), instance_number=7,
                 instance_uid=INSTANCE, received_at=100.0, raised_at=101.5)


class TestWebhookChannel:
    def test_posts_the_alert_as_json_with_the_bearer_token(self) -> None:
        """One POST to the URL, JSON body with short UIDs, the token as a Bearer header."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(204)

        WebhookChannel(URL, "tok-1", transport=httpx.MockTransport(handler)).send(_alert())
        assert len(seen) == 1
        req = seen[0]
        assert req.method == "POST" and str(req.url) == URL
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["Authorization"] == "Bearer tok-1"
        body = json.loads(req.content)
        assert body["model_id"] == "lge_qa" and body["label"] == "uncertain" and body["lines"] == list(_alert().lines)
        assert body["probability"] == pytest.approx(0.42) and body["instance_number"] == 7
        assert SERIES not in req.content.decode() and INSTANCE not in req.content.decode()
        assert body["series_uid"] and body["instance_uid"] and body["key"]

    def test_no_token_sends_no_authorization_header(self) -> None:
        """Without a token there is no Authorization header at all."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200)

        WebhookChannel(URL, transport=httpx.MockTransport(handler)).send(_alert())
        assert "Authorization" not in seen[0].headers

    def test_refusal_is_an_alert_error_naming_the_status_not_the_url(self) -> None:
        """HTTP 500 raises AlertError with the status; neither URL nor token reach the message."""
        channel = WebhookChannel(URL, "tok-1", transport=httpx.MockTransport(lambda r: httpx.Response(500)))
        with pytest.raises(AlertError, match="HTTP 500") as err:
            channel.send(_alert())
        assert "url-secret" not in str(err.value) and "tok-1" not in str(err.value)

    def test_unreachable_receiver_is_an_alert_error(self) -> None:
        """A connection failure becomes AlertError, not an httpx exception."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        with pytest.raises(AlertError, match="unreachable"):
            WebhookChannel(URL, transport=httpx.MockTransport(handler)).send(_alert())

    def test_failing_webhook_is_logged_by_the_fanout_without_the_url(self) -> None:
        """The fan-out's boundary logs a failing channel with its reason; nothing is raised."""
        channel = WebhookChannel(URL, transport=httpx.MockTransport(lambda r: httpx.Response(503)))
        fanout = AlertFanout([channel])
        with capture_logs() as logs:
            fanout.publish(_alert())
            assert fanout.flush(timeout_s=30.0)
        failed = [e for e in logs if e["event"] == "alert_channel_failed"]
        assert failed == [{"event": "alert_channel_failed", "log_level": "error", "channel": "WebhookChannel",
                           "error": "webhook answered HTTP 503"}]

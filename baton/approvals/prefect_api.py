"""The two Prefect REST calls the approval service needs (httpx; `baton/` imports no Prefect).

GET  /flow_runs/{id}         is the run paused, at which pause key, until when?
POST /flow_runs/{id}/resume  resume it with the decision as the run input
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from baton.errors import BatonError

RETRY_DELAYS = (0.2, 0.5, 1.0)  # seconds; about 2 s in all, well inside Slack's 3 s
RETRIED_STATUS = {429, 502, 503, 504}


class PrefectUnavailable(BatonError):
    """The Prefect API did not answer or answered with an error."""


@dataclass(frozen=True)
class PauseState:
    flow_run_id: str
    state_type: str | None  # PAUSED, RUNNING, FAILED, ...
    state_name: str | None
    pause_key: str | None
    pause_timeout: datetime | None
    timestamp: datetime | None

    @property
    def paused(self) -> bool:
        return self.state_type == "PAUSED"

    def waiting_at(self, gate: str) -> bool:
        """Paused by this gate (pause keys are `{gate}-{attempt}`)."""
        return self.paused and bool(self.pause_key) and self.pause_key.startswith(f"{gate}-")

    def expired(self, now: datetime | None = None) -> bool:
        return self.pause_timeout is not None and self.pause_timeout <= (now or datetime.now(UTC))


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class PrefectRuns:
    """Read and resume flow runs through the Prefect API at `api_url` (.../api)."""

    def __init__(self, api_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None):
        self.api_url = api_url.rstrip("/")
        headers = {}
        if key := os.environ.get("PREFECT_API_KEY"):  # Prefect Cloud
            headers["Authorization"] = f"Bearer {key}"
        self.client = client or httpx.Client(timeout=timeout, headers=headers)

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        # A busy Prefect server answers 503 or 429 for a moment: retry those (a resume that was
        # refused as "not paused" is an answer, not an error, and is never retried).
        for delay in (*RETRY_DELAYS, None):
            try:
                response = self.client.request(method, f"{self.api_url}{path}", **kwargs)
            except httpx.TransportError as e:
                if delay is None:
                    raise PrefectUnavailable(f"Prefect API {self.api_url} unreachable: {e}") from e
            else:
                if response.status_code not in RETRIED_STATUS or delay is None:
                    break
            time.sleep(delay)
        if response.status_code >= 400:
            raise PrefectUnavailable(f"Prefect API {method} {path}: HTTP {response.status_code} "
                                     f"{response.text[:200]}")
        return response

    def pause_state(self, flow_run_id: str) -> PauseState:
        state = self._request("GET", f"/flow_runs/{flow_run_id}").json().get("state") or {}
        details = state.get("state_details") or {}
        return PauseState(flow_run_id=flow_run_id, state_type=state.get("type"),
                          state_name=state.get("name"), pause_key=details.get("pause_key"),
                          pause_timeout=_time(details.get("pause_timeout")),
                          timestamp=_time(state.get("timestamp")))

    def resume(self, flow_run_id: str, run_input: dict) -> tuple[str, str]:
        """(status, reason): status ACCEPT when resumed; ABORT when the run was not paused;
        REJECT when Prefect refused the input."""
        body = self._request("POST", f"/flow_runs/{flow_run_id}/resume", json={"run_input": run_input}).json()
        details = body.get("details") or {}
        return str(body.get("status", "")).upper(), str(details.get("reason") or "")

    def healthy(self) -> bool:
        try:
            self._request("GET", "/health")
            return True
        except PrefectUnavailable:
            return False

"""The approval service's Prefect calls retry a busy server's 503/429, and only those."""

from __future__ import annotations

import httpx
import pytest

from baton.approvals import prefect_api
from baton.approvals.prefect_api import PrefectRuns, PrefectUnavailable


def runs_answering(statuses: list[int]) -> tuple[PrefectRuns, list[int]]:
    seen: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        status = statuses[len(seen)]
        seen.append(status)
        return httpx.Response(status, json={"status": "ACCEPT", "details": {}} if status == 200 else {})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    return PrefectRuns("http://prefect.invalid/api", client=client), seen


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(prefect_api.time, "sleep", lambda seconds: None)


def test_a_busy_server_is_retried_until_it_answers():
    runs, seen = runs_answering([503, 503, 200])
    assert runs.resume("run-1", {"decision": "approve"}) == ("ACCEPT", "")
    assert seen == [503, 503, 200]


def test_retries_are_bounded_and_end_in_a_clear_error():
    runs, seen = runs_answering([503, 503, 503, 503])
    with pytest.raises(PrefectUnavailable, match="HTTP 503"):
        runs.resume("run-1", {"decision": "approve"})
    assert len(seen) == 1 + len(prefect_api.RETRY_DELAYS)


def test_a_client_error_is_not_retried():
    runs, seen = runs_answering([404])
    with pytest.raises(PrefectUnavailable, match="HTTP 404"):
        runs.pause_state("run-1")
    assert seen == [404]

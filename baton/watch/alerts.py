"""Slack alerts when a domain's readiness turns fail, and again when it recovers.

Hysteresis: one open alert per domain and cause (a readiness check); the lag check must fail
`watch.alert_after_samples` samples in a row before it alerts. A post that Slack refuses is
retried at the next sample (the alert is only open once posted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from baton.watch.readiness import FAIL, Readiness

log = logging.getLogger("baton.watch")

Post = Callable[[str], bool]  # text -> posted


@dataclass
class OpenAlert:
    cause: str
    since: float
    evidence: str


class Alerts:
    """The alert state of every domain one watch samples."""

    def __init__(self, post: Post, *, lag_samples: int = 3):
        self.post = post
        self.lag_samples = lag_samples
        self.open: dict[tuple[str, str], OpenAlert] = {}
        self.failing_for: dict[tuple[str, str], int] = {}

    def needed(self, cause: str) -> int:
        return self.lag_samples if cause == "lag_within_thresholds" else 1

    def observe(self, readiness: Readiness) -> list[str]:
        """Post what changed; returns the texts posted."""
        posted = []
        for check in readiness.checks:
            key = (readiness.domain, check.name)
            if check.status == FAIL:
                self.failing_for[key] = self.failing_for.get(key, 0) + 1
                if key not in self.open and self.failing_for[key] >= self.needed(check.name):
                    text = (f":rotating_light: Baton: {readiness.domain} NOT READY to fail over "
                            f"{readiness.owner} -> {readiness.secondary}: {check.name} failing "
                            f"({self.failing_for[key]} sample(s) in a row). Evidence: {check.evidence}")
                    if self._post(text):
                        self.open[key] = OpenAlert(check.name, readiness.taken_at, check.evidence)
                        posted.append(text)
                continue
            self.failing_for.pop(key, None)
            alert = self.open.get(key)
            if alert is not None:
                lasted = readiness.taken_at - alert.since
                text = (f":white_check_mark: Baton: {readiness.domain} {check.name} recovered after "
                        f"{lasted:.0f} s ({check.status}): {check.evidence}")
                if self._post(text):
                    del self.open[key]
                    posted.append(text)
        return posted

    def _post(self, text: str) -> bool:
        try:
            return self.post(text)
        except Exception as e:  # noqa: BLE001 - an alert channel failing must never stop the watch
            log.warning("alert not posted (retried at the next sample): %s", e)
            return False


def slack_poster(topology) -> Post | None:
    """Post to the approvals channel with the approvals bot token; None when Slack is not configured."""
    settings = topology.approvals
    if not settings.slack_enabled:
        return None
    from slack_sdk.errors import SlackClientError

    from baton.approvals.slack import web_client

    client = web_client(settings)

    def post(text: str) -> bool:
        try:
            response = client.chat_postMessage(channel=settings.slack_channel, text=text)
        except SlackClientError as e:
            log.warning("slack chat.postMessage failed: %s", e)
            return False
        return bool(response.get("ok"))

    return post

"""Slack alerts when a domain's readiness turns fail, and again when it recovers.

Hysteresis: one open alert per domain and cause (a readiness check); the lag check must fail
`watch.alert_after_samples` samples in a row before it alerts. A post that Slack refuses is
retried at the next sample (the alert is only open once posted).

Open alerts are kept in the audit database (table watch_alerts) when the watch has one: a
restarted watch does not alert again for a cause still failing and posts exactly one recovery
for a cause that cleared meanwhile; two watches on one database share them (the row is claimed
before the alert is posted, and removed before the recovery is). While the database is away
the watch goes on from memory and writes what changed once it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from baton.audit.models import WatchAlert
from baton.errors import BatonError
from baton.watch.readiness import FAIL, Readiness

log = logging.getLogger("baton.watch")

Post = Callable[[str], bool]  # text -> posted
EVIDENCE_LIMIT = 4000  # characters of evidence kept with an open alert


@dataclass
class OpenAlert:
    cause: str
    since: float
    evidence: str


class StoredAlerts:
    """Open alerts in the audit database; every method raises BatonError/SQLAlchemyError when it is away."""

    def __init__(self, audit_factory: Callable):
        self._factory = audit_factory  # opened lazily: a database down at start-up is a hiccup
        self._audit = None

    @property
    def audit(self):
        if self._audit is None:
            self._audit = self._factory()
        return self._audit

    def open_alerts(self, domain: str) -> dict[str, OpenAlert]:
        with self.audit.transaction() as session:
            rows = session.exec(select(WatchAlert).where(WatchAlert.domain == domain)).all()
            return {r.cause: OpenAlert(r.cause, r.opened_at.timestamp(), r.evidence) for r in rows}

    def claim(self, domain: str, alert: OpenAlert) -> bool:
        """Record the alert as open; False when it already is (another watch, or before a restart)."""
        with self.audit.transaction() as session:
            if session.get(WatchAlert, (domain, alert.cause)) is not None:
                return False
            session.add(WatchAlert(domain=domain, cause=alert.cause,
                                   opened_at=datetime.fromtimestamp(alert.since, UTC),
                                   evidence=alert.evidence[:EVIDENCE_LIMIT]))
        return True

    def release(self, domain: str, cause: str) -> bool:
        """Remove the open alert; False when it was not open (another watch posted the recovery)."""
        with self.audit.transaction() as session:
            statement = delete(WatchAlert).where(WatchAlert.domain == domain, WatchAlert.cause == cause)
            return (session.execute(statement).rowcount or 0) > 0


@dataclass
class _Unsaved:
    """What changed while the database was away, written once it answers."""

    opened: dict[tuple[str, str], OpenAlert] = field(default_factory=dict)
    closed: set[tuple[str, str]] = field(default_factory=set)


class Alerts:
    """The alert state of every domain one watch samples."""

    def __init__(self, post: Post, *, lag_samples: int = 3, stored: StoredAlerts | None = None):
        self.post = post
        self.lag_samples = lag_samples
        self.stored = stored
        self.open: dict[tuple[str, str], OpenAlert] = {}
        self.failing_for: dict[tuple[str, str], int] = {}
        self._unsaved = _Unsaved()

    def needed(self, cause: str) -> int:
        return self.lag_samples if cause == "lag_within_thresholds" else 1

    def observe(self, readiness: Readiness) -> list[str]:
        """Post what changed; returns the texts posted."""
        stored = self._load(readiness.domain)
        posted = []
        for check in readiness.checks:
            key = (readiness.domain, check.name)
            if check.status == FAIL:
                self.failing_for[key] = self.failing_for.get(key, 0) + 1
                if key not in self.open and self.failing_for[key] >= self.needed(check.name):
                    text = (f":rotating_light: Baton: {readiness.domain} NOT READY to fail over "
                            f"{readiness.owner} -> {readiness.secondary}: {check.name} failing "
                            f"({self.failing_for[key]} sample(s) in a row). Evidence: {check.evidence}")
                    alert = OpenAlert(check.name, readiness.taken_at, check.evidence)
                    if self._open(key, alert, text, stored):
                        posted.append(text)
                continue
            self.failing_for.pop(key, None)
            alert = self.open.get(key)
            if alert is not None:
                lasted = readiness.taken_at - alert.since
                text = (f":white_check_mark: Baton: {readiness.domain} {check.name} recovered after "
                        f"{lasted:.0f} s ({check.status}): {check.evidence}")
                if self._close(key, text, stored):
                    posted.append(text)
        return posted

    def _load(self, domain: str) -> bool:
        """Take the domain's open alerts from the database (after writing what it missed); False
        when it is away (the watch goes on from memory)."""
        if self.stored is None:
            return False
        try:
            for key in [k for k in self._unsaved.closed if k[0] == domain]:
                self.stored.release(*key)
                self._unsaved.closed.discard(key)
            for key, alert in [(k, a) for k, a in self._unsaved.opened.items() if k[0] == domain]:
                self.stored.claim(domain, alert)
                del self._unsaved.opened[key]
            found = self.stored.open_alerts(domain)
        except (BatonError, SQLAlchemyError) as e:
            log.warning("%s: open alerts not read from the audit database (going on from memory): %s",
                        domain, str(e).splitlines()[0][:300])
            return False
        for key in [k for k in self.open if k[0] == domain and k[1] not in found]:
            del self.open[key]  # recovered by another watch
        self.open.update({(domain, cause): alert for cause, alert in found.items()})
        return True

    def _open(self, key: tuple[str, str], alert: OpenAlert, text: str, stored: bool) -> bool:
        if stored:
            try:
                if not self.stored.claim(key[0], alert):
                    self.open[key] = alert  # already open: posted by another watch a moment ago
                    return False
            except (BatonError, SQLAlchemyError) as e:
                log.warning("%s: alert state not written (kept until the database answers): %s", key[0], e)
                stored = False
        if not self._post(text):
            if stored:
                self._forget(key, lambda: self.stored.release(*key))
            return False
        self.open[key] = alert
        if not stored and self.stored is not None:
            self._unsaved.opened[key] = alert
            self._unsaved.closed.discard(key)
        return True

    def _close(self, key: tuple[str, str], text: str, stored: bool) -> bool:
        alert = self.open[key]
        if stored:
            try:
                if not self.stored.release(*key):
                    del self.open[key]  # another watch posted the recovery
                    return False
            except (BatonError, SQLAlchemyError) as e:
                log.warning("%s: alert state not written (kept until the database answers): %s", key[0], e)
                stored = False
        if not self._post(text):
            if stored:
                self._forget(key, lambda: self.stored.claim(key[0], alert))
            return False
        del self.open[key]
        if not stored and self.stored is not None:
            self._unsaved.closed.add(key)
            self._unsaved.opened.pop(key, None)
        return True

    def _forget(self, key: tuple[str, str], undo: Callable) -> None:
        """Undo a claim or release whose post failed, so the next sample tries again."""
        try:
            undo()
        except (BatonError, SQLAlchemyError) as e:
            log.warning("%s: alert state not restored after a failed post: %s", key[0], e)

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

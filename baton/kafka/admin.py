"""Admin access to a region: bounded timeouts, per-resource error checks, clear messages."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AclBinding, AdminClient, NewTopic

from baton.errors import AuthenticationFailed, RegionUnreachable
from baton.settings import RegionSettings


def client_config(region: RegionSettings, who: str = "admin") -> dict:
    return region.client_config(who) | {"socket.connection.setup.timeout.ms": 5000}


def admin_client(region: RegionSettings, errors: deque | None = None, who: str = "admin") -> AdminClient:
    """An admin client (as `who`); librdkafka's client-level errors (e.g. SASL authentication)
    go to `errors`."""
    # Metadata requests for named topics must never create them (librdkafka's producer-side
    # default asks the broker to, where auto.create.topics.enable is on).
    config = client_config(region, who) | {"logger": _quiet_logger(), "allow.auto.create.topics": False}
    if errors is not None:
        config["error_cb"] = errors.append
    return AdminClient(config)


def _quiet_logger():
    # librdkafka logs every refused connection; Baton reports reachability itself.
    import logging

    logger = logging.getLogger("baton.librdkafka")
    logger.setLevel(logging.CRITICAL)
    return logger


REACHABILITY_PROBE = "baton.reachability-probe"  # asked about, never created

# Per context (one runbook run): (region name, client config) -> (client, its error queue).
_KEPT: ContextVar[dict | None] = ContextVar("baton_kept_admin_clients", default=None)


@contextmanager
def kept_admin_clients() -> Iterator[None]:
    """Within this block (in this thread), check_reachable keeps one client per region and
    credentials and probes it on every call (1.4 ms) instead of opening a new one (45 ms: a
    connection and a SASL handshake; 22 per planned failover). A client whose probe fails is
    dropped: the next call opens a fresh one."""
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


AUTH_SLICE_SECONDS = 1.0  # how often a slow metadata request is interrupted to look for an auth failure


def check_reachable(name: str, region: RegionSettings, timeout: float | None = None,
                    who: str = "admin") -> AdminClient:
    """An admin client for a region that answered a metadata request; AuthenticationFailed when
    its brokers refused the credentials (reported by librdkafka only through its error callback),
    else RegionUnreachable."""
    kept = _KEPT.get()
    key = (name, tuple(sorted(client_config(region, who).items())))
    if kept is not None and key in kept:
        admin, errors = kept.pop(key)  # back once it answers
        errors.clear()
    else:
        errors = deque(maxlen=256)  # a refused bootstrap broker reports ~20 errors a second
        admin = admin_client(region, errors, who)
    wait = timeout if timeout is not None else region.request_timeout_seconds
    deadline = time.monotonic() + wait
    bootstrap = {address.strip() for address in region.bootstrap_servers.split(",")}
    refusing: set[str] = set()  # addresses that refused a TCP connection during this call
    admin.poll(0)  # a kept client's errors from before this call (e.g. a restart long ago) do not count
    while True:
        errors.clear()  # what librdkafka reports during this slice (served by the poll below)
        try:
            # The metadata of one topic that never exists: a full listing (1,400 partitions in
            # the lab after a test run) was built in Python under the GIL on each call, ~25 % of
            # an evacuation's GIL time. Not DescribeCluster: librdkafka 2.16 aborted the process
            # (rd_kafka_admin_response_parse assertion) on one while a region was killed.
            admin.list_topics(topic=REACHABILITY_PROBE,
                              timeout=max(0.1, min(AUTH_SLICE_SECONDS, deadline - time.monotonic())))
            if kept is not None:
                kept[key] = (admin, errors)
            return admin
        except KafkaException as e:
            admin.poll(0)  # serves the error callback
            refused = next((x for x in list(errors) if x.code() == KafkaError._AUTHENTICATION), None)
            if refused is not None:
                creds = getattr(region, who)
                raise AuthenticationFailed(
                    f"region {name!r} ({region.bootstrap_servers}) refused the {who} credentials "
                    f"(user {creds.username if creds else None!r}): SASL authentication failed: "
                    f"{refused.str()}. Check regions.{name}.{who} in the topology file and "
                    f"BATON_REGIONS__{name.upper()}__{who.upper()}__* in the environment.") from e
            if time.monotonic() >= deadline:
                raise RegionUnreachable(
                    f"region {name!r} ({region.bootstrap_servers}) did not answer a metadata request "
                    f"within {wait:g}s: {e.args[0]}. Check that its brokers are up and reachable."
                ) from e
            # Every bootstrap address refused the TCP connection during this call: nothing listens
            # there, and waiting out the request timeout only delays the answer (three probes of a
            # dead owner cost an unplanned failover 15 s). A hung broker accepts connections, so it
            # still gets the whole timeout.
            refusing |= {a for a in (refused_address(x.str()) for x in errors) if a}
            if bootstrap <= refusing:
                raise RegionUnreachable(
                    f"region {name!r} ({region.bootstrap_servers}) did not answer a metadata request: "
                    "every bootstrap broker refused the connection. Check that its brokers are up and "
                    "reachable.") from e


def refused_address(message: str) -> str | None:
    """host:port of a librdkafka connection-refused error, e.g. 'sasl_plaintext://127.0.0.1:19092/
    bootstrap: Connect to ipv4#127.0.0.1:19092 failed: Connection refused'; None for other errors."""
    if "connection refused" not in message.lower():
        return None
    broker = message.split(": ", 1)[0]  # [scheme://]host:port/<id or "bootstrap">
    return broker.split("://", 1)[-1].rsplit("/", 1)[0]


# A broker that just started (or a busy machine) answers admin requests with "Failed while waiting
# for controller" until its metadata has caught up: retry those, bounded, instead of failing.
SETTLE_SECONDS = 120.0


def _transient(error: KafkaError) -> bool:
    # A creation refused because every broker is fenced (a region that just came back, before its
    # controller unfenced it) succeeds once one is; too few brokers for the replication factor
    # does not say "fenced" and fails at once.
    fenced = error.code() == KafkaError.INVALID_REPLICATION_FACTOR and "fenced" in error.str()
    return fenced or error.retriable() or error.code() in (
        KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER)


def _settled(submit: Callable[[list], dict], items: list, ignore: Callable[[KafkaError], bool],
             what: Callable[[object], str]) -> list:
    """Submit admin requests, retrying transient per-resource errors until SETTLE_SECONDS pass."""
    deadline = time.monotonic() + SETTLE_SECONDS
    done, pending = [], list(items)
    while pending:
        retry = []
        for item, future in submit(pending).items():
            try:
                future.result()
                done.append(item)
            except KafkaException as e:
                error = e.args[0]
                if not isinstance(error, KafkaError):
                    raise
                if ignore(error):
                    continue
                if _transient(error) and time.monotonic() < deadline:
                    retry.append(item)
                    continue
                raise KafkaException(f"{what(item)} failed: {error}") from e
        pending = retry
        if pending:
            time.sleep(0.5)
    return done


def topic_partitions(admin: AdminClient, topics: Iterable[str], timeout: float = 10,
                     retry_until: float | None = None) -> dict[str, int | None]:
    """Partition count of each named topic, None where it does not exist (or answers with an
    error, e.g. not authorized). Asks for these topics only (admin_client never auto-creates):
    a full metadata listing is built in Python under the GIL, and a cluster holds thousands of
    partitions. Transient errors are retried until `retry_until` (monotonic)."""
    counts: dict[str, int | None] = {}
    for name in dict.fromkeys(topics):
        while True:
            try:
                found = admin.list_topics(topic=name, timeout=timeout).topics.get(name)
                break
            except KafkaException as e:
                if retry_until is None or not _transient(e.args[0]) or time.monotonic() > retry_until:
                    raise
                time.sleep(0.5)
        counts[name] = len(found.partitions) if found is not None and found.error is None else None
    return counts


def ensure_topics(admin: AdminClient, topics: dict[str, int], config: dict | None = None) -> list[str]:
    """Create the missing topics (name -> partitions); return the names created."""
    existing = topic_partitions(admin, topics, retry_until=time.monotonic() + SETTLE_SECONDS)
    wanted = [
        NewTopic(name, partitions, 1, config=config or {})
        for name, partitions in topics.items()
        if existing[name] is None
    ]
    if not wanted:
        return []
    by_name = {t.topic: t for t in wanted}
    created = _settled(lambda names: admin.create_topics([by_name[n] for n in names], operation_timeout=10),
                       list(by_name), ignore=lambda e: e.code() == KafkaError.TOPIC_ALREADY_EXISTS,
                       what=lambda name: f"creating topic {name}")
    _await_metadata(admin, {t.topic: t.num_partitions for t in wanted})
    return created


def _await_metadata(admin: AdminClient, topics: dict[str, int]) -> None:
    """Until the broker answering metadata lists every topic with its partitions: the controller
    acknowledges a creation before brokers apply it, and a busy broker took seconds to (CI)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        listed = topic_partitions(admin, topics, retry_until=deadline)
        missing = [n for n, count in topics.items() if (listed[n] or 0) < count]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise KafkaException(f"topic(s) {', '.join(missing)} created but not yet in the brokers' "
                                 f"metadata after {SETTLE_SECONDS:g}s")
        time.sleep(0.2)


def ensure_acls(admin: AdminClient, bindings: Iterable[AclBinding]) -> None:
    """Create ACL bindings (creating an existing one is a no-op in Kafka); check each result."""
    bindings = list(bindings)
    if not bindings:
        return
    _settled(lambda pending: admin.create_acls(pending, request_timeout=10), bindings,
             ignore=lambda e: False, what=lambda binding: f"creating ACL {binding}")


def end_offsets(admin_config: dict, topic: str, partitions: int, timeout: float = 10) -> list[int]:
    """High watermarks of every partition of a topic."""
    from confluent_kafka import Consumer

    consumer = Consumer(admin_config | {"group.id": "baton-probe", "enable.auto.commit": False})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()

"""Admin requests retry a controller that is not ready yet, and still fail on real errors."""

from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException

from baton.kafka.admin import _settled


def _future(error: KafkaError | None = None) -> Future:
    future = Future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(error))
    return future


def test_controller_not_ready_is_retried_until_it_answers():
    waiting = KafkaError(KafkaError._TIMED_OUT, "Failed while waiting for controller")
    calls = []

    def submit(names):
        calls.append(list(names))
        return {n: _future(waiting if len(calls) < 3 and n == "b" else None) for n in names}

    done = _settled(submit, ["a", "b"], ignore=lambda e: False, what=str)
    assert sorted(done) == ["a", "b"]
    assert calls == [["a", "b"], ["b"], ["b"]]  # only the failed one is sent again


def test_a_real_error_is_raised_naming_the_resource_and_ignored_ones_are_skipped():
    exists = KafkaError(KafkaError.TOPIC_ALREADY_EXISTS, "exists")
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")
    assert _settled(lambda names: {n: _future(exists) for n in names}, ["a"],
                    ignore=lambda e: e.code() == KafkaError.TOPIC_ALREADY_EXISTS, what=str) == []
    with pytest.raises(KafkaException, match="creating topic x failed"):
        _settled(lambda names: {n: _future(denied) for n in names}, ["x"], ignore=lambda e: False,
                 what=lambda n: f"creating topic {n}")


def test_a_region_refusing_connections_is_unreachable_at_once_and_a_silent_one_after_its_timeout():
    """Closed ports (killed brokers) are reported as refused after one probe slice, not after the
    request timeout; a port that accepts and never answers (a hung broker) still gets the whole
    timeout, also beside a refusing one. Real sockets, no broker."""
    import socket

    from baton.errors import RegionUnreachable
    from baton.kafka.admin import check_reachable
    from baton.settings import RegionSettings

    def region(*ports: int, timeout: float = 30) -> RegionSettings:
        return RegionSettings(bootstrap_servers=",".join(f"127.0.0.1:{p}" for p in ports),
                              security_protocol="PLAINTEXT", request_timeout_seconds=timeout)

    # bound, never listening: connections are refused; listening, never answering: accepted
    with socket.socket() as closed, socket.socket() as closed_too, socket.socket() as silent:
        for s in (closed, closed_too, silent):
            s.bind(("127.0.0.1", 0))
        silent.listen(8)
        dead, dead_too, hung = (s.getsockname()[1] for s in (closed, closed_too, silent))
        for ports in ((dead,), (dead, dead_too)):
            with pytest.raises(RegionUnreachable, match="every bootstrap broker refused the connection"):
                check_reachable("east", region(*ports))
        for ports in ((hung,), (dead, hung)):
            with pytest.raises(RegionUnreachable, match="did not answer a metadata request within 2s"):
                check_reachable("east", region(*ports, timeout=2))


def test_a_creation_refused_while_every_broker_is_fenced_is_retried_and_too_few_brokers_is_not():
    fenced = KafkaError(KafkaError.INVALID_REPLICATION_FACTOR,
                        "Unable to replicate the partition 1 time(s): All brokers are currently fenced, "
                        "or have all their log directories cordoned.")
    too_few = KafkaError(KafkaError.INVALID_REPLICATION_FACTOR,
                         "Unable to replicate the partition 3 time(s): The target replication factor of 3 "
                         "cannot be reached because only 1 broker(s) are registered.")
    calls = []

    def submit(names):
        calls.append(list(names))
        return {n: _future(fenced if len(calls) < 3 else None) for n in names}

    assert _settled(submit, ["t"], ignore=lambda e: False, what=str) == ["t"] and len(calls) == 3
    with pytest.raises(KafkaException, match="only 1 broker"):
        _settled(lambda names: {n: _future(too_few) for n in names}, ["t"], ignore=lambda e: False, what=str)


def test_a_refused_broker_is_named_by_its_address_whatever_the_protocol():
    from baton.kafka.admin import refused_address

    assert refused_address("sasl_plaintext://127.0.0.1:19092/bootstrap: Connect to ipv4#127.0.0.1:19092 "
                           "failed: Connection refused (after 0ms in state CONNECT)") == "127.0.0.1:19092"
    assert refused_address("kafka-1.east:9093/1: Connect to ipv4#10.0.0.7:9093 failed: Connection refused "
                           "(after 1ms in state CONNECT)") == "kafka-1.east:9093"
    assert refused_address("sasl_ssl://kafka-1.east:9093/1: Receive failed: Disconnected") is None

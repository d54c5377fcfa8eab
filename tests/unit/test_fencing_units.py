"""The fence's binding set: only the domain's principals, topics and transactional ids, no cluster."""

from __future__ import annotations

import pytest
import yaml
from confluent_kafka.admin import AclOperation, AclPermissionType, ResourcePatternType, ResourceType

from baton.errors import ConfigError
from baton.kafka.fencing import _text, fence_bindings, legacy_bindings
from baton.lab.config import LabPorts, single_domain_document
from baton.settings import load_topology


def topology(tmp_path, **domain):
    document = single_domain_document(LabPorts(19000))
    document["domain"].update(domain)
    document["regions"]["east"]["producer_principals"] = ["User:orders-app", "User:orders-batch"]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_topology(path)


def test_fence_names_only_the_domains_topics_and_transactional_ids(tmp_path):
    t = topology(tmp_path, topics=["orders.events", "orders.audit"])
    bindings = fence_bindings(t, "east")
    assert {(b.restype, b.name, b.resource_pattern_type, b.principal) for b in bindings} == {
        (ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal)
        for topic in ("orders.events", "orders.audit") for principal in ("User:orders-app",
                                                                         "User:orders-batch")
    } | {(ResourceType.TRANSACTIONAL_ID, "orders-", ResourcePatternType.PREFIXED, principal)
         for principal in ("User:orders-app", "User:orders-batch")}
    assert len(bindings) == 6  # no duplicates
    assert {(b.operation, b.permission_type, b.host) for b in bindings} == {
        (AclOperation.WRITE, AclPermissionType.DENY, "*")}
    # Nothing cluster-wide, no wildcard: another domain's principal or topic is never reached.
    assert not [b for b in bindings if b.restype == ResourceType.BROKER or b.name in ("*", "")]
    # West has only its own principals.
    assert {b.principal for b in fence_bindings(t, "west")} == {"User:orders-app"}


def test_declared_topic_prefixes_are_fenced_as_prefixes(tmp_path):
    bindings = fence_bindings(topology(tmp_path, topic_prefixes=["orders."]), "west")
    assert [(b.restype, b.name, b.resource_pattern_type) for b in bindings] == [
        (ResourceType.TOPIC, "orders.events", ResourcePatternType.LITERAL),
        (ResourceType.TOPIC, "orders.", ResourcePatternType.PREFIXED),
        (ResourceType.TRANSACTIONAL_ID, "orders-", ResourcePatternType.PREFIXED)]


def test_transactional_id_prefixes_default_to_the_domain_name_and_can_be_declared(tmp_path):
    def prefixes(**domain):
        return sorted(b.name for b in fence_bindings(topology(tmp_path, **domain), "west")
                      if b.restype == ResourceType.TRANSACTIONAL_ID)

    assert prefixes() == ["orders-"]
    assert prefixes(transactional_id_prefixes=["checkout-", "orders-tx-"]) == ["checkout-", "orders-tx-"]
    assert prefixes(transactional_id_prefixes=[]) == []  # the domain has no transactional producers


@pytest.mark.parametrize(("domain", "field"), [
    ({"topics": ["orders.events", "*"]}, "domain"),
    ({"transactional_id_prefixes": [""]}, "domain.transactional_id_prefixes"),
    ({"topic_prefixes": [""]}, "domain.topic_prefixes"),
])
def test_a_fence_that_would_reach_outside_the_domain_is_refused_in_the_file(tmp_path, domain, field):
    with pytest.raises(ConfigError) as error:
        topology(tmp_path, **domain)
    assert field in str(error.value)


def test_legacy_cluster_binding_is_known_so_unfence_can_remove_it(tmp_path):
    legacy = legacy_bindings(topology(tmp_path), "east")
    assert [_text(b) for b in legacy] == [
        "DENY IDEMPOTENT_WRITE on broker kafka-cluster for User:orders-app",
        "DENY IDEMPOTENT_WRITE on broker kafka-cluster for User:orders-batch"]
    assert [_text(b) for b in fence_bindings(topology(tmp_path), "west")] == [
        "DENY WRITE on topic orders.events for User:orders-app",
        "DENY WRITE on transactional_id prefix orders- for User:orders-app"]


def test_unknown_region_and_no_principals_are_config_errors(tmp_path):
    t = topology(tmp_path)
    with pytest.raises(ConfigError, match="unknown region 'north'"):
        fence_bindings(t, "north")
    bare = t.model_copy(update={"regions": {
        name: region.model_copy(update={"producer_principals": []}) for name, region in t.regions.items()}})
    with pytest.raises(ConfigError, match="producer_principals is empty"):
        legacy_bindings(bare, "east")


def test_fence_changes_and_reads_back_through_the_client_it_is_given(tmp_path, monkeypatch):
    """An idle librdkafka client is falsy (len() is its queue length, 0): `admin or new_client()`
    opened a new client for every read-back, 2-5 per fence or unfence."""
    from concurrent.futures import Future

    from baton.kafka import fencing

    class IdleAdmin:
        def __init__(self):
            self.acls, self.calls = [], 0

        def __len__(self):
            return 0

        def _done(self, value):
            future = Future()
            future.set_result(value)
            return future

        def describe_acls(self, query, request_timeout):
            self.calls += 1
            return self._done([b for b in self.acls if b.principal == query.principal])

        def create_acls(self, bindings, request_timeout):
            self.acls += bindings
            return {b: self._done(None) for b in bindings}

    def no_new_client(*args, **kwargs):
        raise AssertionError("opened a new client although one was given")

    monkeypatch.setattr(fencing, "check_reachable", no_new_client)
    t = topology(tmp_path)
    admin = IdleAdmin()
    evidence = fencing.fence(t, "east", admin=admin)
    assert evidence["verified_by_read_back"] and evidence["changed"] == len(fence_bindings(t, "east"))
    assert fencing.is_fenced(t, "east", admin) and admin.calls >= 2

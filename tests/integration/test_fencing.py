"""ACL fencing against the real lab brokers: an unguarded producer is refused, then allowed again."""

from __future__ import annotations

import json

import pytest
import yaml
from confluent_kafka import KafkaError, Producer
from typer.testing import CliRunner

from baton.audit import AuditStore
from baton.cli import app
from baton.kafka.fencing import fence, present_bindings, unfence

pytestmark = pytest.mark.integration


def unguarded_write(topology, region: str, topic: str) -> KafkaError | None:
    """One record from a plain confluent-kafka producer as the domain's producer principal."""
    producer = Producer(topology.regions[region].client_config("producer") | {"message.timeout.ms": 10000})
    outcome: dict = {}
    producer.produce(topic, value=b"unguarded", on_delivery=lambda error, _m: outcome.setdefault("e", error))
    assert producer.flush(15) == 0
    return outcome["e"]


def test_fence_denies_an_unguarded_producer_and_unfence_allows_it_again(domain_topology):
    topology = domain_topology()
    topic = topology.domain.topics[0]
    audit = AuditStore.for_topology(topology)
    run = audit.start_run(topology.domain.name, "failover")
    assert unguarded_write(topology, "east", topic) is None

    first = fence(topology, "east", run.id, audit=audit)
    again = fence(topology, "east", run.id, audit=audit)
    assert (first["changed"], first["unchanged"]) == (2, 0)
    assert (again["changed"], again["unchanged"]) == (0, 2)  # idempotent
    assert len(present_bindings(topology, "east")) == 2
    assert present_bindings(topology, "west") == []

    refused = unguarded_write(topology, "east", topic)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert unguarded_write(topology, "west", topic) is None  # only the fenced region refuses

    removed = unfence(topology, "east", run.id, audit=audit)
    assert (removed["changed"], removed["unchanged"]) == (2, 0)
    assert unfence(topology, "east", run.id, audit=audit)["changed"] == 0
    assert present_bindings(topology, "east") == []
    assert unguarded_write(topology, "east", topic) is None

    steps = audit.run(run.id).steps
    assert [(s.name, s.status, s.region) for s in steps] == [
        ("fence_region", "succeeded", "east"), ("fence_region", "succeeded", "east"),
        ("unfence_region", "succeeded", "east"), ("unfence_region", "succeeded", "east")]
    assert json.loads(steps[0].evidence)["bindings"] == [
        f"DENY WRITE on topic {topic} for User:orders-app",
        f"DENY WRITE on transactional_id prefix {topology.domain.name}- for User:orders-app"]
    assert json.loads(steps[0].evidence)["verified_by_read_back"] is True


def _config_file(topology, tmp_path, name: str = "topology.yaml") -> str:
    path = tmp_path / name
    document = topology.model_dump(mode="json")
    for region in document["regions"].values():  # SecretStr dumps masked; write the real ones
        for who in ("admin", "producer", "consumer"):
            credentials = getattr(topology.regions["east"], who)
            if region.get(who):
                region[who]["password"] = credentials.password.get_secret_value()
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_cli_fence_moves_authority_and_records_a_run(domain_topology, tmp_path):
    topology = domain_topology()
    config = _config_file(topology, tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["authority", "init", "--config", config]).exit_code == 0
    kept = runner.invoke(app, ["authority", "keep", "--once", "--json", "--config", config])
    assert kept.exit_code == 0, kept.output
    tick = json.loads(kept.output)
    assert (tick["action"], tick["authority"]["epoch"], tick["published"]) == (
        "renewed", 1, {"east": None, "west": None})

    fenced = runner.invoke(app, ["authority", "fence", "east", "--config", config, "--json",
                                 "--reason", "drill"])
    assert fenced.exit_code == 0, fenced.output
    result = json.loads(fenced.output)
    assert result["acls"]["changed"] == 2
    assert result["authority"]["authority"]["epoch"] == 2
    assert result["authority"]["authority"]["state"] == "FENCED"
    assert result["authority"]["published"] == {"east": None, "west": None}
    refused = unguarded_write(topology, "east", topology.domain.topics[0])
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    shown = json.loads(runner.invoke(app, ["authority", "show", "--config", config, "--json"]).output)
    assert shown["authority"]["epoch"] == 2
    assert {r: v["control_topic"]["epoch"] for r, v in shown["regions"].items()} == {"east": 2, "west": 2}
    assert not any(v["accepts_writes"] for v in shown["regions"].values())

    unfenced = json.loads(runner.invoke(app, ["authority", "unfence", "east", "--config", config,
                                              "--json"]).output)
    assert unfenced["authority"]["authority"]["state"] == "ACTIVE"
    assert unguarded_write(topology, "east", topology.domain.topics[0]) is None

    view = json.loads(runner.invoke(app, ["audit", "show", result["run_id"], "--config", config,
                                          "--json"]).output)
    assert view["run"]["status"] == "succeeded" and view["run"]["reason"] == "drill"
    assert [s["name"] for s in view["steps"]] == ["fence_region", "record_authority"]
    history = json.loads(runner.invoke(app, ["authority", "history", "--config", config, "--json"]).output)
    assert [(h["epoch"], h["state"]) for h in history] == [(1, "ACTIVE"), (2, "FENCED"), (3, "ACTIVE")]
    assert runner.invoke(app, ["audit", "verify", "--config", config]).exit_code == 0


def test_bad_input_is_a_usage_error_and_changes_nothing(domain_topology, tmp_path):
    topology = domain_topology()
    config = _config_file(topology, tmp_path)
    runner = CliRunner()

    unknown = runner.invoke(app, ["authority", "fence", "north", "--config", config])
    assert unknown.exit_code == 2
    assert "unknown region 'north'; configured: east, west" in unknown.output

    no_principals = topology.model_copy(update={"regions": {
        name: region.model_copy(update={"producer_principals": []})
        for name, region in topology.regions.items()}})
    bare = runner.invoke(app, ["authority", "fence", "east", "--config",
                               _config_file(no_principals, tmp_path, "bare.yaml")])
    assert bare.exit_code == 2
    assert "regions.east.producer_principals is empty" in bare.output

    stray = runner.invoke(app, ["authority", "unlock", "--run", "no-such-run", "--config", config])
    assert stray.exit_code == 2 and "no run 'no-such-run'" in stray.output
    assert present_bindings(topology, "east") == []
    audit = AuditStore.for_topology(topology)
    assert audit.lock_holder(topology.domain.name) is None
    assert audit.runs() == []  # refused before anything was recorded

"""Several domains in one topology file: one Topology per domain, named with --domain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from baton.cli import app
from baton.errors import ConfigError
from baton.kafka.fencing import fence_bindings
from baton.lab.config import LabPorts, single_domain_document, topology_document
from baton.replication.mm2.connectors import connector_config, connector_name
from baton.settings import load_topologies, load_topology


def write(tmp_path: Path, document: dict, name: str = "topology.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def two_domains(default: str | None = None) -> dict:
    """A two-domain file from the lab's: orders (east) and payments (west), on ports no lab uses."""
    document = topology_document(LabPorts(29500))
    if default is None:
        del document["default_domain"]
    else:
        document["default_domain"] = default
    return document


def test_each_domain_is_a_topology_of_its_own_with_the_shared_sections(tmp_path):
    path = write(tmp_path, two_domains())
    orders, payments = load_topologies(path)
    assert (orders.domain.name, orders.domain.initial_owner) == ("orders", "east")
    assert (payments.domain.name, payments.domain.initial_owner) == ("payments", "west")
    # Shared sections are shared, a domain's own sections are merged over them.
    assert payments.regions["east"].bootstrap_servers == orders.regions["east"].bootstrap_servers
    assert payments.thresholds == orders.thresholds
    assert orders.regions["west"].producer_principals == ["User:orders-app"]
    assert payments.regions["west"].producer_principals == ["User:payments-app"]
    assert payments.regions["east"].producer.username == "payments-app"
    assert payments.regions["east"].admin.username == orders.regions["east"].admin.username
    assert orders.replication.topics_pattern == r"orders\..*"
    assert payments.replication.topics_pattern is None
    assert payments.replication.connect_url == orders.replication.connect_url
    assert load_topology(path, "payments") == payments


def test_a_multi_domain_file_needs_a_name_unless_it_has_a_default(tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_DOMAIN", raising=False)
    path = write(tmp_path, two_domains())
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    assert "orders, payments" in str(caught.value) and "--domain NAME" in str(caught.value)
    with pytest.raises(ConfigError, match=r"domain 'billing' is not in .*orders, payments"):
        load_topology(path, "billing")
    monkeypatch.setenv("BATON_DOMAIN", "payments")  # names the domain; is not the `domain` section
    assert load_topology(path).domain.name == "payments"
    monkeypatch.delenv("BATON_DOMAIN")
    assert load_topology(write(tmp_path, two_domains("payments"), "d.yaml")).domain.name == "payments"
    with pytest.raises(ConfigError, match="default_domain 'nope' is not one of its domains"):
        load_topology(write(tmp_path, two_domains("nope"), "bad.yaml"))


def test_one_domain_files_work_as_before_and_domain_fields_still_come_from_the_environment(
        tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_DOMAIN", raising=False)
    single = write(tmp_path, single_domain_document(LabPorts(19000)))
    assert load_topology(single).domain.name == "orders"
    assert load_topology(single, "orders").domain.name == "orders"
    with pytest.raises(ConfigError, match="domain 'payments' is not in"):
        load_topology(single, "payments")
    listed = two_domains()
    listed["domains"] = listed["domains"][1:]
    assert load_topology(write(tmp_path, listed, "one.yaml")).domain.name == "payments"
    monkeypatch.setenv("BATON_DOMAIN__INITIAL_OWNER", "west")
    assert load_topology(single).domain.initial_owner == "west"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["domains"][1].update(name="orders"), r"domain name\(s\) orders listed more than once"),
    (lambda d: d["domains"][1]["topics"].append("orders.events"),
     r"topic 'orders.events' belongs to both domain 'orders' and domain 'payments'"),
    (lambda d: d["domains"][0].update(topic_prefixes=["pay"]),
     r"topic 'payments.ledger' of domain 'payments' is under domain 'orders'\'s topic prefix 'pay'"),
    (lambda d: d.update(domain=d["domains"][0]), r"either `domain:` \(one domain\) or `domains:`"),
    (lambda d: d.update(domains=[]), r"`domains:` must be a non-empty list"),
    (lambda d: d["domains"][1].update(initial_owner="north"), r"domains\[1\]: .*initial_owner 'north'"),
    (lambda d: d["domains"][1].pop("topics"), r"domains\[1\]\.topics: Field required"),
])
def test_bad_multi_domain_files_are_refused_naming_what_is_wrong(tmp_path, change, message):
    document = two_domains("orders")
    change(document)
    with pytest.raises(ConfigError) as caught:
        load_topologies(write(tmp_path, document))
    assert re.search(message, str(caught.value)), str(caught.value)


def test_cli_needs_domain_for_a_multi_domain_file_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("BATON_DOMAIN", raising=False)
    path = str(write(tmp_path, two_domains()))
    runner = CliRunner()
    refused = runner.invoke(app, ["config", "check", "--config", path])
    assert refused.exit_code == 2
    assert "orders, payments" in refused.output and "--domain NAME" in refused.output
    named = runner.invoke(app, ["config", "check", "--config", path, "--domain", "payments"])
    assert named.exit_code == 0, named.output
    assert "domain payments" in named.output and "owner west" in named.output
    from_env = runner.invoke(app, ["config", "check", "--config", path], env={"BATON_DOMAIN": "orders"})
    assert from_env.exit_code == 0 and "domain orders" in from_env.output


def test_each_domain_has_its_own_connectors_filtered_to_its_topics_and_groups(tmp_path):
    orders, payments = load_topologies(write(tmp_path, two_domains()))
    names = {connector_name(t, kind, "west", "east") for t in (orders, payments)
             for kind in ("source", "checkpoint", "heartbeat")}
    assert len(names) == 6
    assert connector_name(payments, "source", "west", "east") == "mm2-payments-west-east-source"
    source = connector_config(payments, "source", "west", "east")
    topics, groups = re.compile(source["topics"]), re.compile(source["groups"])
    assert topics.fullmatch("payments.ledger") and topics.fullmatch("payments.refunds")
    assert not topics.fullmatch("orders.events") and not topics.fullmatch("xpayments.ledger")
    assert groups.fullmatch("payments-settlement") and not groups.fullmatch("orders-billing")
    # The lab's orders connectors keep their explicit filters (tests' throwaway domains ride on them).
    assert re.fullmatch(connector_config(orders, "source", "east", "west")["topics"], "orders.rb-1")
    # Without topic prefixes or patterns the filter is exactly the domain's topics.
    exact = payments.model_copy(update={
        "domain": payments.domain.model_copy(update={"topic_prefixes": []}),
        "replication": payments.replication.model_copy(update={"groups_pattern": None})})
    config = connector_config(exact, "checkpoint", "west", "east")
    assert config["topics"] == r"payments\.ledger" and config["groups"] == "payments\\-settlement"


def test_a_payments_fence_names_only_the_payments_principal(tmp_path):
    orders, payments = load_topologies(write(tmp_path, two_domains()))
    assert {b.principal for b in fence_bindings(payments, "west")} == {"User:payments-app"}
    assert {b.principal for b in fence_bindings(orders, "east")} == {"User:orders-app"}
    assert {b.name for b in fence_bindings(payments, "west")} == {"payments.ledger", "payments.", "payments-"}


def test_a_lab_with_the_older_shared_connectors_is_refused_with_the_way_out():
    from baton.errors import LabError
    from baton.lab.lab import Lab

    Lab._refuse_shared_connectors(["mm2-orders-east-west-source", "mm2-payments-west-east-heartbeat"])
    with pytest.raises(LabError, match=r"mm2-east-west-source\).*baton lab down --purge"):
        Lab._refuse_shared_connectors(["mm2-orders-east-west-source", "mm2-east-west-source"])


def test_services_serve_every_domain_of_a_file_or_the_named_ones(tmp_path):
    path = str(write(tmp_path, two_domains()))
    runner = CliRunner()
    watch = runner.invoke(app, ["watch", "--once", "--config", path, "--domain", "billing"])
    assert watch.exit_code == 2 and "--domain billing" in watch.output and "orders, payments" in watch.output
    keep = runner.invoke(app, ["authority", "keep", "--once", "--config", path, "--all-domains",
                               "--domain", "orders"])
    assert keep.exit_code == 2 and "drop --domain" in keep.output


def test_a_run_is_resumed_only_with_its_own_domain(tmp_path):
    from baton.audit import AuditStore
    from baton.errors import UsageError
    from flows.runner import open_run
    from runbooks import FAILOVER

    document = two_domains("orders")
    document["audit"]["database_url"] = f"sqlite:///{tmp_path / 'audit.db'}"
    path = write(tmp_path, document)
    payments = load_topology(path, "payments")
    run = AuditStore.for_topology(payments).start_run("payments", "failover", trigger="test")
    with pytest.raises(UsageError, match=f"run {run.id} is a run of domain payments, not orders: "
                                         "resume it with --domain payments"):
        open_run(FAILOVER, config=str(path), resume_run_id=run.id)

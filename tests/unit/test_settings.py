"""Topology validation: bad files are named with their field, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from baton.cli import app
from baton.errors import ConfigError
from baton.lab.config import LabPorts, single_domain_document
from baton.settings import load_topology

EXAMPLE = Path(__file__).parents[2] / "deployments" / "example-topology.yaml"


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def lab_document() -> dict:
    return single_domain_document(LabPorts(19000))


def test_example_and_lab_topologies_are_valid(tmp_path):
    example = load_topology(EXAMPLE)
    assert example.domain.initial_owner == "east"
    assert example.replication.remote_topic("orders.events", "east") == "east.orders.events"
    lab = load_topology(write(tmp_path, lab_document()))
    assert lab.regions["west"].bootstrap_servers == "127.0.0.1:19192"
    assert lab.other_region("east") == "west"


def test_missing_field_names_file_and_field(tmp_path):
    document = lab_document()
    del document["regions"]["east"]["bootstrap_servers"]
    path = write(tmp_path, document)
    with pytest.raises(ConfigError) as error:
        load_topology(path)
    assert str(path) in str(error.value)
    assert "regions.east.bootstrap_servers" in str(error.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["domain"].update(initial_owner="north"), "initial_owner"),
        (lambda d: d["thresholds"].update(quiesce_seconds=-1), "thresholds.quiesce_seconds"),
        (lambda d: d["replication"].update(policy="fancy"), "replication.policy"),
        (lambda d: d["regions"].pop("west"), "exactly two regions"),
        (lambda d: d["regions"]["east"].update(producer_principals=["orders-app"]), "User:name"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_invalid_values_are_rejected_with_the_field(tmp_path, mutate, field):
    document = lab_document()
    mutate(document)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_topology(write(tmp_path, document))


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BATON_THRESHOLDS__QUIESCE_SECONDS", "7.5")
    monkeypatch.setenv("BATON_REPLICATION__POLICY", "identity")
    topology = load_topology(write(tmp_path, lab_document()))
    assert topology.thresholds.quiesce_seconds == 7.5
    assert topology.replication.remote_topic("orders.events", "east") == "orders.events"
    assert topology.regions["east"].bootstrap_servers == "127.0.0.1:19092"  # file values kept


def test_cli_exits_2_without_traceback_on_invalid_file(tmp_path):
    document = lab_document()
    document["regions"]["east"]["request_timeout_seconds"] = "soon"
    path = write(tmp_path, document)
    result = CliRunner().invoke(app, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert "regions.east.request_timeout_seconds" in result.output
    assert str(path) in result.output
    assert "Traceback" not in result.output


def test_cli_exits_2_on_missing_file_and_on_broken_yaml(tmp_path):
    missing = CliRunner().invoke(app, ["config", "check", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("domain: [unclosed\n")
    result = CliRunner().invoke(app, ["config", "check", "--config", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output

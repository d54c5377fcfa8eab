"""docker-compose.yml cannot be run here (no Docker engine), so it is validated as a file."""

from __future__ import annotations

from pathlib import Path

import yaml

from baton.lab import config as lab
from baton.lab.compose import env_to_properties, rendered_files
from baton.settings import load_topology

ROOT = Path(__file__).parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_committed_files_match_the_lab_settings_they_are_generated_from():
    for path, text in rendered_files().items():
        assert (ROOT / path).read_text() == text, (
            f"{path} drifted from baton/lab/config.py; run `python -m baton.lab.compose write`"
        )


def test_every_mounted_file_exists_and_every_service_is_named():
    services = compose()["services"]
    assert {"kafka-east", "kafka-west", "connect", "postgres", "prefect-server", "prefect-worker",
            "baton-approvals", "baton-lease-keeper", "baton-watch"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
        if service.get("build") == ".":
            assert (ROOT / "Dockerfile").is_file()


def test_brokers_use_the_lab_broker_settings():
    services = compose()["services"]
    for region in lab.REGIONS:
        properties = env_to_properties(services[f"kafka-{region}"]["environment"])
        for key, value in lab.BROKER_SETTINGS.items():
            assert properties.get(key) == value, f"kafka-{region}: {key}"
        assert properties["listener.name.sasl_plaintext.plain.sasl.jaas.config"] == lab.broker_jaas()


def test_connect_worker_and_mm2_use_the_lab_settings():
    worker = dict(
        line.split("=", 1)
        for line in (ROOT / "deployments/compose/connect-worker.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key, value in lab.CONNECT_SETTINGS.items():
        assert worker[key] == value, key
    topology = load_topology(ROOT / "deployments/compose/topology.yaml")
    assert topology.replication.extra_connector_config == lab.MIRROR_LAB_SETTINGS
    assert topology.regions["east"].bootstrap_servers == "kafka-east:9092"

"""`baton lab`: two single-node KRaft regions and MirrorMaker 2 on Kafka Connect, no Docker.

Layout under $BATON_HOME/lab (default ./.baton/lab):
  east/ west/      server.properties, data/, pid, process.log
  connect/         worker.properties, pid, process.log
  prefect/ keeper/ watch/   the lab's Python services (Prefect server, lease keeper, watch): pid, process.log
  topology.yaml    the lab as a topology file for every other command (--config)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from baton.errors import LabError, RegionUnreachable, ReplicationError
from baton.kafka.admin import check_reachable, ensure_acls, ensure_topics
from baton.lab import config as lab
from baton.lab.jars import classpath, kafka_version
from baton.lab.processes import LabProcess, java, port_free
from baton.replication.mm2.engine import MirrorMakerEngine
from baton.settings import Topology, pick_domain, topologies_from_document

Progress = Callable[[str], None]


def lab_acls() -> list[AclBinding]:
    """What each lab principal may do. Only `admin` is a super user; the rest need ACLs."""
    allow = AclPermissionType.ALLOW
    topic, group, cluster = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.BROKER
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    app, consumer, mm2 = (f"User:{u}" for u in (lab.PRODUCER_USER, lab.CONSUMER_USER, lab.MM2_USER))
    payments, payments_consumer = (f"User:{u}" for u in (lab.PAYMENTS_PRODUCER_USER,
                                                          lab.PAYMENTS_CONSUMER_USER))
    # Producers get WRITE on their own domain's topics only: since Kafka 3.0 (KIP-679) that is all
    # an idempotent producer needs (no cluster IDEMPOTENT_WRITE). Transactional producers also
    # write their own domain's transactional ids (prefix `<domain>-`).
    # Every app may read the control topic (guarded clients follow the lease there) and use the
    # lab's `baton-*` groups (a guarded consumer's own group in the tests and demos).
    bindings = [AclBinding(resource, prefix, prefixed, principal, "*", AclOperation.READ, allow)
                for resource, prefix in ((topic, "baton."), (group, "baton."), (group, "baton-"))
                for principal in (app, consumer, payments, payments_consumer)]
    for principal, domain in ((app, "orders"), (payments, "payments")):
        for operation in (AclOperation.WRITE, AclOperation.DESCRIBE):
            bindings.append(AclBinding(topic, f"{domain}.", prefixed, principal, "*", operation, allow))
            bindings.append(AclBinding(ResourceType.TRANSACTIONAL_ID, f"{domain}-", prefixed,
                                       principal, "*", operation, allow))
    # Consumers read their own domain's topics and mirrors and commit their own groups.
    for principal, domain in ((consumer, "orders"), (payments_consumer, "payments")):
        bindings.append(AclBinding(group, f"{domain}-", prefixed, principal, "*", AclOperation.READ, allow))
        for prefix in (f"{domain}.", *(f"{r}.{domain}." for r in lab.REGIONS)):
            for operation in (AclOperation.READ, AclOperation.DESCRIBE):
                bindings.append(AclBinding(topic, prefix, prefixed, principal, "*", operation, allow))
    # MirrorMaker 2 reads and writes everything it mirrors, its internal topics and groups.
    for resource, name in ((topic, "*"), (group, "*"), (cluster, "kafka-cluster"),
                           (ResourceType.TRANSACTIONAL_ID, "*")):
        bindings.append(AclBinding(resource, name, literal, mm2, "*", AclOperation.ALL, allow))
    return bindings


def bootstrap(topology: Topology, say: Progress) -> None:
    """ACLs, each lab domain's topic in both regions, and its consumer groups on its owner. Idempotent."""
    for region in lab.REGIONS:
        admin = check_reachable(region, topology.regions[region])
        ensure_acls(admin, lab_acls())
        for domain in lab.LAB_DOMAINS:
            if ensure_topics(admin, {domain.topic: domain.partitions}):
                say(f"created {domain.topic} ({domain.partitions} partitions) on {region}")
    for domain in lab.LAB_DOMAINS:
        owner = check_reachable(domain.owner, topology.regions[domain.owner])
        existing = {g.group_id for g in owner.list_consumer_groups().result().valid}
        for group in domain.groups:
            if group in existing:
                continue
            start = [TopicPartition(domain.topic, p, 0) for p in range(domain.partitions)]
            for future in owner.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, start)]
            ).values():
                future.result()
            say(f"created consumer group {group} on {domain.owner} at offset 0")


# Python services the lab runs beside Kafka, so a fresh lab is a complete system.
SERVICES = ("prefect", "keeper", "watch")


def lab_prefect_api_url() -> str | None:
    """The running lab's Prefect API (runbook commands use it rather than a temporary server)."""
    if LabProcess("prefect", lab.lab_home() / "prefect").pid() is None:
        return None
    return f"http://127.0.0.1:{lab.lab_ports().prefect}/api"


class Lab:
    def __init__(self, home: Path | None = None, progress: Progress | None = None,
                 policy: str = "default"):
        self.home = home or lab.lab_home()
        self.ports = lab.lab_ports()
        self.policy = policy
        self._progress = progress or (lambda message: None)
        self._started_at = time.monotonic()
        self.processes = {
            name: LabProcess(name, self.home / name) for name in (*lab.REGIONS, "connect", *SERVICES)
        }

    # -- helpers -----------------------------------------------------------------------------

    def say(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._started_at:5.1f}s] {message}")

    @property
    def topology_file(self) -> Path:
        return self.home / "topology.yaml"

    def topology(self) -> tuple[Topology, dict]:
        """The default domain's (orders') topology, and the whole document the lab writes."""
        topologies, document = self._topologies()
        return pick_domain(topologies, lab.DOMAIN, document), document

    def topologies(self) -> list[Topology]:
        """One topology per lab domain (orders owned by east, payments by west)."""
        return self._topologies()[0]

    def _topologies(self) -> tuple[list[Topology], dict]:
        document = lab.topology_document(self.ports, self._policy_in_use())
        document["audit"]["database_url"] = f"sqlite:///{self.home.parent / 'audit.db'}"
        return topologies_from_document(document, "the lab's topology"), document

    def _policy_in_use(self) -> str:
        # The policy the lab was first brought up with stays until `down --purge`.
        if self.topology_file.exists():
            existing = yaml.safe_load(self.topology_file.read_text()) or {}
            return existing.get("replication", {}).get("policy", self.policy)
        return self.policy

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float,
              process: LabProcess | None = None) -> None:
        start = time.monotonic()
        last_note = start
        while not ready():
            now = time.monotonic()
            if process is not None and process.pid() is None:
                raise LabError(
                    f"{what} exited while starting; last lines of {process.log_file}:\n"
                    f"{process.tail()}"
                )
            if now - start > timeout:
                raise LabError(f"{what} was not ready after {timeout:.0f}s; see "
                               f"{process.log_file if process else 'the logs'}")
            if now - last_note >= 5:
                self.say(f"still waiting for {what} ({now - start:.0f}s)")
                last_note = now
            time.sleep(0.5)
        self.say(f"{what} ready ({time.monotonic() - start:.1f}s)")

    def _region_up(self, name: str, topology: Topology, timeout: float = 2) -> bool:
        try:
            check_reachable(name, topology.regions[name], timeout=timeout)
            return True
        except RegionUnreachable:
            return False

    # -- lifecycle ---------------------------------------------------------------------------

    def up(self) -> dict:
        """Start whatever is not running, bootstrap, and wait for replication. Idempotent."""
        topology, document = self.topology()
        self.home.mkdir(parents=True, exist_ok=True)
        self.topology_file.write_text(yaml.safe_dump(document, sort_keys=False))
        cp = classpath(self.home.parent, progress=self.say)
        self._check_ports()

        for region in lab.REGIONS:
            if self.processes[region].pid() is None:
                self._start_broker(region, cp)
            else:
                self.say(f"{region} broker already running (pid {self.processes[region].pid()})")
        for region in lab.REGIONS:
            self._wait(f"{region} broker", lambda r=region: self._region_up(r, topology), 90,
                       self.processes[region])
        bootstrap(topology, self.say)

        connect = self.processes["connect"]
        if connect.pid() is None:
            self._start_connect(cp)
        else:
            self.say(f"Connect worker already running (pid {connect.pid()})")
        self._wait("Connect REST API", MirrorMakerEngine(topology).connect.alive, 90, connect)
        self._refuse_shared_connectors(MirrorMakerEngine(topology).connect.connectors())
        for domain in self.topologies():
            # Each domain replicates from the region that owns it in a fresh lab.
            owner = domain.domain.initial_owner
            standby = domain.other_region(owner)
            self.say(f"configuring MirrorMaker 2 connectors of {domain.domain.name} {owner} -> {standby}")
            MirrorMakerEngine(domain).start(owner, standby, wait_seconds=90)
        self.say("replication RUNNING")
        self._start_services(topology)
        return self.status()

    @staticmethod
    def _refuse_shared_connectors(names: list[str]) -> None:
        """A lab started by an older Baton runs one connector set for every domain (mm2-east-west-*).
        Per-domain connectors beside them would copy every record a second time (a renamed
        connector has no stored position), so the lab refuses and says how to start afresh."""
        shared = sorted(n for n in names if n.removeprefix("mm2-").split("-")[0] in lab.REGIONS)
        if shared:
            raise LabError(f"this lab runs connectors shared by every domain ({', '.join(shared)}), from an "
                           "older Baton; connectors are per domain now. Start the lab afresh: "
                           "`baton lab down --purge` then `baton lab up`")

    def _start_services(self, topology: Topology) -> None:
        """The Prefect server, the lease keeper and the watch, each a pid-tracked lab process."""
        config = str(self.topology_file)
        commands = {
            "prefect": ["-m", "prefect", "server", "start", "--host", "127.0.0.1",
                        "--port", str(self.ports.prefect)],
            "keeper": ["-m", "baton", "authority", "keep", "--config", config, "--all-domains"],
            "watch": ["-m", "baton", "watch", "--config", config, "--metrics-port", str(self.ports.metrics)],
        }
        for name in SERVICES:
            process = self.processes[name]
            if process.pid() is not None:
                self.say(f"{name} already running (pid {process.pid()})")
                continue
            env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
            if name == "prefect":
                env |= lab.PREFECT_SERVER_SETTINGS | {"PREFECT_HOME": str(process.directory / "home"),
                                                      "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
            pid = process.start_python(commands[name], env)
            self.say(f"starting {name} (pid {pid})")
        self._wait("Prefect server", self._prefect_up, 180, self.processes["prefect"])
        for domain in self.topologies():
            self._wait(f"lease keeper's first renewal of {domain.domain.name}",
                       lambda d=domain: self._lease_kept(d), 90, self.processes["keeper"])

    def _prefect_up(self) -> bool:
        import httpx

        try:
            health = httpx.get(f"http://127.0.0.1:{self.ports.prefect}/api/health", timeout=2)
        except httpx.HTTPError:
            return False
        return health.status_code == 200

    def _lease_kept(self, topology: Topology) -> bool:
        """The domain's authority exists and, when ACTIVE, holds a live lease (FENCED: a run is on)."""
        from sqlalchemy.exc import SQLAlchemyError

        from baton.authority import State, authority_store

        try:
            authority = authority_store(topology).current(topology.domain.name)
        except (SQLAlchemyError, LabError):
            return False
        return authority is not None and (authority.state == State.FENCED or authority.lease_left() > 0)

    def _check_ports(self) -> None:
        owners = {
            "east broker": "east", "east controller": "east",
            "west broker": "west", "west controller": "west", "connect REST": "connect",
            "prefect API": "prefect", "watch metrics": "watch",
        }
        for what, port in self.ports.all().items():
            if self.processes[owners[what]].pid() is None and not port_free(port):
                raise LabError(
                    f"port {port} ({what}) is already in use by another process; stop it or "
                    f"choose other lab ports with BATON_LAB_PORT_BASE (now {self.ports.base})"
                )

    def _start_broker(self, region: str, cp: str) -> None:
        process = self.processes[region]
        data = process.directory / "data"
        properties = lab.broker_properties(region, self.ports, data)
        process.directory.mkdir(parents=True, exist_ok=True)
        server = process.directory / "server.properties"
        server.write_text(lab.render_properties(properties))
        if not (data / "meta.properties").exists():
            self.say(f"formatting {region} storage (KRaft cluster {lab.CLUSTER_IDS[region]})")
            result = subprocess.run(
                [java(), "-Xmx256m", "-cp", cp, "kafka.tools.StorageTool", "format",
                 "-t", lab.CLUSTER_IDS[region], "-c", str(server)],
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise LabError(f"formatting {region} storage failed:\n{result.stdout}{result.stderr}")
        pid = process.start(cp, "kafka.Kafka", [str(server)], lab.BROKER_HEAP)
        self.say(f"starting {region} broker: Kafka {kafka_version()} on "
                 f"{lab.bootstrap_servers(self.ports)[region]} (pid {pid})")

    def _start_connect(self, cp: str) -> None:
        process = self.processes["connect"]
        process.directory.mkdir(parents=True, exist_ok=True)
        worker = process.directory / "worker.properties"
        west = lab.bootstrap_servers(self.ports)["west"]
        worker.write_text(lab.render_properties(lab.connect_properties(self.ports, west)))
        pid = process.start(cp, "org.apache.kafka.connect.cli.ConnectDistributed",
                            [str(worker)], lab.CONNECT_HEAP)
        self.say(f"starting Kafka Connect worker for MirrorMaker 2 on "
                 f"127.0.0.1:{self.ports.connect} (pid {pid})")

    def down(self, purge: bool = False) -> list[str]:
        """Stop the lab's own processes (by pid), Connect first. --purge deletes its data."""
        stopped = []
        for name in (*reversed(SERVICES), "connect", *lab.REGIONS):
            if self.processes[name].stop():
                stopped.append(name)
                self.say(f"stopped {name}")
        if purge and self.home.exists():
            shutil.rmtree(self.home)
            self.say(f"deleted {self.home}")
        return stopped

    # -- status and faults -------------------------------------------------------------------

    def status(self) -> dict:
        topology, _ = self.topology()
        regions = {}
        for region in lab.REGIONS:
            process = self.processes[region]
            state = process.state()
            regions[region] = {
                "bootstrap": topology.regions[region].bootstrap_servers,
                "up": state == "running" and self._region_up(region, topology),
                "process": state,
                "pid": process.pid(),
            }
        connect = self.processes["connect"]
        replication = {"engine": "mm2", "state": "DOWN", "flow": f"{lab.INITIAL_OWNER}->west",
                       "policy": topology.replication.policy,
                       "connect": {"url": topology.replication.connect_url,
                                   "process": connect.state(), "pid": connect.pid()}}
        if connect.state() == "running":
            try:
                flow = MirrorMakerEngine(topology, timeout=3).status(lab.INITIAL_OWNER, "west")
                replication["state"] = flow.state
                replication["components"] = flow.as_dict()["components"]
            except ReplicationError as e:
                replication["error"] = str(e)
        replication["domains"] = self._domain_flows(connect.state() == "running")
        services = {name: {"process": self.processes[name].state(), "pid": self.processes[name].pid(),
                           "log": str(self.processes[name].log_file)} for name in SERVICES}
        services["prefect"] |= {"api": f"http://127.0.0.1:{self.ports.prefect}/api",
                                "ui": f"http://127.0.0.1:{self.ports.prefect}"}
        services["watch"]["metrics"] = f"http://127.0.0.1:{self.ports.metrics}/metrics"
        return {
            "home": str(self.home),
            "kafka_version": kafka_version(),
            "regions": regions,
            "replication": replication,
            "services": services,
            "config": str(self.topology_file),
        }

    def _domain_flows(self, connect_running: bool) -> dict:
        """Per lab domain: its flow from its initial owner and that flow's state."""
        flows = {}
        for domain in self.topologies():
            owner = domain.domain.initial_owner
            flow = {"flow": f"{owner}->{domain.other_region(owner)}", "state": "DOWN"}
            if connect_running:
                try:
                    status = MirrorMakerEngine(domain, timeout=3).status(owner, domain.other_region(owner))
                    flow["state"] = status.state
                except ReplicationError as e:
                    flow["error"] = str(e)
            flows[domain.domain.name] = flow
        return flows

    def fault(self, action: str, target: str) -> str:
        """kill|hang|resume|restart a region, or stop|start replication."""
        if target == "replication":
            topology, _ = self.topology()
            engine = MirrorMakerEngine(topology)
            if action == "stop":
                engine.stop(lab.INITIAL_OWNER, "west")
                return ("replication east -> west stopped (source connector STOPPED, progress kept; "
                        "heartbeat and checkpoint connectors run on, they copy no data)")
            if action == "start":
                engine.start(lab.INITIAL_OWNER, "west")
                return "replication east -> west RUNNING"
            raise LabError(f"replication faults are stop|start, not {action!r}")
        if target not in lab.REGIONS:
            raise LabError(f"unknown region {target!r}; the lab has {', '.join(lab.REGIONS)}")
        process = self.processes[target]
        if action == "kill":
            return f"{target} broker killed (SIGKILL, pid {process.signal(signal.SIGKILL)})"
        if action == "hang":
            return f"{target} broker hung (SIGSTOP, pid {process.signal(signal.SIGSTOP)})"
        if action == "resume":
            pid = process.signal(signal.SIGCONT)
            # As after a restart: return once the region answers, not while it is still catching up
            # on the heartbeats it missed (the next client's request failed then: CI).
            topology, _ = self.topology()
            self._wait(f"{target} broker", lambda: self._region_up(target, topology), 90, process)
            return f"{target} broker resumed (SIGCONT, pid {pid})"
        if action == "restart":
            if process.pid() is not None:
                process.stop()
            topology, _ = self.topology()
            self._start_broker(target, classpath(self.home.parent, progress=self.say))
            self._wait(f"{target} broker", lambda: self._region_up(target, topology), 90, process)
            return f"{target} broker restarted with its data (pid {process.pid()})"
        raise LabError(f"unknown fault {action!r}; use kill|hang|resume|restart")


def is_lab_topology(topology: Topology) -> bool:
    """The topology points at this machine's lab brokers (the same bootstrap servers)."""
    # From the ports alone: building the lab's whole topology here (its file read and validated)
    # cost 8 % of an evacuation's CPU, called for every run's audit chain and gate.
    lab_servers = lab.bootstrap_servers(lab.lab_ports())
    return set(topology.regions) == set(lab_servers) and all(
        topology.regions[r].bootstrap_servers == lab_servers[r] for r in lab_servers)

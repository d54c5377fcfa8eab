"""The lab's topology and the Kafka / Connect settings it runs with.

This module is the one source of the lab's broker and Connect worker settings:
`baton lab up` renders them into properties files, and a test checks that
docker-compose.yml uses the same values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DOMAIN = "orders"
TOPIC = "orders.events"
TOPIC_PARTITIONS = 6
GROUPS = ("orders-billing", "orders-shipping")
REGIONS = ("east", "west")
INITIAL_OWNER = "east"

# The second domain, owned by the other region (split ownership: each region owns one domain,
# and replication runs both ways, east.orders.events on west and west.payments.ledger on east).
PAYMENTS_DOMAIN = "payments"
PAYMENTS_TOPIC = "payments.ledger"
PAYMENTS_PARTITIONS = 3
PAYMENTS_GROUPS = ("payments-settlement",)
PAYMENTS_OWNER = "west"


@dataclass(frozen=True)
class LabDomain:
    """What `baton lab up` creates for one domain: its topic in both regions, its groups on the owner."""

    name: str
    topic: str
    partitions: int
    groups: tuple[str, ...]
    owner: str


LAB_DOMAINS = (
    LabDomain(DOMAIN, TOPIC, TOPIC_PARTITIONS, GROUPS, INITIAL_OWNER),
    LabDomain(PAYMENTS_DOMAIN, PAYMENTS_TOPIC, PAYMENTS_PARTITIONS, PAYMENTS_GROUPS, PAYMENTS_OWNER),
)

# Lab-only credentials. SASL/PLAIN on loopback; never reuse these anywhere else.
USERS = {
    "admin": "admin-secret",  # Baton's admin client and inter-broker traffic: the only super user
    "orders-app": "orders-app-secret",  # the domain's producer principal (what fencing denies)
    "orders-consumer": "orders-consumer-secret",  # the domain's consumers
    # A second domain's producer principal: principals are per domain, so fencing `orders`
    # never names it (tests prove its idempotent producer keeps writing `payments.*`).
    "payments-app": "payments-app-secret",
    "payments-consumer": "payments-consumer-secret",  # the second domain's consumers
    "mm2": "mm2-secret",  # MirrorMaker 2 on Kafka Connect
}
ADMIN_USER = "admin"
PRODUCER_USER = "orders-app"
CONSUMER_USER = "orders-consumer"
PAYMENTS_PRODUCER_USER = "payments-app"
PAYMENTS_CONSUMER_USER = "payments-consumer"
MM2_USER = "mm2"

CLUSTER_IDS = {"east": "YmF0b24tZWFzdC1sYWIwMA", "west": "YmF0b24td2VzdC1sYWIwMA"}
NODE_ID = 1


def jaas(user: str) -> str:
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{user}" password="{USERS[user]}";'
    )


def broker_jaas() -> str:
    users = " ".join(f'user_{name}="{password}"' for name, password in USERS.items())
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN_USER}" password="{USERS[ADMIN_USER]}" {users};'
    )


# Settings shared by every lab broker and by docker-compose's brokers.
BROKER_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": str(NODE_ID),
    "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
    "inter.broker.listener.name": "SASL_PLAINTEXT",
    "controller.listener.names": "CONTROLLER",
    "sasl.enabled.mechanisms": "PLAIN",
    "sasl.mechanism.inter.broker.protocol": "PLAIN",
    "sasl.mechanism.controller.protocol": "PLAIN",
    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "super.users": f"User:{ADMIN_USER}",
    "allow.everyone.if.no.acl.found": "false",
    "auto.create.topics.enable": "false",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # A node restarted after SIGKILL cannot register again until the controller (itself, replayed
    # from the log) expires the dead process's broker session: 9 s by default, during which the
    # lab fault `restart` waited (13.2 s after a kill against 3.4 s after a clean stop).
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "4000",
    "num.partitions": "1",
    # A region's start replays its metadata log from the newest snapshot, written by default only
    # every 20 MB of records: a lab used for a day had none, and each start replayed 340,873
    # records (every partition change of every test topic) before the broker could start.
    "metadata.log.max.record.bytes.between.snapshots": str(1024 * 1024),
    # Small segments so retention tests can delete a partition's head quickly.
    "log.segment.bytes": str(1024 * 1024),
    "log.retention.check.interval.ms": "5000",
}

# Kafka Connect worker (distributed mode) that runs MirrorMaker 2's connectors.
CONNECT_SETTINGS: dict[str, str] = {
    "group.id": "baton-lab-connect",
    "config.storage.topic": "baton-connect-configs",
    "offset.storage.topic": "baton-connect-offsets",
    "status.storage.topic": "baton-connect-status",
    "config.storage.replication.factor": "1",
    "offset.storage.replication.factor": "1",
    "status.storage.replication.factor": "1",
    "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
    "value.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
    "offset.flush.interval.ms": "2000",
    # One worker: when the region holding its group coordinator restarts, the worker rejoins as a
    # new member and Connect would wait this long (default 5 min) for the "lost" one before
    # assigning any connector again (seen: every connector UNASSIGNED for 300 s after `lab fault
    # kill west`). There is no other worker to wait for.
    "scheduled.rebalance.max.delay.ms": "0",
    # The heartbeat connector writes into the source region (see replication/mm2/connectors.py).
    "connector.client.config.override.policy": "All",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.jaas.config": jaas(MM2_USER),
    "producer.security.protocol": "SASL_PLAINTEXT",
    "producer.sasl.mechanism": "PLAIN",
    "producer.sasl.jaas.config": jaas(MM2_USER),
    "consumer.security.protocol": "SASL_PLAINTEXT",
    "consumer.sasl.mechanism": "PLAIN",
    "consumer.sasl.jaas.config": jaas(MM2_USER),
    "admin.security.protocol": "SASL_PLAINTEXT",
    "admin.sasl.mechanism": "PLAIN",
    "admin.sasl.jaas.config": jaas(MM2_USER),
}

# MirrorMaker 2 timing in the lab (documented in the README): fast enough for tests.
MIRROR_LAB_SETTINGS: dict[str, str] = {
    # A new topic is copied ~0.8 s after it is created and a new group checkpointed ~2.2 s after
    # its commit (5 s: ~4 s and ~5.5 s), for +0.02 cores of lab CPU at rest.
    "refresh.topics.interval.seconds": "1",
    "refresh.groups.interval.seconds": "1",
    # Unplanned: less consumed after the last checkpoint. (A replication stop leaves these
    # connectors running: Connect stops a task only once its poll returns, and these tasks wait
    # one emit interval per poll.)
    "emit.checkpoints.interval.seconds": "1",
    "emit.heartbeats.interval.seconds": "1",
    # The same holds for the source task: its poll waits up to consumer.poll.timeout.ms (1 s by
    # default) and closing its consumer waits for the fetch in flight (fetch.max.wait.ms, 500 ms).
    # At 100 ms each the source's stop took 0.1-0.2 s instead of 1.4 s.
    "consumer.poll.timeout.ms": "100",
    "consumer.fetch.max.wait.ms": "100",
    "sync.topic.configs.interval.seconds": "30",
    "offset.lag.max": "100",
    "replication.factor": "1",
    "checkpoints.topic.replication.factor": "1",
    "heartbeats.topic.replication.factor": "1",
    "offset-syncs.topic.replication.factor": "1",
    # Offset syncs kept beside the mirror: with the owner dead they still prove exact positions.
    "offset-syncs.topic.location": "target",
}

# Every Prefect server Baton starts (lab, tests, benches, docker-compose.yml), and what the README
# recommends for yours. The task run recorder writes each task-run event in its own transaction
# by default: in an evacuation of 10 domains (~170 task runs) that was 3.6-4.4 CPU seconds of the
# server on 2 shared cores; in batches of up to 100 flushed every second, 1.6-1.7
# (bench/RESULTS.md). A task run's state then reaches the UI up to 1 s later; the flows never read
# task runs back from the API.
PREFECT_SERVER_SETTINGS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}

BROKER_HEAP = "-Xms128m -Xmx384m"
CONNECT_HEAP = "-Xms128m -Xmx512m"


@dataclass(frozen=True)
class LabPorts:
    """Loopback ports, all derived from one base so several labs can coexist."""

    base: int

    def broker(self, region: str) -> int:
        return self.base + 92 + 100 * REGIONS.index(region)

    def controller(self, region: str) -> int:
        return self.broker(region) + 1

    @property
    def connect(self) -> int:
        return self.base + 83

    @property
    def prefect(self) -> int:
        return self.base + 42

    @property
    def metrics(self) -> int:
        return self.base + 90

    def all(self) -> dict[str, int]:
        ports = {f"{r} broker": self.broker(r) for r in REGIONS}
        ports |= {f"{r} controller": self.controller(r) for r in REGIONS}
        ports["connect REST"] = self.connect
        ports["prefect API"] = self.prefect
        ports["watch metrics"] = self.metrics
        return ports


def lab_ports() -> LabPorts:
    return LabPorts(int(os.environ.get("BATON_LAB_PORT_BASE", "19000")))


def lab_home() -> Path:
    """Where the lab keeps data, pids and logs: $BATON_HOME/lab (default ./.baton/lab)."""
    return Path(os.environ.get("BATON_HOME", ".baton")).resolve() / "lab"


def broker_properties(region: str, ports: LabPorts, data_dir: Path) -> dict[str, str]:
    broker, controller = ports.broker(region), ports.controller(region)
    return BROKER_SETTINGS | {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"SASL_PLAINTEXT://127.0.0.1:{broker}",
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{controller}",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": broker_jaas(),
        "listener.name.controller.plain.sasl.jaas.config": broker_jaas(),
        "log.dirs": str(data_dir),
    }


def connect_properties(ports: LabPorts, worker_bootstrap: str) -> dict[str, str]:
    return CONNECT_SETTINGS | {
        "bootstrap.servers": worker_bootstrap,
        "listeners": f"http://127.0.0.1:{ports.connect}",
        "rest.advertised.host.name": "127.0.0.1",
        "rest.advertised.port": str(ports.connect),
    }


def render_properties(settings: dict[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def bootstrap_servers(ports: LabPorts) -> dict[str, str]:
    """Each lab region's bootstrap servers, as the lab's topology file names them."""
    return {name: f"127.0.0.1:{ports.broker(name)}" for name in REGIONS}


def topology_document(ports: LabPorts, policy: str = "default") -> dict:
    """The topology file `baton lab up` writes: the lab as Baton's other commands see it."""

    def region(name: str) -> dict:
        return {
            "bootstrap_servers": bootstrap_servers(ports)[name],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "admin": {"username": ADMIN_USER, "password": USERS[ADMIN_USER]},
            "producer": {"username": PRODUCER_USER, "password": USERS[PRODUCER_USER]},
            "consumer": {"username": CONSUMER_USER, "password": USERS[CONSUMER_USER]},
            "producer_principals": [f"User:{PRODUCER_USER}"],
            "request_timeout_seconds": 10,
        }

    def connector_names(domain: str) -> dict:
        return {kind: f"mm2-{domain}-{{source}}-{{target}}-{kind}"
                for kind in ("source", "checkpoint", "heartbeat")}

    payments_principal = {"producer": {"username": PAYMENTS_PRODUCER_USER,
                                       "password": USERS[PAYMENTS_PRODUCER_USER]},
                          "consumer": {"username": PAYMENTS_CONSUMER_USER,
                                       "password": USERS[PAYMENTS_CONSUMER_USER]},
                          "producer_principals": [f"User:{PAYMENTS_PRODUCER_USER}"]}
    return {
        # Commands without --domain act on `orders`, as before the lab had two domains.
        "default_domain": DOMAIN,
        "domains": [
            {
                "name": DOMAIN,
                "topics": [TOPIC],
                "consumer_groups": list(GROUPS),
                "initial_owner": INITIAL_OWNER,
                # Tests create throwaway domains (`orders.rb-*` topics, `orders-t-*` groups) from
                # this domain's topology: they ride on the orders connectors, whose names and
                # filters are therefore spelled out here rather than derived from the domain.
                "replication": {"topics_pattern": r"orders\..*", "groups_pattern": r"orders-.*",
                                "connectors": connector_names(DOMAIN)},
            },
            {
                "name": PAYMENTS_DOMAIN,
                "topics": [PAYMENTS_TOPIC],
                "topic_prefixes": ["payments."],
                "consumer_groups": list(PAYMENTS_GROUPS),
                "initial_owner": PAYMENTS_OWNER,
                "replication": {"groups_pattern": r"payments-.*"},
                # Its own principals: a fence on payments names payments-app only.
                "regions": {name: payments_principal for name in REGIONS},
            },
        ],
        "regions": {name: region(name) for name in REGIONS},
        "replication": {
            "engine": "mm2",
            "connect_url": f"http://127.0.0.1:{ports.connect}",
            "policy": policy,
            "extra_connector_config": dict(MIRROR_LAB_SETTINGS),
            "offset_lag_max": int(MIRROR_LAB_SETTINGS["offset.lag.max"]),
            "emit_checkpoints_interval_seconds": int(
                MIRROR_LAB_SETTINGS["emit.checkpoints.interval.seconds"]
            ),
        },
        "thresholds": {
            "max_lag_records": 10000,
            "max_lag_seconds": 60,
            "quiesce_seconds": 3,
            "lease_ttl_seconds": 10,
            "step_timeout_seconds": 120,
            "gate_timeout_seconds": 600,
        },
        "audit": {"database_url": "sqlite:///.baton/audit.db"},
    }


def single_domain_document(ports: LabPorts, policy: str = "default", name: str = DOMAIN) -> dict:
    """One lab domain as a one-domain topology document (`domain:`), its own sections merged in."""
    from baton.settings import domain_documents

    documents = dict((doc["domain"]["name"], doc) for _, doc in
                     domain_documents(Path("lab"), topology_document(ports, policy)))
    return {key: value for key, value in documents[name].items() if key != "default_domain"}

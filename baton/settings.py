"""Typed topology and settings, validated before anything runs.

A topology file (YAML) describes one domain (`domain:`) or several (`domains:`, a list),
their two regions, the replication engine, thresholds, approvals and the audit database.
Each domain of a multi-domain file becomes its own `Topology` (its one `domain`, every other
section shared); an entry of `domains:` may carry sections of its own (e.g. `regions:` with
its producer principals, `replication:` with a topics_pattern) merged over the shared ones.
Environment variables `BATON_<SECTION>__<FIELD>` override the file
(e.g. `BATON_THRESHOLDS__QUIESCE_SECONDS=5`); `BATON_DOMAIN` names the domain to load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from baton.errors import ConfigError

CONFIG_ENV = "BATON_CONFIG"
DOMAIN_ENV = "BATON_DOMAIN"


def lab_topology_path() -> Path:
    """The running lab's topology file: $BATON_HOME/lab/topology.yaml (default ./.baton)."""
    return Path(os.environ.get("BATON_HOME", ".baton")) / "lab" / "topology.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Credentials(Strict):
    username: str = Field(min_length=1)
    password: SecretStr


class RegionSettings(Strict):
    """One Kafka cluster, and how Baton and the domain's apps reach it."""

    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port]")
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "SASL_PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    admin: Credentials | None = Field(None, description="Baton's admin principal (ACLs, offsets)")
    producer: Credentials | None = Field(None, description="the domain's producer app credentials")
    consumer: Credentials | None = Field(None, description="the domain's consumer app credentials")
    replicator: Credentials | None = Field(
        None, description="the principal MirrorMaker 2 uses in this region (default: admin)"
    )
    producer_principals: list[str] = Field(
        default_factory=list, description="principals fenced by ACL, e.g. User:orders-app"
    )
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> RegionSettings:
        if self.security_protocol.startswith("SASL") and self.admin is None:
            raise ValueError("admin credentials are required when security_protocol is SASL_*")
        for principal in self.producer_principals:
            if ":" not in principal:
                raise ValueError(f"producer principal {principal!r} must look like 'User:name'")
        return self

    def client_config(
        self, who: Literal["admin", "producer", "consumer", "replicator"] = "admin"
    ) -> dict:
        """librdkafka settings for one of the configured identities."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        creds = getattr(self, who)
        if self.security_protocol.startswith("SASL"):
            if creds is None:
                raise ConfigError(f"no '{who}' credentials configured for this region")
            config |= {
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": creds.username,
                "sasl.password": creds.password.get_secret_value(),
            }
        return config


class DomainSettings(Strict):
    """The unit of write authority."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    topics: list[str] = Field(min_length=1)
    consumer_groups: list[str] = Field(default_factory=list)
    initial_owner: str
    topic_prefixes: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="topic name prefixes the fence also denies (PREFIXED), "
        "so topics created after the topology was written are fenced too, e.g. 'orders.'"
    )
    transactional_id_prefixes: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="transactional.id prefixes of the domain's producers, denied by the "
        "fence so an open transaction cannot commit after it (default: ['<name>-']; [] = none)"
    )

    @model_validator(mode="after")
    def _topics_are_names(self) -> DomainSettings:
        # A LITERAL "*" ACL is Kafka's wildcard: a fence on it would deny every topic.
        if "*" in self.topics:
            raise ValueError("domain.topics must name the domain's topics; '*' means every topic")
        return self

    def fenced_transactional_id_prefixes(self) -> list[str]:
        """The transactional-id prefixes a fence denies: the declared ones, or `<name>-`."""
        if self.transactional_id_prefixes is None:
            return [f"{self.name}-"]
        return list(self.transactional_id_prefixes)


class ConnectorNames(Strict):
    """Connector name templates ({domain}, {source}, {target}): one set per domain and direction,
    so stopping or reversing one domain leaves every other domain's connectors as they are."""

    source: str = "mm2-{domain}-{source}-{target}-source"
    checkpoint: str = "mm2-{domain}-{source}-{target}-checkpoint"
    heartbeat: str = "mm2-{domain}-{source}-{target}-heartbeat"


class ReplicationSettings(Strict):
    engine: Literal["mm2"] = "mm2"
    connect_url: str = Field("http://127.0.0.1:18083", pattern=r"^https?://")
    policy: Literal["default", "identity"] = Field(
        "default", description="default: east.orders.events on west; identity: same name"
    )
    separator: str = Field(".", min_length=1)
    connectors: ConnectorNames = ConnectorNames()
    offset_lag_max: int = Field(100, ge=0, description="MM2 offset.lag.max")
    emit_checkpoints_interval_seconds: int = Field(5, ge=1)
    sync_group_offsets: bool = Field(False, description="MM2 writes offsets itself; off by default")
    topics_pattern: str | None = Field(
        None, description="regex of topics to mirror; default: exactly the domain's topics and "
                          "its topic_prefixes"
    )
    groups_pattern: str | None = Field(
        None, description="regex of groups to checkpoint; default: exactly the domain's groups"
    )
    tasks_max: int = Field(1, ge=1, le=64)
    extra_connector_config: dict[str, str] = Field(
        default_factory=dict, description="passed to every MM2 connector as is"
    )

    def remote_topic(self, topic: str, source_region: str) -> str:
        """The mirror's name on the other region under the configured policy."""
        if self.policy == "identity":
            return topic
        return f"{source_region}{self.separator}{topic}"


class Thresholds(Strict):
    max_lag_records: int = Field(10_000, ge=0)
    max_lag_seconds: float = Field(60.0, ge=0)
    fence_proof: Literal["evidence", "fixed-quiesce"] = Field(
        "evidence",
        description="evidence: after the deny ACLs are read back, end offsets must read equal twice "
                    "(fence_settle_seconds apart); fixed-quiesce: the old fixed wait (quiesce_seconds), "
                    "kept as the bench baseline")
    quiesce_seconds: float = Field(
        3.0, ge=0, le=600, description="fence_proof=fixed-quiesce: end offsets must stand still this long")
    fence_settle_seconds: float = Field(
        0.3, ge=0, le=60,
        description="one producer retry interval: end offsets must read equal twice, the second "
                    "read at least this long after the deny ACLs were read back")
    max_fenced_seconds: float = Field(
        10.0, gt=0, le=3600,
        description="planned runs: the longest producers may be refused (fence to switch); a longer "
                    "fenced window fails a switch condition and the run returns to the safe state")
    groups_leave_seconds: float = Field(
        5.0, ge=0, le=600,
        description="planned runs: how long translation waits for the domain's consumer groups on "
                    "the old owner to have no members (consumers that leave once authority is "
                    "FENCED need their poll interval and one poll); then the run stops naming them")
    lease_ttl_seconds: float = Field(15.0, gt=0, le=3600)
    step_timeout_seconds: float = Field(120.0, gt=0)
    gate_timeout_seconds: float = Field(3600.0, gt=0)


class ApprovalSettings(Strict):
    """Where approval requests go and who may answer them (README: "Approvals in Slack").

    Tokens and the signing secret usually come from the environment, e.g.
    BATON_APPROVALS__SLACK_BOT_TOKEN; they are never logged or printed.
    """

    slack_channel: str | None = Field(None, description="channel id (C0...) or #name requests go to")
    slack_bot_token: SecretStr | None = Field(None, description="bot token xoxb-... (scope chat:write)")
    slack_app_token: SecretStr | None = Field(
        None, description="app-level token xapp-... (connections:write), for --socket-mode only")
    slack_signing_secret: SecretStr | None = Field(
        None, description="verifies that interactive requests come from Slack (HTTP endpoint)")
    slack_api_url: str = Field("https://slack.com/api/", pattern=r"^https?://.*/$",
                               description="Slack Web API base URL (ends with /)")
    approvers: list[str] = Field(default_factory=list, description="Slack user ids (U.../W...)")
    approver_groups: list[str] = Field(default_factory=list, description="Slack user group ids (S...)")
    operators: dict[str, str] = Field(
        default_factory=dict,
        description="Slack user id -> operator name as runs record who started them (started_by): "
                    "the two-person rule compares these, and the approver is recorded by this name")
    two_person_rule: bool = Field(True, description="the person who started a run cannot approve it")
    require_slack_for: list[str] = Field(
        default_factory=list, description="gates (e.g. approve-switch) that refuse Prefect UI answers")
    auto_approve_gates: list[str] = Field(
        default_factory=list,
        description="gates that --yes / auto_approve may answer on this (non-lab) topology; on the "
                    "lab every gate may be auto-approved, elsewhere only these")
    reminder_before_seconds: float = Field(
        300.0, gt=0, description="post a reminder in the request's thread this long before the gate "
                                 "times out (at half the timeout when the timeout is shorter)")
    prefect_api_url: str | None = Field(
        None, pattern=r"^https?://", description="Prefect API for resuming runs; default $PREFECT_API_URL")
    prefect_ui_url: str | None = Field(
        None, pattern=r"^https?://", description="base of run links; default: the API URL without /api")

    @model_validator(mode="after")
    def _slack_ids(self) -> ApprovalSettings:
        for user in [*self.approvers, *self.operators]:
            if not re.fullmatch(r"[UW][A-Z0-9]{2,}", user):
                raise ValueError(f"{user!r} is not a Slack user id (U... or W..., as in the profile's "
                                 "'Copy member ID')")
        for group in self.approver_groups:
            if not re.fullmatch(r"S[A-Z0-9]{2,}", group):
                raise ValueError(f"{group!r} is not a Slack user group id (S...)")
        for field_name in ("require_slack_for", "auto_approve_gates"):
            for gate in getattr(self, field_name):
                if not re.fullmatch(r"approve-[a-z0-9-]+", gate):
                    raise ValueError(f"{field_name}: {gate!r} is not a gate name (approve-...)")
        return self

    @property
    def slack_enabled(self) -> bool:
        """Requests are posted to Slack (a channel and a bot token are configured)."""
        return bool(self.slack_channel and self.slack_bot_token)

    def missing_for_slack(self, *, socket_mode: bool = False) -> list[str]:
        """The approvals.* fields Slack approvals still need; empty when complete."""
        missing = [name for name in ("slack_channel", "slack_bot_token") if not getattr(self, name)]
        missing += ["slack_app_token"] if socket_mode and not self.slack_app_token else []
        missing += ["slack_signing_secret"] if not socket_mode and not self.slack_signing_secret else []
        if not self.approvers and not self.approver_groups:
            missing.append("approvers or approver_groups")
        return missing

    def resolved_prefect_api_url(self) -> str:
        url = self.prefect_api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"
        return url.rstrip("/")

    def resolved_prefect_ui_url(self) -> str:
        if self.prefect_ui_url:
            return self.prefect_ui_url.rstrip("/")
        api = self.resolved_prefect_api_url()
        return api[: -len("/api")] if api.endswith("/api") else api


class WatchSettings(Strict):
    """The continuous watch (`baton watch`) and the readiness check (`baton ready`)."""

    interval_seconds: float = Field(5.0, gt=0, le=3600, description="one sample per domain this often")
    heartbeat_max_age_seconds: float = Field(
        30.0, gt=0, description="readiness fails when the newest replicated heartbeat is older")
    checkpoint_max_age_seconds: float = Field(
        60.0, gt=0, description="a group checkpoint behind the group's position is stale after this")
    alert_after_samples: int = Field(
        3, ge=1, description="lag must exceed a threshold this many samples in a row before an alert")
    raw_retention_hours: float = Field(24.0, gt=0, description="raw samples are kept this long")
    downsampled_retention_days: float = Field(30.0, gt=0, description="1-minute maxima kept this long")
    transactional_topics: list[str] = Field(
        default_factory=list, description="domain topics written in transactions: must be mirrored "
                                          "read_committed (connector consumer.isolation.level)")


class AuditSettings(Strict):
    database_url: str = Field("sqlite:///.baton/audit.db", pattern=r"^(sqlite|postgresql)")
    chain_key: SecretStr | None = Field(
        None, description="signs the evidence chain's head (HMAC); keep it out of the database's "
                          "reach, e.g. BATON_AUDIT__CHAIN_KEY. The lab has a default")
    chain_key_file: str | None = Field(None, description="a file holding the chain key instead")


class Topology(BaseSettings):
    """Everything Baton needs to know about one domain. Env (BATON_*) beats the file."""

    model_config = SettingsConfigDict(
        env_prefix="BATON_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    domain: DomainSettings
    regions: dict[str, RegionSettings]
    replication: ReplicationSettings = ReplicationSettings()
    thresholds: Thresholds = Thresholds()
    approvals: ApprovalSettings = ApprovalSettings()
    audit: AuditSettings = AuditSettings()
    watch: WatchSettings = WatchSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init kwargs; putting env first lets BATON_* override it.
        return _EnvWithoutDomainName(settings_cls), init_settings

    @model_validator(mode="after")
    def _two_regions_and_a_known_owner(self) -> Topology:
        if len(self.regions) != 2:
            raise ValueError(
                f"exactly two regions are supported (active-passive), got {sorted(self.regions)}"
            )
        if self.domain.initial_owner not in self.regions:
            raise ValueError(
                f"domain.initial_owner {self.domain.initial_owner!r} is not one of the regions "
                f"{sorted(self.regions)}"
            )
        return self

    def other_region(self, region: str) -> str:
        if region not in self.regions:
            raise ConfigError(f"unknown region {region!r}; configured: {sorted(self.regions)}")
        return next(name for name in self.regions if name != region)


class _EnvWithoutDomainName(EnvSettingsSource):
    """BATON_DOMAIN names the domain to load (load_topology), it is not the `domain` section;
    BATON_DOMAIN__<FIELD> still overrides one of the domain's fields."""

    def get_field_value(self, field, field_name: str) -> tuple[Any, str, bool]:
        value, key, complex_ = super().get_field_value(field, field_name)
        return (None if field_name == "domain" else value), key, complex_


def _format_validation_error(source: str, error: ValidationError, domain_loc: str = "domain") -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = [domain_loc if i == 0 and part == "domain" else str(part)
               for i, part in enumerate(item["loc"])]
        # A whole-topology check of one domain of several is reported at that domain.
        field = ".".join(loc) or ("(top level)" if domain_loc == "domain" else domain_loc)
        lines.append(f"  {field}: {item['msg']}")
    lines.append("Fix the field(s) above (file or BATON_* environment) and run again.")
    return "\n".join(lines)


def resolve_config_path(path: str | Path | None = None) -> Path:
    """--config, else $BATON_CONFIG, else ./baton.yaml, else the running lab's topology."""
    explicit = path or os.environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    for candidate in (Path("baton.yaml"), lab_topology_path()):
        if candidate.exists():
            return candidate
    raise ConfigError(
        "no topology file: pass --config FILE, set BATON_CONFIG, or start the lab with "
        "`baton lab up` (it writes $BATON_HOME/lab/topology.yaml, default .baton/)"
    )


SECTIONS = ("regions", "replication", "thresholds", "approvals", "audit", "watch")


def _read_document(file: Path) -> dict:
    if not file.is_file():
        raise ConfigError(f"configuration file {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{file} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{file} must contain a mapping at the top level")
    return data


def _merged(shared: Any, own: Any) -> Any:
    """`own` over `shared`, mapping by mapping (a domain's own sections over the file's)."""
    if isinstance(shared, dict) and isinstance(own, dict):
        return {key: _merged(shared.get(key), value) for key, value in own.items()} | {
            key: value for key, value in shared.items() if key not in own}
    return own


def domain_documents(file: Path, data: dict) -> list[tuple[str, dict]]:
    """(where, document) per domain: `domain:` as is, or one document per entry of `domains:`."""
    if "domains" not in data:
        return [("domain", data)]
    if "domain" in data:
        raise ConfigError(f"{file}: use either `domain:` (one domain) or `domains:` (a list), not both")
    entries = data["domains"]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{file}: `domains:` must be a non-empty list of domains (name, topics, ...)")
    shared = {key: value for key, value in data.items() if key not in ("domains", "default_domain")}
    documents = []
    for index, entry in enumerate(entries):
        document = dict(shared)
        for section in SECTIONS:
            if section in entry:
                document[section] = _merged(shared.get(section), entry[section])
        document["domain"] = {k: v for k, v in entry.items() if k not in SECTIONS}
        documents.append((f"domains[{index}]", document))
    return documents


def _check_domains_apart(file: Path, topologies: list[Topology]) -> None:
    names = [t.domain.name for t in topologies]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"{file}: domain name(s) {', '.join(twice)} listed more than once; "
                          "each domain needs its own name")
    owner_of: dict[str, str] = {}
    for topology in topologies:
        for topic in topology.domain.topics:
            if topic in owner_of:
                raise ConfigError(f"{file}: topic {topic!r} belongs to both domain {owner_of[topic]!r} "
                                  f"and domain {topology.domain.name!r}; a topic belongs to one domain")
            owner_of[topic] = topology.domain.name
    # A fence denies a domain's topic prefixes too: another domain's topic under one would be fenced.
    for topology in topologies:
        for prefix in topology.domain.topic_prefixes:
            for topic, domain in owner_of.items():
                if domain != topology.domain.name and topic.startswith(prefix):
                    name = topology.domain.name
                    raise ConfigError(f"{file}: topic {topic!r} of domain {domain!r} is under domain "
                                      f"{name!r}'s topic prefix {prefix!r}, so a fence of {name!r} would "
                                      "deny it; a topic belongs to one domain")


def topologies_from_document(data: dict, source: str = "the topology") -> list[Topology]:
    """One Topology per domain of an already-read topology document."""
    file = Path(source)
    topologies = []
    for where, document in domain_documents(file, data):
        try:
            topologies.append(Topology(**{k: v for k, v in document.items() if k != "default_domain"}))
        except ValidationError as e:
            raise ConfigError(_format_validation_error(source, e, where)) from e
        except SettingsError as e:  # a BATON_* variable that does not parse (e.g. malformed JSON)
            raise ConfigError(_format_settings_error(e)) from None
    _check_domains_apart(file, topologies)
    return topologies


def only_domains(topologies: list[Topology], names: list[str] | None) -> list[Topology]:
    """The topologies of the named domains (all when none are named); UsageError naming an unknown one."""
    if not names:
        return topologies
    from baton.errors import UsageError

    unknown = sorted(set(names) - {t.domain.name for t in topologies})
    if unknown:
        raise UsageError(f"--domain {', '.join(unknown)}: not in the topology; its domains: "
                         f"{', '.join(t.domain.name for t in topologies)}. Nothing was changed")
    return [t for t in topologies if t.domain.name in names]


def pick_domain(topologies: list[Topology], domain: str | None, data: dict,
                source: str = "the topology") -> Topology:
    """The named domain (else $BATON_DOMAIN, else the document's `default_domain`); a document
    with one domain needs no name."""
    names = [t.domain.name for t in topologies]
    wanted = domain or os.environ.get(DOMAIN_ENV) or None
    if wanted is None:
        if len(topologies) == 1:
            return topologies[0]
        wanted = data.get("default_domain")
        if wanted is None:
            raise ConfigError(f"{source} holds several domains ({', '.join(names)}): name one with "
                              f"--domain NAME (or {DOMAIN_ENV}=NAME)")
        if wanted not in names:
            raise ConfigError(f"{source}: default_domain {wanted!r} is not one of its domains "
                              f"({', '.join(names)})")
    for topology in topologies:
        if topology.domain.name == wanted:
            return topology
    raise ConfigError(f"domain {wanted!r} is not in {source}; its domains: {', '.join(names)}. "
                      "Pass one of them with --domain NAME")


def load_topologies(path: str | Path | None = None) -> list[Topology]:
    """Every domain of a topology file, one Topology each (a one-domain file gives one)."""
    file = resolve_config_path(path)
    return topologies_from_document(_read_document(file), str(file))


def load_topology(path: str | Path | None = None, domain: str | None = None) -> Topology:
    """Read and validate one domain's topology; ConfigError names the file and the field.

    `domain` (else $BATON_DOMAIN, else the file's `default_domain`) picks one domain of a
    multi-domain file; a file with one domain needs no name.
    """
    file = resolve_config_path(path)
    data = _read_document(file)
    return pick_domain(topologies_from_document(data, str(file)), domain, data, str(file))


def _format_settings_error(error: SettingsError) -> str:
    match = re.search(r'field "([^"]+)"', str(error))
    field = match.group(1) if match else None
    names = [n for n in os.environ if field and n.upper() == f"BATON_{field}".upper()]
    variable = names[0] if names else (f"BATON_{field.upper()}" if field else "a BATON_* variable")
    cause = error.__cause__ or error.__context__
    detail = f": {cause}" if cause else ""
    return (f"environment variable {variable} could not be parsed as the `{field or '?'}` section "
            f"(a JSON object){detail}. Fix it, or unset it to use the file's values "
            f"(single fields can be set with {variable}__FIELD=VALUE).")

"""The one exception tree. Every error an operator can see names what is wrong and what to do."""


class BatonError(Exception):
    """Base of every error Baton raises on purpose."""


class ConfigError(BatonError):
    """The configuration (file, environment or command line) is invalid. CLI exit code 2."""


class UsageError(BatonError):
    """A command was called wrongly (unknown topic, group, region...). CLI exit code 2."""


class RegionUnreachable(BatonError):
    """A region's brokers did not answer within the bounded timeout."""


class AuthenticationFailed(RegionUnreachable):
    """A region's brokers answered but refused the credentials (e.g. a wrong SASL password)."""


class LabError(BatonError):
    """The embedded lab could not be started, stopped or inspected."""


class ReplicationError(BatonError):
    """The replication engine (e.g. Kafka Connect running MirrorMaker 2) failed or is down."""


class StepFailed(BatonError):
    """A runbook step did not reach its postcondition."""


class SwitchConditionFailed(StepFailed):
    """A condition the planned switch was approved under does not hold (inside the fence)."""

    def __init__(self, condition: str, detail: str):
        self.condition, self.detail = condition, detail
        super().__init__(f"switch condition failed: {condition}: {detail}. Returning to the last "
                         "safe state without asking anyone (the switch was approved only under it)")


class ApprovalRejected(BatonError):
    """An approver rejected a gate, or it timed out."""


class FencingError(BatonError):
    """A region could not be fenced or unfenced, or the read-back did not match."""


class StaleEpoch(BatonError):
    """An authority change or lease renewal was based on an epoch that is no longer current."""


class RunLocked(BatonError):
    """Another runbook run holds the domain's lock (one run at a time per domain)."""


class WriteRefused(BatonError):
    """A guarded client refused a record. `reason` says why: "fenced" (a hand-over is in
    progress), "lease lapsed", "acl denied" (the region's brokers deny the principal) or
    "no authority" (no region's own record says it may write)."""

    def __init__(self, message: str, reason: str = "no authority"):
        super().__init__(message)
        self.reason = reason


class AuditError(BatonError):
    """The audit database could not be opened or migrated, or its evidence chain is broken."""


class AlreadyDecided(BatonError):
    """A gate's one decision was already taken (by another click or another service replica)."""


class AuditUnwritable(AuditError):
    """The audit database refused a write, or is no longer the database the run wrote to."""

"""Failover: move write authority from the owner to the other region."""

from runbooks.model import Kind, Role, Runbook, Step
from runbooks.reprotect import PLANNED_FAILOVER_REPROTECT

CHECK_LAG = Step(
    "check_lag", Kind.MEASURE,
    "Measure lag and RPO per partition (records and seconds at risk), replication health, "
    "and the consumer groups in scope. Refuse when replication is down or lag exceeds "
    "thresholds.max_lag_records / max_lag_seconds, unless overridden with a reason. Planned runs "
    "also translate every group now, read-only and from this measurement, so the fenced "
    "translation only verifies again what may have changed since.",
    unplanned="The owner is unreachable: record the last lag that can still be measured from "
    "the secondary (mirror end offsets, newest replicated heartbeat) as data at risk.",
)
APPROVE_FAILOVER = Step(
    "approve-failover", Kind.GATE,
    "Approval with the measured plan: lag, records at risk, groups, the authority change. A "
    "planned run asks only here, before anything irreversible: the person approves the whole "
    "hand-over under stated conditions (0 records at risk once fenced, every group translated "
    "exactly, readiness passing where it is measured, fenced window within "
    "thresholds.max_fenced_seconds), so nobody is waited for while producers are refused.",
)
STOP_PRIMARY_PRODUCERS = Step(
    "stop_primary_producers", Kind.IRREVERSIBLE,
    "Authority to FENCED at a new epoch (no region accepts writes), DENY WRITE ACLs for the "
    "producer principals on the owner, read back from the brokers; then prove no write can land "
    "any more instead of waiting a fixed time: the owner's end offsets read equal twice in a row, "
    "the second read at least one producer retry interval (thresholds.fence_settle_seconds) after "
    "the read-back (bounded by thresholds.step_timeout_seconds); record that evidence and every "
    "partition's final end offset. Why this is enough: a broker authorizes a produce request when "
    "it handles it and appends it in the same handling, and KRaft brokers apply committed ACLs "
    "within milliseconds; so after the read-back only requests authorized just before can still "
    "land, within one settle interval, and equal end offsets after it show none did. The settle "
    "interval is the proof's floor, not a guess about the producers' traffic.",
    changes="authority FENCED (epoch + 1); DENY WRITE ACLs on the owner (domain topics, txn ids)",
    unplanned="Authority to FENCED; the ACL fence is attempted and its failure recorded; no "
    "quiesce: wait out the lease TTL so isolated guarded producers have fenced themselves.",
    roles=frozenset({Role.FENCE}),
)
VERIFY_SECONDARY_CURRENCY = Step(
    "verify_secondary_currency", Kind.CHANGE,
    "Wait (bounded, and never past the fenced window's limit) until the secondary holds every "
    "record up to the owner's final end offsets, measuring from 50 ms apart, doubling to 1 s (the "
    "replication engine's copy latency is the floor); record the result and any missing offset "
    "ranges per partition. Once it does, replication old -> new has nothing left to copy: under "
    "a naming policy that mirrors into its own topics (MM2's default) its stop is requested here "
    "and Connect applies it (0.5-1.5 s) while translation and the switch run; `reconcile` waits "
    "for STOPPED. A run that fails before the switch lets that stop settle before its "
    "compensation restarts replication.",
    unplanned="Cannot be verified without the owner: record the last known lag as data at risk.",
    changes="planned, default naming: stop of replication old -> new requested",
    roles=frozenset({Role.CURRENCY}),
)
TRANSLATE_CONSUMER_OFFSETS = Step(
    "translate_consumer_offsets", Kind.CHANGE,
    "Require the groups to be stopped on the owner (no active members), translate each "
    "group's position exactly (record fingerprints), apply to the secondary, read back. Planned "
    "runs use the currency step's measurement when every owner and mirror offset re-reads "
    "unchanged, and carry an entry translated before the fence only when its committed offset "
    "and the newest offset sync at or below it are unchanged (no copy of the record since); every "
    "other entry is verified record by record here.",
    changes="committed offsets of the domain's groups on the secondary",
    unplanned="Translate from MirrorMaker 2 checkpoints (never skips data), exactly where the "
    "engine's offset syncs prove a one-to-one segment, and record the duplicates bound per "
    "partition. Every group-partition in scope gets an entry, `no-checkpoint` where MM2 never "
    "checkpointed it. If any entry is refused, nothing is applied and the run does not switch "
    "until a person resolves it at `approve-translation-resolutions`. Planned runs never ask: a refused "
    "entry fails the switch conditions and the run returns to the last safe state.",
    roles=frozenset({Role.TRANSLATION}),
)
RESOLVE_TRANSLATIONS = Step(
    "approve-translation-resolutions", Kind.GATE,
    "Unplanned runs, only when some group-partition was not translated: the evidence lists every "
    "refused entry with its reason and the options per group; the approver chooses per group "
    "where its refused partitions resume: `checkpoint` (where MM2 has one; re-delivers at most "
    "the mirror's records after it), `earliest` (the mirror's log start; re-delivers what the "
    "group processed) or `latest` (the mirror's end; skips what it had not processed). Answer "
    "`group=choice` pairs in the form's Choices field (Slack: in the reason box). `--yes` on the "
    "lab picks checkpoint where one exists, else earliest, recorded as auto.",
    when="unplanned=True and translations=refused",
)
APPLY_TRANSLATION_RESOLUTIONS = Step(
    "apply_translation_resolutions", Kind.CHANGE,
    "Apply the translated entries and the chosen positions together, read them back, and record "
    "each resolved entry with method `operator-resolution:<choice>`, who chose, its offset and "
    "its duplicates bound (stated before the switch; the drill holds the run to it).",
    changes="committed offsets of the domain's groups on the secondary",
    roles=frozenset({Role.TRANSLATION}),
    when="unplanned=True and translations=refused",
)
CHECK_SWITCH_CONDITIONS = Step(
    "check_switch_conditions", Kind.MEASURE,
    "Planned runs: check the conditions approved at the gate before the fence (0 records at "
    "risk, every group translated exactly, readiness where measured, fenced window within "
    "thresholds.max_fenced_seconds). If one fails, nobody is asked: the run returns to the last "
    "safe state (old owner unfenced, authority ACTIVE on it again) and names the condition. A "
    "step before it that fails on a condition (currency, translation) is reported the same way.",
    roles=frozenset({Role.CONDITIONS}),
    when="unplanned=False",
)
APPROVE_SWITCH = Step(
    "approve-switch", Kind.GATE,
    "Unplanned runs only: explicit approval of the data at risk, with currency (unverifiable), "
    "translations and their duplicates bound. The outage is already happening there, so a person "
    "decides inside the fenced window.",
    when="unplanned=True",
)
SWITCH_AUTHORITY = Step(
    "switch_authority", Kind.IRREVERSIBLE,
    "Stop replication from the old owner for the domain, lift any fence on the new owner, "
    "authority ACTIVE on the new owner (epoch + 1), published to every reachable region. "
    "Stopping replication is off the critical path only when the naming policy writes mirrors "
    "into a different topic than producers use (MM2's default `east.orders`): then no mirrored "
    "record can land where the new owner's producers write, so the stop (requested by "
    "`verify_secondary_currency` in a planned run, here otherwise) overlaps the switch and the "
    "step ends once authority has moved; `reconcile` waits for STOPPED as a postcondition. "
    "Under the identity policy the mirror IS the producers' topic: replication must have "
    "stopped before the new owner accepts a write, so the step waits for "
    "STOPPED before the switch. If the step fails before authority moved, it first waits for "
    "Connect to answer the stop, so the compensation's restart of replication comes after it.",
    changes="replication old -> new STOPPED; authority ACTIVE on the new owner (epoch + 1)",
    roles=frozenset({Role.SWITCH}),
)
RECONCILE = Step(
    "reconcile", Kind.MEASURE,
    "Post-checks, read back at once: authority ACTIVE on the new owner and its control record "
    "there, no fence left on the new owner (its producers can write), replication old -> new "
    "STOPPED: every connector that copies data stopped and none of its tasks running (the "
    "heartbeat and checkpoint connectors run on; waited for, bounded by "
    "thresholds.step_timeout_seconds with progress; asked again "
    "when the switch's request failed or the run was resumed), nothing written to the old owner "
    "after its fence, the groups sit where they were put. Any failed check fails the run after "
    "the switch, which stands; resuming the run checks again.",
    roles=frozenset({Role.RECONCILE}),
)

FAILOVER = Runbook(
    name="failover",
    title="Failover",
    purpose="Move write authority for a domain from its owner region to the other region. "
    "Planned when the owner is reachable; unplanned (`--unplanned --reason`) when it is not. A "
    "planned run ends by reprotecting the old owner (the reprotect runbook's steps, outside the "
    "fenced window); after an unplanned run, `baton reprotect` does it once the old owner answers.",
    steps=(CHECK_LAG, APPROVE_FAILOVER, STOP_PRIMARY_PRODUCERS, VERIFY_SECONDARY_CURRENCY,
           TRANSLATE_CONSUMER_OFFSETS, RESOLVE_TRANSLATIONS, APPLY_TRANSLATION_RESOLUTIONS,
           CHECK_SWITCH_CONDITIONS, APPROVE_SWITCH, SWITCH_AUTHORITY, RECONCILE, *PLANNED_FAILOVER_REPROTECT),
)

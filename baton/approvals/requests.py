"""What a button carries: which run, gate and Prefect flow run a click answers; the ids of the
interactive elements (enums, so the message builder and the handler cannot drift apart)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class ActionId(StrEnum):
    """Button action ids on an approval request."""

    APPROVE = "baton.approve"
    REJECT = "baton.reject"


class BlockId(StrEnum):
    """Block ids the handler looks for in a request message."""

    EVIDENCE = "baton.evidence"
    REASON = "baton.reason"
    ACTIONS = "baton.actions"
    OUTCOME = "baton.outcome"


REASON_INPUT = "baton.reason_input"


@dataclass(frozen=True)
class GateRequest:
    """The gate a request message asks about, carried in each button's value."""

    run_id: str
    gate: str
    flow_run_id: str
    domain: str = ""
    runbook: str = ""

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, value: str) -> GateRequest:
        """ValueError if the value is not one of ours."""
        try:
            data = json.loads(value)
            request = cls(**{key: str(data[key]) for key in ("run_id", "gate", "flow_run_id")},
                          domain=str(data.get("domain", "")), runbook=str(data.get("runbook", "")))
        except (TypeError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"not a Baton approval request: {e}") from e
        if not (request.run_id and request.gate and request.flow_run_id):
            raise ValueError("not a Baton approval request: empty run, gate or flow run")
        return request

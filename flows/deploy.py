"""Register the deployments in deployments/prefect.yaml with the Prefect API (`baton deploy`).

The YAML is the one source: `prefect deploy --all` reads it too. Deployments point at this
checkout (the process worker runs the flows from it), so the worker needs the same code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from prefect import flow as prefect_flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.schedules import Cron

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"


def deployment_specs(path: Path = PREFECT_YAML) -> list[dict]:
    return yaml.safe_load(path.read_text())["deployments"]


async def ensure_work_pool(name: str) -> bool:
    """Create the process work pool if it does not exist; True if created."""
    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True
        except ObjectAlreadyExists:
            return False


def deploy(pool: str | None = None, path: Path = PREFECT_YAML) -> list[dict]:
    """Register every deployment of the YAML; returns what was registered."""
    registered = []
    for spec in deployment_specs(path):
        pool_name = pool or spec["work_pool"]["name"]
        asyncio.run(ensure_work_pool(pool_name))
        remote = prefect_flow.from_source(source=str(ROOT), entrypoint=spec["entrypoint"])
        # Every schedule as written, timezone included (a bare cron would run in the server's zone).
        schedules = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                     for s in spec.get("schedules", [])]
        deployment_id = remote.deploy(
            name=spec["name"], work_pool_name=pool_name, description=spec.get("description"),
            parameters=spec.get("parameters") or {}, tags=spec.get("tags", []),
            schedules=schedules or None, build=False, push=False, print_next_steps=False,
        )
        active = [s for s in spec.get("schedules", []) if s.get("active", True)]
        registered.append({"flow": remote.name, "deployment": spec["name"], "id": str(deployment_id),
                           "pool": pool_name, "cron": active[0]["cron"] if active else None,
                           "timezone": active[0].get("timezone") if active else None})
    return registered

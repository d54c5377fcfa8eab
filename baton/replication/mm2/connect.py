"""A small Kafka Connect REST client with bounded timeouts and clear errors."""

from __future__ import annotations

import functools
import time

import httpx

from baton.errors import ReplicationError

REBALANCE_WAIT_SECONDS = 30.0


@functools.cache
def _tls_context():
    # httpx builds a TLS context (the CA bundle, 0.1-0.25 s) for every client; steps make an
    # engine each, some inside a fenced window, so the same verified context is shared.
    return httpx.create_ssl_context()


def _rebalancing(text: str) -> bool:
    """Connect's refusals while its workers rebalance: "rebalance is expected/in progress", and
    "stale configuration (typically caused by a concurrent config change)" when a change read
    meanwhile requires one (DistributedHerder's RebalanceNeededException)."""
    text = text.lower()
    return "rebalance" in text or "stale configuration" in text


class ConnectClient:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=_tls_context())

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        # While the workers rebalance (another domain's connectors were just changed, e.g. two
        # domains of an evacuation at once), Connect refuses every request with 409 or 500
        # "rebalance is expected/in progress" (or "stale configuration"): wait it out (bounded),
        # every call here is idempotent.
        deadline, pause = time.monotonic() + REBALANCE_WAIT_SECONDS, 0.1
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.HTTPError as e:
                raise ReplicationError(
                    f"Kafka Connect at {self.url} did not answer {method} {path}: {e}. "
                    "Is the Connect worker running (`baton lab status`)?"
                ) from e
            if not (response.status_code in (409, 500) and _rebalancing(response.text)
                    and time.monotonic() + pause < deadline):
                break
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        if response.status_code >= 400 and response.status_code != 404:
            raise ReplicationError(
                f"Kafka Connect {method} {path} failed with {response.status_code}: "
                f"{response.text[:500]}"
            )
        return response

    def alive(self) -> bool:
        try:
            return self._http.get("/").status_code == 200
        except httpx.HTTPError:
            return False

    def connectors(self) -> list[str]:
        return self._call("GET", "/connectors").json()

    def put_config(self, name: str, config: dict[str, str]) -> None:
        self._call("PUT", f"/connectors/{name}/config", json=config)

    def config(self, name: str) -> dict[str, str] | None:
        response = self._call("GET", f"/connectors/{name}/config")
        return None if response.status_code == 404 else response.json()

    def status(self, name: str) -> dict | None:
        response = self._call("GET", f"/connectors/{name}/status")
        return None if response.status_code == 404 else response.json()

    def stop(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/stop")

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/resume")

    def restart(self, name: str) -> None:
        self._call("POST", f"/connectors/{name}/restart?includeTasks=true&onlyFailed=true")

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/connectors/{name}")

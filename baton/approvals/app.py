"""The two transports for the approval service: an HTTP app (FastAPI) for Slack's
interactivity request URL, and a Socket Mode connection for sites without a public endpoint.
Both hand the payload to the same `ApprovalService.handle_payload`."""

from __future__ import annotations

import logging
import threading

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from slack_sdk import WebClient
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from baton.approvals.service import MAX_BODY_BYTES, ApprovalService

log = logging.getLogger("baton.approvals")

INTERACTIONS_PATH = "/slack/interactions"


def create_app(service: ApprovalService) -> FastAPI:
    """POST /slack/interactions (Slack's interactivity request URL) and GET /health."""
    app = FastAPI(title="Baton approvals", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(INTERACTIONS_PATH)
    async def interactions(request: Request) -> Response:
        body = await _bounded_body(request, MAX_BODY_BYTES)
        if body is None:  # refused unread: nothing from it is parsed or stored
            return Response(f"request body over {MAX_BODY_BYTES} bytes", status_code=413)
        source = request.client.host if request.client else "?"
        outcome = await run_in_threadpool(service.handle_http, body, dict(request.headers), source)
        # Slack shows nothing from this body; the user is told in the channel (ephemeral).
        text = outcome.reason if outcome.status_code >= 400 else ""
        return Response(text, status_code=outcome.status_code, media_type="text/plain")

    @app.get("/health")
    async def health() -> dict:
        return await run_in_threadpool(service.health)

    return app


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def socket_mode_client(service: ApprovalService) -> SocketModeClient:
    """A Socket Mode client (app-level token) whose interactive envelopes go to the service.

    The envelope is acknowledged first (Slack wants it within 3 s), then handled. No request
    signature exists here: the identity is vouched for by the authenticated connection."""
    settings = service.settings
    # apps.connections.open authenticates with the app token, passed per call by the client.
    client = SocketModeClient(app_token=settings.slack_app_token.get_secret_value(),
                              web_client=WebClient(base_url=settings.slack_api_url, timeout=10),
                              logger=logging.getLogger("baton.approvals.socket_mode"))

    def on_request(client: SocketModeClient, request: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
        if request.type == "interactive":
            service.handle_payload(request.payload, verified_by="socket-mode")

    client.socket_mode_request_listeners.append(on_request)
    return client


def run_socket_mode(service: ApprovalService, stop: threading.Event | None = None) -> None:
    """Connect and handle envelopes until `stop` is set (or forever)."""
    client = socket_mode_client(service)
    client.connect()
    log.info("socket mode connected", extra={"fields": {"event": "started", "transport": "socket-mode"}})
    try:
        (stop or threading.Event()).wait()
    finally:
        client.close()

"""A local stand-in for Slack: the Web API methods Baton calls, answered like Slack, every call
recorded; and a Socket Mode websocket endpoint that can push envelopes and records acks.

Also builds what Slack would send: signed interactive requests (v0 signature) and block_actions
payloads for a posted request message.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from baton.approvals.requests import REASON_INPUT, ActionId, BlockId

BOT_TOKEN = "xoxb-test-bot-token-not-secret"
APP_TOKEN = "xapp-test-app-token-not-secret"
SIGNING_SECRET = "test-signing-secret-0123456789"
TEAM = "T0BATON"
CHANNEL = "C0APPROVALS"


@dataclass
class Call:
    method: str
    token: str
    args: dict


@dataclass
class SlackStandIn:
    """Web API on http://127.0.0.1:{port}/api/; group members for usergroups.users.list."""

    groups: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    websocket_url: str = ""
    _ts: itertools.count = field(default_factory=lambda: itertools.count(1))

    def start(self) -> SlackStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                url = urlparse(self.path)
                method = url.path.rsplit("/", 1)[-1]
                args = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                if body:
                    if "json" in (self.headers.get("Content-Type") or ""):
                        args |= json.loads(body)
                    else:
                        args |= {k: v[0] for k, v in parse_qs(body).items()}
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                answer = standin.answer(method, token, args)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, method: str, token: str, args: dict) -> dict:
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return {"ok": False, "error": "invalid_auth"}
        self.calls.append(Call(method, token, args))
        if method == "auth.test":
            return {"ok": True, "url": "https://baton-test.slack.com/", "team": "Baton", "user": "baton",
                    "team_id": TEAM, "user_id": "U0BATONBOT", "bot_id": "B0BATON"}
        if method in ("chat.postMessage", "chat.update"):
            if not args.get("channel"):
                return {"ok": False, "error": "channel_not_found"}
            ts = args.get("ts") or f"{int(time.time())}.{next(self._ts):06d}"
            args["_ts"] = ts
            return {"ok": True, "channel": args["channel"], "ts": ts,
                    "message": {"text": args.get("text"), "blocks": args.get("blocks"), "ts": ts}}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"{int(time.time())}.{next(self._ts):06d}"}
        if method == "usergroups.users.list":
            if args.get("usergroup") not in self.groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": self.groups[args["usergroup"]]}
        if method == "apps.connections.open":
            return {"ok": True, "url": self.websocket_url}
        return {"ok": False, "error": "unknown_method"}

    def called(self, method: str) -> list[dict]:
        return [c.args for c in self.calls if c.method == method]

    def requests(self) -> list[dict]:
        """chat.postMessage calls that posted an approval request (not reminders)."""
        return [a for a in self.called("chat.postMessage") if not a.get("thread_ts")]


class SocketModeStandIn:
    """A websocket endpoint like Slack's Socket Mode: says hello, pushes envelopes, records acks."""

    def __init__(self):
        self.acks: list[dict] = []
        self.outbox: queue.Queue[dict] = queue.Queue()
        self.connected = threading.Event()

    def start(self) -> SocketModeStandIn:
        from websockets.sync.server import serve

        def handler(connection):
            connection.send(json.dumps({"type": "hello", "num_connections": 1,
                                        "debug_info": {"host": "standin"}}))
            self.connected.set()
            while True:
                try:
                    envelope = self.outbox.get(timeout=0.1)
                    connection.send(json.dumps(envelope))
                except queue.Empty:
                    pass
                try:
                    message = connection.recv(timeout=0.05)
                except TimeoutError:
                    continue
                except Exception:  # closed
                    return
                self.acks.append(json.loads(message))

        self.server = serve(handler, "127.0.0.1", 0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/link/?ticket=test"

    def push_interactive(self, payload: dict) -> str:
        envelope_id = f"env-{time.monotonic_ns()}"
        self.outbox.put({"envelope_id": envelope_id, "type": "interactive", "payload": payload,
                         "accepts_response_payload": False, "retry_attempt": 0, "retry_reason": ""})
        return envelope_id

    def stop(self) -> None:
        self.server.shutdown()


# -- what Slack sends --------------------------------------------------------------------------


def click_payload(request_message: dict, action: ActionId, user_id: str, user_name: str = "",
                  reason: str = "", channel: str = CHANNEL, ts: str = "") -> dict:
    """The block_actions payload Slack sends when `user_id` presses a button on the message
    (`request_message`: the chat.postMessage arguments as the stand-in recorded them)."""
    blocks = request_message["blocks"]
    button = next(e for b in blocks if b.get("block_id") == BlockId.ACTIONS for e in b["elements"]
                  if e["action_id"] == action)
    ts = ts or request_message.get("_ts", "")
    return {
        "type": "block_actions", "api_app_id": "A0BATON", "trigger_id": "1.2.3",
        "user": {"id": user_id, "username": user_name or user_id.lower(),
                 "name": user_name or user_id.lower(), "team_id": TEAM},
        "team": {"id": TEAM, "domain": "baton-test"}, "channel": {"id": channel, "name": "approvals"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "message": {"type": "message", "ts": ts, "text": request_message.get("text"), "blocks": blocks},
        "state": {"values": {BlockId.REASON: {
            REASON_INPUT: {"type": "plain_text_input", "value": reason or None}}}},
        "response_url": "https://hooks.slack.invalid/actions/T0BATON/1/abc",
        "actions": [{"type": "button", "action_id": action, "block_id": BlockId.ACTIONS,
                     "value": button["value"], "action_ts": f"{time.time():.6f}"}],
    }


def signed_request(payload: dict, secret: str = SIGNING_SECRET, timestamp: int | None = None
                   ) -> tuple[bytes, dict]:
    """Body and headers of Slack's interactive POST, signed with Slack's v0 scheme."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = f"v0:{timestamp}:".encode() + body
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded",
                  "X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature}

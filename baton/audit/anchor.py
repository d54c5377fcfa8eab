"""Anchoring the evidence chain outside the database.

The chain head is signed with a key the database does not hold (env BATON_AUDIT__CHAIN_KEY,
or `audit.chain_key_file`; the lab has a fixed default, for the lab only). Beside each authority
record, every region's control topic also gets an anchor: the domain's epoch and the chain's
seq, hash and signature at that moment. `baton audit verify` checks the database against the
anchors, so a recomputed chain, a truncated or a replaced database is named.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict, dataclass
from pathlib import Path

from baton.audit import chain
from baton.errors import ConfigError

LAB_CHAIN_KEY = b"baton-lab-chain-key (not a secret: the lab only)"


def chain_key(topology) -> bytes | None:
    """The key that signs the chain head: configured, from its file, the lab's default, or None."""
    settings = topology.audit
    if settings.chain_key is not None:
        return settings.chain_key.get_secret_value().encode()
    if settings.chain_key_file:
        path = Path(settings.chain_key_file).expanduser()
        try:
            return path.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"audit.chain_key_file {path}: cannot read it ({e.strerror}); "
                              "create it or unset chain_key_file") from e
    from baton.lab.lab import is_lab_topology

    return LAB_CHAIN_KEY if is_lab_topology(topology) else None


@dataclass(frozen=True)
class Anchor:
    """The chain's head when a domain's authority reached `epoch`, signed."""

    domain: str
    epoch: int
    seq: int
    hash: str
    signature: str

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Anchor:
        return cls(domain=str(data["domain"]), epoch=int(data["epoch"]), seq=int(data["seq"]),
                   hash=str(data["hash"]), signature=str(data["signature"]))


def sign_anchor(key: bytes | None, domain: str, epoch: int, seq: int, head_hash: str) -> Anchor:
    signature = chain.sign(key, "anchor", domain, epoch, seq, head_hash) if key else ""
    return Anchor(domain, epoch, seq, head_hash, signature)


def anchor_signed(key: bytes, anchor: Anchor) -> bool:
    expected = chain.sign(key, "anchor", anchor.domain, anchor.epoch, anchor.seq, anchor.hash)
    return hmac.compare_digest(anchor.signature, expected)

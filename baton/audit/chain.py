"""The evidence hash chain: each row's hash covers its content and the previous row's hash.

The chain is one sequence (`seq`) across every evidence table, so it also proves the order in
which evidence was written (an approval before the step it allowed). `chain_head` keeps the
last seq and hash: without it, deleting the newest row would leave a valid-looking chain.
The head is signed (HMAC-SHA256) with a key the database does not hold, passed in the
session's `info["chain_key"]` by the AuditStore: whoever can write the database can recompute
every hash, but not the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from baton.audit.models import CHAINED, Chained, ChainHead

GENESIS = "0" * 64


def _plain(value):
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def content(row: Chained) -> dict:
    """Every column except the row's own hash, plus the table name."""
    values = {column.name: _plain(getattr(row, column.name)) for column in row.__table__.columns}
    values.pop("hash")
    values["_table"] = row.__tablename__
    return values


def row_hash(row: Chained) -> str:
    text = json.dumps(content(row), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sign(key: bytes, *parts: object) -> str:
    """HMAC-SHA256 (hex) of the parts joined by '|'."""
    return hmac.new(key, "|".join(map(str, parts)).encode(), hashlib.sha256).hexdigest()


def head_signature(key: bytes, seq: int, head_hash: str) -> str:
    return sign(key, "chain_head", seq, head_hash)


def lock(session: Session) -> ChainHead:
    """Lock the chain head for the rest of the caller's transaction (FOR UPDATE on PostgreSQL;
    SQLite transactions are BEGIN IMMEDIATE already), so concurrent writers append one after
    the other. Take it before reading anything the new row depends on (e.g. a step's position)."""
    head = session.exec(select(ChainHead).where(ChainHead.id == 1).with_for_update()).first()
    if head is None:  # the migration creates it; this covers a database whose row was deleted
        head = ChainHead(id=1, seq=0, hash=GENESIS)
        session.add(head)
    return head


def append(session: Session, row: Chained, now: datetime) -> Chained:
    """Link `row` to the end of the chain and add it, inside the caller's transaction.
    The unique `seq` is the backstop should two writers ever get past the lock."""
    head = lock(session)
    row.seq = head.seq + 1
    row.recorded_at = now
    row.prev_hash = head.hash
    row.hash = ""
    session.add(row)
    session.flush()  # assigns the row's id, which the hash covers
    row.hash = row_hash(row)
    head.seq, head.hash = row.seq, row.hash
    key = session.info.get("chain_key")
    head.signature = head_signature(key, head.seq, head.hash) if key else ""
    session.add(head)
    session.flush()
    return row


@dataclass
class Break:
    """The first row where the chain does not hold."""

    table: str
    row_id: object
    seq: int
    problem: str

    def __str__(self) -> str:
        return f"{self.table} row {self.row_id} (seq {self.seq}): {self.problem}"


@dataclass
class Verdict:
    rows: int
    head_seq: int
    first_break: Break | None
    signed: bool = False  # the head's signature was checked with the key

    @property
    def ok(self) -> bool:
        return self.first_break is None


def _row_id(row: Chained) -> object:
    return row.id  # every chained table has an `id` primary key


def verify(session: Session) -> Verdict:
    """Walk the whole chain in seq order; report the first row that breaks it."""
    rows: list[Chained] = []
    for table in CHAINED:
        rows.extend(session.exec(select(table)).all())
    rows.sort(key=lambda r: r.seq)
    head = session.get(ChainHead, 1)
    previous_hash, previous_seq = GENESIS, 0
    for row in rows:
        where = (row.__tablename__, _row_id(row), row.seq)
        if row.seq != previous_seq + 1:
            missing = f"seq {previous_seq + 1}" if row.seq == previous_seq + 2 else (
                f"seqs {previous_seq + 1}..{row.seq - 1}")
            return Verdict(len(rows), head.seq if head else 0, Break(
                *where, f"{missing} missing before it: a row was deleted or its seq changed"))
        if row.prev_hash != previous_hash:
            return Verdict(len(rows), head.seq if head else 0, Break(
                *where, "prev_hash does not match the hash of the row before it: "
                        "rows were deleted, reordered or inserted out of order"))
        if row_hash(row) != row.hash:
            return Verdict(len(rows), head.seq if head else 0, Break(
                *where, "its content does not match its hash: the row was edited"))
        previous_hash, previous_seq = row.hash, row.seq
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if (head_seq, head_hash) != (previous_seq, previous_hash):
        last = rows[-1] if rows else None
        table, row_id = (last.__tablename__, _row_id(last)) if last else ("chain_head", 1)
        return Verdict(len(rows), head_seq, Break(
            table, row_id, previous_seq,
            f"the chain ends at seq {previous_seq} but chain_head records seq {head_seq}: "
            "the newest row(s) were deleted or the head was altered"))
    key = session.info.get("chain_key")
    if key and head_seq:
        expected = head_signature(key, head_seq, head_hash)
        if not head or not hmac.compare_digest(head.signature or "", expected):
            why = "is missing" if head and not head.signature else "does not match the chain key"
            return Verdict(len(rows), head_seq, Break(
                "chain_head", 1, head_seq,
                f"the chain head's signature {why}: the chain was recomputed or the head replaced by "
                "someone without the chain key (or the key changed)"))
    return Verdict(len(rows), head_seq, None, signed=bool(key))

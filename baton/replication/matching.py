"""Locating one region's record in the other region's copy by fingerprints. Pure functions.

Sequences are lists of Rec in offset order (data records only: transaction markers and
compacted-away offsets are simply absent), so gaps in offsets never break a match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from baton.kafka.reading import Rec


def common_prefix(owner: list[Rec], mirror: list[Rec]) -> int:
    """How many leading records of the two sequences are copies of each other."""
    count = 0
    for a, b in zip(owner, mirror, strict=False):
        if a.fingerprint != b.fingerprint:
            break
        count += 1
    return count


@dataclass
class Match:
    """Where a run of owner records starts in the mirror window."""

    status: str  # exact | ambiguous | not-found
    offset: int | None = None  # mirror offset of the run's first record
    candidates: list[int] = field(default_factory=list)


def match_run(owner_run: list[Rec], owner_complete: bool, mirror: list[Rec], mirror_complete: bool,
              mirror_current: bool, starts_before: int | None = None) -> Match:
    """Find the mirror position whose following records copy `owner_run` record by record.

    owner_complete: the run reaches the owner's end offset; mirror_complete: the window
    reaches the mirror's end; mirror_current: the mirror holds every owner record.
    A candidate dies on a mismatch, when the mirror continues past a copy of the owner's
    last record (those would be duplicates), or when a current mirror ends early. Only
    positions below `starts_before` are candidates (the mirror may be read further so a run
    starting just below it can complete). One
    survivor is the answer; several (identical runs longer than what was read) are
    reported as ambiguous, never guessed.
    """
    if not owner_run:
        return Match("not-found")
    first = owner_run[0].fingerprint
    survivors = []
    for start, record in enumerate(mirror):
        if starts_before is not None and record.offset >= starts_before:
            break
        if record.fingerprint != first:
            continue
        length = common_prefix(owner_run, mirror[start:])
        mirror_left = len(mirror) - start
        if length == len(owner_run):
            if owner_complete and mirror_left > length:
                continue  # the mirror has records after a copy of the owner's last one
            survivors.append(record.offset)
        elif length == mirror_left:
            if mirror_complete and mirror_current:
                continue  # a current mirror would hold the rest of the run
            survivors.append(record.offset)
    if len(survivors) == 1:
        return Match("exact", survivors[0], survivors)
    return Match("ambiguous" if survivors else "not-found", None, survivors)

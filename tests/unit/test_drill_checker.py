"""The drill checker on crafted event logs with known missing, duplicate and violating records."""

from __future__ import annotations

from baton.drill.checker import Epoch, account_divergent, check, handovers, lost_records
from baton.workload.records import AckedWrite, Processed, StoredCopy

# east owns epoch 1, FENCED at 2 (t=10), west ACTIVE at 3 (t=12), FENCED 4 (t=20), east ACTIVE 5 (t=22)
EPOCHS = [Epoch(1, "east", "ACTIVE", 0.0), Epoch(2, "east", "FENCED", 10.0), Epoch(3, "west", "ACTIVE", 12.0),
          Epoch(4, "west", "FENCED", 20.0), Epoch(5, "east", "ACTIVE", 22.0)]


def ack(seq, region="east", epoch=1, at=None, key="k0"):
    at = float(seq) if at is None else at
    return AckedWrite("p1", key, seq, region, epoch, "orders.events", 0, seq, at, at + 0.01)


def seen(seq, group="billing", region="east", key="k0"):
    return Processed(group, "p1", key, seq, region, "orders.events", 0, seq, seq + 0.5)


def clean_log():
    acked = [ack(s) for s in range(5)] + [ack(s, "west", 3, at=12 + s) for s in range(5, 9)] \
        + [ack(s, "east", 5, at=18 + s) for s in range(9, 12)]
    processed = [seen(s, g) for s in range(12) for g in ("billing", "shipping")]
    return acked, processed


def test_a_clean_drill_has_nothing_to_report():
    acked, processed = clean_log()
    result = check(acked, processed, EPOCHS, ["billing", "shipping"])
    for group in ("billing", "shipping"):
        findings = result["consumers"][group]
        assert findings["missing"] == findings["duplicates"] == findings["unacknowledged_processed"] == 0
        assert findings["distinct"] == 12
    assert result["violations"] == []
    assert result["acked_by_region"] == {"east": 8, "west": 4}


def test_missing_duplicate_and_unacknowledged_records_are_counted_exactly():
    acked, processed = clean_log()
    processed = [p for p in processed if not (p.group == "billing" and p.seq in (3, 7))]
    processed += [seen(5, "billing"), seen(5, "billing"), seen(10, "shipping"), seen(99, "shipping")]
    result = check(acked, processed, EPOCHS, ["billing", "shipping"])
    billing, shipping = result["consumers"]["billing"], result["consumers"]["shipping"]
    assert (billing["missing"], billing["missing_ids"]) == (2, ["p1/k0/3", "p1/k0/7"])
    assert (billing["duplicates"], billing["duplicate_ids"]) == (2, ["p1/k0/5"])
    assert (shipping["missing"], shipping["duplicates"], shipping["duplicate_ids"]) == (0, 1, ["p1/k0/10"])
    assert (shipping["unacknowledged_processed"], shipping["unacknowledged_ids"]) == (1, ["p1/k0/99"])


def test_excused_records_are_not_missing_but_counted_apart():
    acked, processed = clean_log()
    processed = [p for p in processed if p.seq != 4]
    result = check(acked, processed, EPOCHS, ["billing"], excused={("p1", "k0", 4)})
    assert result["consumers"]["billing"]["missing"] == 0
    assert result["consumers"]["billing"]["set_aside_unprocessed"] == 1


def test_second_writer_violations_name_the_record_and_why():
    acked, _ = clean_log()
    acked += [
        ack(20, "west", 1, at=5),  # west under east's epoch
        ack(21, "east", 2, at=11),  # accepted under a FENCED epoch
        ack(22, "east", 1, at=13),  # east's stale guard after west took authority at t=12
        ack(23, "east", 7, at=30),  # an epoch nobody recorded
    ]
    violations = check(acked, [], EPOCHS, [])["violations"]
    assert [(v["record"], v["region"], v["epoch"]) for v in violations] == [
        ("p1/k0/20", "west", 1), ("p1/k0/21", "east", 2), ("p1/k0/22", "east", 1), ("p1/k0/23", "east", 7)]
    assert "belongs to east" in violations[0]["why"]
    assert "FENCED" in violations[1]["why"]
    assert "after west took authority at epoch 3" in violations[2]["why"]
    assert "not in the authority history" in violations[3]["why"]


def test_write_gap_is_last_old_ack_to_first_new_ack():
    acked, _ = clean_log()
    moves = handovers(acked, EPOCHS)
    assert [(m["from"], m["to"], m["from_epoch"], m["to_epoch"]) for m in moves] == [
        ("east", "west", 1, 3), ("west", "east", 3, 5)]
    # last east ack at 4.01, first west ack at 17.01 (12 + 5)
    assert moves[0]["write_gap_seconds"] == 13.0
    assert moves[0]["old_owner_acks_after_switch"] == 0


def test_a_compensated_handover_is_not_a_move():
    epochs = [Epoch(1, "east", "ACTIVE", 0), Epoch(2, "east", "FENCED", 1), Epoch(3, "east", "ACTIVE", 2)]
    assert handovers([ack(0), ack(1, epoch=3, at=3)], epochs) == []


def test_lost_records_are_those_the_new_owner_never_replicated_and_policy_accounts_for_them():
    acked = [ack(s) for s in range(6)] + [ack(6, "west", 3, at=13)]
    copies = [StoredCopy("p1", "k0", s, "west", "east.orders.events", 0, s) for s in range(4)]
    # the tail 4 and 5 never crossed; the failback quarantined 4 on east and 5 went nowhere
    copies.append(StoredCopy("p1", "k0", 4, "east", "orders.events.divergent", 0, 0,
                             "east/orders.events/0/4"))
    lost = lost_records(acked, copies, old_owner="east", new_owner="west", before_epoch=3)
    assert (lost["count"], lost["ids"]) == (2, ["p1/k0/4", "p1/k0/5"])
    fates = account_divergent(lost["_set"], copies, policy="quarantine", current_owner="west",
                              returning="east")
    assert fates["by_fate"] == {"quarantined": 1, "unaccounted": 1}
    assert (fates["accounted"], fates["unaccounted"], fates["unaccounted_ids"]) == (1, 1, ["p1/k0/5"])
    republished = account_divergent(
        {("p1", "k0", 5)},
        [StoredCopy("p1", "k0", 5, "west", "orders.events", 0, 9, "east/orders.events/0/5")],
        policy="republish", current_owner="west", returning="east")
    assert republished["unaccounted"] == 0
    discarded = account_divergent({("p1", "k0", 5)}, [], policy="discard", current_owner="west",
                                  returning="east", discarded={("p1", "k0", 5)})
    assert discarded["by_fate"] == {"discarded": 1}

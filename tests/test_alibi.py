"""ingestor/alibi.py: the chain's arithmetic. A writer's encoding of ring records and a verifier's encoding of the
stored rows are the same bytes (checked through a real PostgreSQL), and each link depends on its scale's past only."""

from __future__ import annotations

import hashlib
import time

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor import alibi, copy_payload
from ingestor.protocol import Event, RecordBuilder

from .archive_fixtures import ODD_VALUES

NOW_US = time.time_ns() // 1000


def records(events: list[Event]) -> np.ndarray:
    b = RecordBuilder()
    for e in events:
        b.add(e, NOW_US)
    return b.build(time.time_ns())


def odd_events(n: int = 60) -> list[Event]:
    """Events of 3 scales with NULL fields, empty strings, 64-byte texts and the archive's odd values."""
    values = ODD_VALUES + ["x" * 64, "é" * 32]
    return [Event(scale_id=1 + i % 3, seq=i // 3, ts=1_700_000_000_000 + i,
                  **{f"data_{k}": None if (i + k) % 4 == 0 else values[(i * 5 + k) % len(values)] for k in range(1, 6)})
            for i in range(n)]


def test_the_encoding_of_ring_records_equals_the_encoding_of_the_rows_postgresql_stored(conn):
    recs = records(odd_events())
    with conn.cursor() as cur, cur.copy(copy_payload.COPY_SQL) as c:
        c.write(copy_payload.build(recs, NOW_US))
    rows = conn.execute("SELECT scale_id, seq, measured_at, created_at, data_1->>'val', data_2->>'val', data_3->>'val', "
                        "data_4->>'val', data_5->>'val' FROM weighing_logs ORDER BY seq, scale_id").fetchall()
    order = np.lexsort((recs["scale_id"], recs["seq"]))  # the rows' order
    from_records = alibi.canonical_from_records(recs[order], NOW_US)
    from_rows = alibi.canonical_from_rows(rows)
    assert from_rows == from_records
    assert from_rows.event(0)[:4] == (1).to_bytes(4, "little") and len(from_rows.offsets) == len(rows) + 1


def test_text_past_its_length_in_a_reused_slot_does_not_change_the_encoding():
    recs = records(odd_events(6))
    dirty = recs.copy()
    text = dirty["text"].view(np.uint8).reshape(len(dirty), 5, 64)
    lengths = np.maximum(dirty["text_len"], 0)
    text[np.arange(64) >= lengths[:, :, None]] = 0xAB  # what an earlier record left in the slot
    assert alibi.canonical_from_records(dirty, NOW_US) == alibi.canonical_from_records(recs, NOW_US)


def test_each_link_depends_on_its_scale_s_past_only_and_on_every_byte_of_its_event():
    events = odd_events()
    numbers, links = alibi.chain(alibi.canonical_from_records(records(events), NOW_US), heads := {})
    assert len(set(links)) == len(links) and set(heads) == {1, 2, 3}
    one = [e for e in events if e.scale_id == 1]
    assert [n for n, e in zip(numbers.tolist(), events) if e.scale_id == 1] == list(range(1, len(one) + 1))
    assert heads[1] == (len(one), [link for link, e in zip(links, events) if e.scale_id == 1][-1])
    _, alone = alibi.chain(alibi.canonical_from_records(records(one), NOW_US), {})  # without the others interleaved
    assert alone == [link for link, e in zip(links, events) if e.scale_id == 1]
    changed = list(one)
    changed[4] = msgspec.structs.replace(one[4], data_1="12.51")
    _, after = alibi.chain(alibi.canonical_from_records(records(changed), NOW_US), {})
    assert after[:4] == alone[:4] and all(a != b for a, b in zip(after[4:], alone[4:]))  # from the change on
    resumed = alibi.chain(alibi.canonical_from_records(records(one[10:]), NOW_US), {1: alibi.Head(10, alone[9])})
    assert resumed[0].tolist() == list(range(11, len(one) + 1)) and resumed[1] == alone[10:]  # from a stored head
    none = alibi.chain(alibi.canonical_from_records(records(one)[:0], NOW_US), heads)  # a batch of duplicates only
    assert none[0].tolist() == none[1] == [] and set(heads) == {1, 2, 3}
    first = alibi.canonical_from_records(records(one[:1]), NOW_US)
    assert alibi.chain(first, {})[1] != alibi.chain(first, {1: alibi.Head(0, alibi.genesis(2))})[1]


# -- the verifier's core: each kind of tampering named, nothing else ---------------------------------

def stored_chain(n: int = 12, scale: int = 7) -> list[alibi.Record]:
    """A scale's chain of n records as a writer would have stored them (row ids 100 + record number)."""
    events = [Event(scale_id=scale, seq=i, ts=1_700_000_000_000 + i, data_1=f"{10 + i}.5", data_2="kg")
              for i in range(1, n + 1)]
    encoded = alibi.canonical_from_records(records(events), NOW_US)
    numbers, links = alibi.chain(encoded, {})
    return [alibi.Record(numbers[i], 101 + i, links[i], encoded.event(i)) for i in range(n)]


def kinds(findings) -> list[tuple[str, tuple[int, ...]]]:
    return [(f.kind, f.records) for f in findings]


def test_an_untouched_chain_verifies():
    chain = stored_chain()
    assert alibi.verify_chain(7, chain, last=12) == []
    assert alibi.verify_chain(7, list(reversed(chain)), last=12) == []  # read in any order


def test_a_changed_weight_is_named_by_its_record_number_and_nothing_else():
    chain = stored_chain()
    chain[4] = chain[4]._replace(event=chain[4].event.replace(b"15.5", b"16.5"))
    assert kinds(alibi.verify_chain(7, chain, last=12)) == [("changed", (5,))]


def test_a_deleted_row_is_named():
    chain = stored_chain()
    del chain[6]
    assert kinds(alibi.verify_chain(7, chain, last=12)) == [("deleted", (7,))]


def test_an_inserted_row_is_named_by_its_row_id():
    chain = stored_chain()
    chain.append(alibi.Record(None, 999, None, chain[3].event))  # a row written past the ingestor
    chain.append(chain[5]._replace(row_id=998))  # a copy under an existing record number
    assert kinds(alibi.verify_chain(7, chain, last=12)) == [("inserted", (998, 999))]


def test_a_reordered_pair_is_named():
    chain = stored_chain()
    a, b = chain[2], chain[3]
    chain[2], chain[3] = a._replace(event=b.event), b._replace(event=a.event)
    assert kinds(alibi.verify_chain(7, chain, last=12)) == [("reordered", (3, 4))]


def test_a_truncated_chain_is_named_against_the_recorded_last_record():
    chain = stored_chain()[:9]
    assert kinds(alibi.verify_chain(7, chain, last=12)) == [("truncated", (10, 11, 12))]


def test_a_chain_rewritten_after_a_seal_passes_the_links_but_not_the_seal():
    chain = stored_chain()
    sealed = [(12, chain[11].link)]
    events = [r.event for r in chain]
    events[4] = events[4].replace(b"15.5", b"16.5")
    heads: dict[int, bytes] = {}
    relinked = []
    for r, event in zip(chain, events):  # every link recomputed from the change on
        link = heads[7] = hashlib.sha256((heads.get(7) or alibi.genesis(7)) + event).digest()
        relinked.append(r._replace(event=event, link=link))
    assert alibi.verify_chain(7, relinked, last=12) == []
    assert kinds(alibi.verify_heads(7, relinked, sealed)) == [("sealed", (12,))]
    assert alibi.verify_heads(7, chain, sealed) == []


def test_a_chain_whose_oldest_days_were_dropped_verifies_from_its_first_kept_record():
    chain = stored_chain()
    assert alibi.verify_chain(7, chain[5:], last=12, start=(6, chain[4].link)) == []
    assert kinds(alibi.verify_chain(7, chain[5:], last=12)) == [("deleted", (1, 2, 3, 4, 5))]


# -- property: pieces in any order verify; any tampering never does ----------------------------------

def _plant(scales: int, n: int, skip_at: int | None = None) -> dict[int, list[alibi.Record]]:
    """Chains of n records; with ``skip_at``, the records after the first ``skip_at`` continue at FLOOR + 1 (a
    restore's skip, docs/alibi.md#after-a-restore), linked across it."""
    out = {}
    for s in range(1, scales + 1):
        chain = stored_chain(n, s) if skip_at is None else skipped_chain(n, skip_at, s)
        out[s] = [r._replace(row_id=1000 * s + r.row_id) for r in chain]
    return out


FLOOR = 1000


def skipped_chain(n: int, skip_at: int, scale: int = 7) -> list[alibi.Record]:
    """A chain of n records whose writers skipped to FLOOR after the first ``skip_at`` (row ids 101 …)."""
    events = [Event(scale_id=scale, seq=i, ts=1_700_000_000_000 + i, data_1=f"{10 + i}.5", data_2="kg")
              for i in range(1, n + 1)]
    out: list[alibi.Record] = []
    heads: dict[int, alibi.Head] = {}
    for part in (events[:skip_at], events[skip_at:]):
        encoded = alibi.canonical_from_records(records(part), NOW_US) if part else None
        if encoded is not None:
            numbers, links = alibi.chain(encoded, heads)
            out += [alibi.Record(int(numbers[i]), 101 + len(out), links[i], encoded.event(i)) for i in range(len(part))]
        head = heads.get(scale) or alibi.Head(0, alibi.genesis(scale))
        heads[scale] = alibi.Head(max(head.record_no, FLOOR), head.link)  # the skip: the link kept
    return out


def _head(chain: list[alibi.Record], scale: int, skip_at: int | None) -> tuple[int, bytes]:
    if skip_at is not None and skip_at == len(chain):  # moved onto the floor, nothing written after it
        return FLOOR, chain[-1].link if chain else alibi.genesis(scale)
    return chain[-1].record_no, chain[-1].link


def test_a_chain_across_a_recorded_skip_verifies_and_names_the_jump():
    chain = skipped_chain(12, 5)
    assert [r.record_no for r in chain][4:6] == [5, FLOOR + 1]
    check = alibi.ChainCheck(7, None, (FLOOR + 7, chain[-1].link), frozenset({FLOOR}))
    check.feed(chain)
    assert alibi.resolve([check]) == [] and check.skipped == [(6, FLOOR, chain[4].link)]
    begun_after = skipped_chain(3, 0)  # a chain begun after the skip: from its genesis
    assert alibi.verify_chain(7, begun_after, last=FLOOR + 3, floors=frozenset({FLOOR})) == []


def test_a_jump_without_its_skip_recorded_is_a_deletion():
    chain = skipped_chain(12, 5)
    assert kinds(alibi.verify_chain(7, chain, last=FLOOR + 7)) == [("deleted", alibi._named(range(6, FLOOR + 1)))]


TAMPERINGS = ["event", "link", "delete", "duplicate", "renumber", "unnumber", "swap", "move", "head"]


@given(scales=st.integers(1, 3), n=st.integers(2, 25), pieces=st.integers(1, 5), seed=st.integers(0, 2**32),
       tamper=st.lists(st.tuples(st.sampled_from(TAMPERINGS), st.integers(0, 10**6)), max_size=3),
       skip_at=st.none() | st.integers(0, 25), forged_floors=st.lists(st.integers(0, FLOOR + 30), max_size=3))
@settings(max_examples=600, deadline=None)
def test_any_tampering_is_found_and_untouched_chains_in_any_order_are_not(scales, n, pieces, seed, tamper, skip_at,
                                                                           forged_floors):
    """Also across a recorded skip, and with skips a forger recorded anywhere (``forged_floors``): a floor
    accepts only a jump its links hold across, so no row's tampering hides behind one."""
    import random

    rng = random.Random(seed)
    skip_at = None if skip_at is None else min(skip_at, n)
    chains = _plant(scales, n, skip_at)
    heads = {s: _head(rs, s, skip_at) for s, rs in chains.items()}
    planted = dict(heads)
    floors = frozenset(forged_floors) | ({FLOOR} if skip_at is not None else frozenset())
    rows = [(s, r) for s, rs in chains.items() for r in rs]
    for what, x in tamper:
        i = x % len(rows)
        s, r = rows[i]
        if what == "event":
            rows[i] = (s, r._replace(event=r.event[:-1] + bytes([r.event[-1] ^ 1])))
        elif what == "link":
            rows[i] = (s, r._replace(link=hashlib.sha256(r.link).digest()))
        elif what == "delete":
            del rows[i]
        elif what == "duplicate":
            rows.append((s, r._replace(row_id=10**7 + x)))
        elif what == "renumber":
            rows[i] = (s, r._replace(record_no=(r.record_no or 0) + 1 + x % 5))
        elif what == "unnumber":
            rows[i] = (s, r._replace(record_no=None))
        elif what == "swap":
            j = (i + 1 + x % (len(rows) - 1)) % len(rows) if len(rows) > 1 else i
            if j == i or alibi.as_scale(rows[j][1].event, s) == r.event:
                continue
            (t, q) = rows[j]  # the content swapped, each row keeping its scale_id
            rows[i], rows[j] = (s, r._replace(event=alibi.as_scale(q.event, s))), (t, q._replace(
                event=alibi.as_scale(r.event, t)))
        elif what == "move":
            to = s % scales + 1 if scales > 1 else 99  # a row's encoding follows its scale_id column
            rows[i] = (to if to in chains else s, r._replace(event=alibi.as_scale(r.event, to)))
        elif what == "head":
            heads[s] = (max(0, heads[s][0] - 1 - x % 3), heads[s][1])
        if not rows:
            break
    touched = [t for t in tamper] != [] and (rows != [(s, r) for s, rs in chains.items() for r in rs]
                                             or heads != planted)
    rng.shuffle(rows)  # rows come in pieces in any order: a record's day can follow its successors'
    checks = {s: alibi.ChainCheck(s, None, heads[s], floors) for s in chains}
    for p in range(pieces):
        piece = rows[p::pieces]
        for s in checks:
            checks[s].feed([r for t, r in piece if t == s])
    found = alibi.resolve(checks.values())
    assert bool(found) == touched, (tamper, found)

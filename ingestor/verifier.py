"""``ingestor alibi verify|show`` (issue 15): the chains recomputed from the stored rows, the seals checked.

:func:`verify` reads, in one REPEATABLE READ snapshot, each day of
``weighing_logs`` (ordered by scale and record number, streamed), every
scale's head (``ingestor_claims``), where retention left each chain
(``ingestor_alibi_starts``) and the seals (``ingestor_seals``, and the local
seal file when given). It reports exactly which records were changed,
deleted, inserted, reordered or cut off (:class:`ingestor.alibi.ChainCheck`),
which seals are forged, which seals of the file the database lost, and which
scale's chain no longer holds a link a seal signed
(:func:`ingestor.alibi.verify_heads`: a chain rewritten consistently after
the seal). For each scale the greatest sealed record is checked: the links
between carry the seal back to every earlier record.

A time range (``since``/``until``, by ``created_at``) checks the links inside
it; the first record of each scale in the range is taken as stored (its
predecessor is not read), and records missing after the range's end are not
"truncated".

With ``archive=True`` the days retention dropped are read back from their
Parquet archives (``ingestor_archives``, format 2 carries record_no and
link) before the days PostgreSQL holds, and every chain is checked from its
first record.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import msgspec
import psycopg

from . import alibi, seals
from .alibi import Finding, Record
from .protocol import DATA_FIELDS
from .schema import set_search_path

_REGULAR = ("({c} IS NULL OR (jsonb_typeof({c}->'val') = 'string' AND {c} - 'val' = '{{}}'::jsonb "
            "AND octet_length({c}->>'val') <= 64))")
# measured_at and created_at as µs since 1970; a data field that is not {"val": text} marks the row irregular
# (it cannot be the event as received: the canonical encoding has no room for it)
_COLUMNS = ("scale_id, id, record_no, link, seq, (extract(epoch FROM measured_at) * 1000000)::bigint, "
            "(extract(epoch FROM created_at) * 1000000)::bigint, "
            + ", ".join(f"{c}->>'val'" for c in DATA_FIELDS) + ", NOT (" + " AND ".join(
                _REGULAR.format(c=c) for c in DATA_FIELDS) + ")")
ROWS_SQL = (f"SELECT {_COLUMNS} FROM weighing_logs WHERE created_at >= %(lo)s AND created_at < %(hi)s "
            "AND (%(scale)s::int IS NULL OR scale_id = %(scale)s) ORDER BY scale_id, record_no, id")
FETCH_ROWS = 20_000


class Report(NamedTuple):
    """What :func:`verify` found."""

    records: int  #: chained records checked
    scales: int
    seals: int  #: seals whose signature was checked and holds
    seals_checked: bool  #: False without a public key: seals were not checked
    findings: list[Finding]


def verify(dsn: str, schema: str, *, scale: int | None = None, since: dt.datetime | None = None,
           until: dt.datetime | None = None, public_keys: Iterable = (), seal_file: str | os.PathLike | None = None,
           archive: bool = False, endpoint: str = "") -> Report:
    """Verify the chains of every scale (or ``scale``) over the rows with ``since <= created_at < until``.

    ``public_keys``: Ed25519 public keys (:func:`ingestor.seals.load_public`)
    whose seals count; none: seals are not checked. ``archive``: also the
    dropped days' archives (``endpoint``: the S3-compatible store's URL).
    Raises psycopg.Error from PostgreSQL, OSError when ``seal_file`` or an
    archive cannot be read.
    """
    public_keys = list(public_keys)
    findings: list[Finding] = []
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        heads = {s: (no, bytes(link)) for s, no, link in conn.execute(
            "SELECT scale_id, record_no, link FROM ingestor_claims WHERE record_no IS NOT NULL")}
        starts = {s: (no + 1, bytes(link)) for s, no, link in conn.execute(
            "SELECT scale_id, record_no, link FROM ingestor_alibi_starts")}
        stored_seals = [(i, text) for i, text in conn.execute("SELECT id, seal FROM ingestor_seals ORDER BY id")]
        sealed, genuine = {}, 0
        if public_keys:
            sealed, genuine, seal_findings = _check_seals(stored_seals, seal_file, public_keys, until)
            findings += seal_findings
        checks: dict[int, alibi.ChainCheck] = {}
        held: dict[int, bytes] = {}  # each scale's greatest sealed record's stored link, once read
        if archive:
            starts = {}  # from the first record: the dropped days are read back
        pieces = itertools.chain(_archived(conn, endpoint, since, until, scale) if archive else (),
                                 (_stored(conn, lo, hi, scale) for lo, hi in _days(conn, since, until)))
        for piece in pieces:  # one at a time: a day of PostgreSQL streamed, an archive's row group
            for scale_id, group in itertools.groupby(piece, key=lambda r: r[0]):
                records = _records(list(group))
                check = checks.get(scale_id)
                if check is None:
                    start = (1, None) if since is not None else starts.get(scale_id)
                    check = checks[scale_id] = alibi.ChainCheck(scale_id, start)
                findings += check.feed(records)
                if scale_id in sealed:
                    wanted = sealed[scale_id][0]
                    held.update((scale_id, r.link) for r in records if r.record_no == wanted)
        conn.rollback()
    for scale_id in (heads if scale is None else [scale] if scale in heads else []):
        check = checks.get(scale_id) or alibi.ChainCheck(scale_id, starts.get(scale_id))
        if until is None:
            findings += check.finish(heads[scale_id][0])
    findings += _sealed_heads(sealed, held, starts, checks, scale, since is not None)
    scales = len(set(checks) | (set(heads) if scale is None else {scale} & set(heads)))
    return Report(sum(c.records for c in checks.values()), scales, genuine, bool(public_keys),
                  sorted(findings, key=_order))


def _stored(conn: psycopg.Connection, lo: dt.datetime, hi: dt.datetime, scale: int | None) -> Iterator[tuple]:
    """The rows of PostgreSQL with ``lo <= created_at < hi``, as ROWS_SQL gives them, streamed."""
    with conn.cursor(name="alibi_rows") as rows:
        rows.itersize = FETCH_ROWS
        rows.execute(ROWS_SQL, {"lo": lo, "hi": hi, "scale": scale})
        yield from rows


def _archived(conn: psycopg.Connection, endpoint: str, since: dt.datetime | None, until: dt.datetime | None,
              scale: int | None) -> Iterator[Iterator[tuple]]:
    """Each dropped day's archive, oldest first, as rows shaped like ROWS_SQL's (per row group: whole scales)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .archive import Target

    dropped = conn.execute(
        "SELECT location FROM ingestor_archives a WHERE NOT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c "
        "ON c.oid = i.inhrelid WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname = a.partition) "
        "ORDER BY day").fetchall()
    for (location,) in dropped:
        target, name = Target.of_location(location, endpoint)
        with target.fs.open_input_file(target.path(name)) as f:
            parquet = pq.ParquetFile(f)
            if "record_no" not in parquet.schema_arrow.names:
                continue  # format 1: written before the chain existed
            for i in range(parquet.num_row_groups):
                table = parquet.read_row_group(i)
                keep = pc.scalar(True)
                if scale is not None:
                    keep = pc.and_(keep, pc.equal(table["scale_id"], scale))
                if since is not None:
                    keep = pc.and_(keep, pc.greater_equal(table["created_at"], since))
                if until is not None:
                    keep = pc.and_(keep, pc.less(table["created_at"], until))
                table = table.filter(keep).sort_by([("scale_id", "ascending"), ("record_no", "ascending"),
                                                    ("id", "ascending")])
                yield _archive_rows(table)


def _archive_rows(table) -> Iterator[tuple]:
    import pyarrow as pa

    us = {c: table[c].cast(pa.int64()).to_pylist() for c in ("measured_at", "created_at")}
    columns = {c: table[c].to_pylist() for c in ("scale_id", "id", "record_no", "link", "seq", *DATA_FIELDS)}
    for i in range(table.num_rows):
        link = columns["link"][i]
        vals = [columns[c][i] for c in DATA_FIELDS]
        yield (columns["scale_id"][i], columns["id"][i], columns["record_no"][i],
               None if link is None else bytes.fromhex(link), columns["seq"][i], us["measured_at"][i],
               us["created_at"][i], *vals, any(v is not None and len(v.encode()) > 64 for v in vals))


def _sealed_heads(sealed: dict[int, tuple[int, bytes]], held: dict[int, bytes], starts: dict,
                  checks: dict[int, alibi.ChainCheck], scale: int | None, ranged: bool) -> list[Finding]:
    """Each scale's greatest sealed record against its stored link (``held``: those read)."""
    findings = []
    for scale_id, (record_no, link) in sealed.items():
        if scale is not None and scale_id != scale:
            continue
        start = starts.get(scale_id, (1, None))[0]
        if record_no < start or (ranged and scale_id not in held
                                 and record_no < _first(checks.get(scale_id))):
            continue  # dropped by retention, or before the range: not ours to check
        records = [Record(record_no, 0, held[scale_id], b"")] if scale_id in held else []
        findings += alibi.verify_heads(scale_id, records, [(record_no, link)])
    return findings


def _first(check: alibi.ChainCheck | None) -> int:
    return 0 if check is None else check.expected - check.records


def _order(f: Finding) -> tuple:
    return (f.scale_id is not None, f.scale_id or 0, f.records)


def _records(rows: list[tuple]) -> list[Record]:
    # an irregular row is encoded without its fields (its event is b"" below: it is a change whatever it holds)
    encoded = alibi.canonical_from_rows([(r[0], r[4], r[5], r[6], *((None,) * 5 if r[12] else r[7:12])) for r in rows])
    return [Record(r[2], r[1], None if r[3] is None else bytes(r[3]), b"" if r[12] else encoded.event(i))
            for i, r in enumerate(rows)]


def _days(conn: psycopg.Connection, since: dt.datetime | None, until: dt.datetime | None) -> list[tuple]:
    """The UTC days to read, oldest first: those of the day partitions and of the default partition's rows."""
    days = [dt.datetime.strptime(name[len("weighing_logs_p"):], "%Y%m%d").date() for (name,) in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname ~ '^weighing_logs_p[0-9]{8}$'")]
    lo, hi = conn.execute("SELECT min(created_at), max(created_at) FROM weighing_logs_default").fetchone()
    if lo is not None:
        days += [lo.astimezone(dt.timezone.utc).date(), hi.astimezone(dt.timezone.utc).date()]
    if not days:
        return []
    first, last = min(days), max(days)
    windows = []
    for n in range((last - first).days + 1):
        start = dt.datetime.combine(first + dt.timedelta(days=n), dt.time(), dt.timezone.utc)
        end = start + dt.timedelta(days=1)
        start, end = max(start, since) if since else start, min(end, until) if until else end
        if start < end:
            windows.append((start, end))
    return windows


def _check_seals(stored: list[tuple[int, str]], seal_file: str | os.PathLike | None, public_keys: list,
                 until: dt.datetime | None) -> tuple[dict[int, tuple[int, bytes]], int, list[Finding]]:
    """Each scale's greatest sealed head among the genuine seals (before ``until``), their count, and findings:
    forged seals, and seals of the file that the database lost."""
    findings = []
    by_key = {seals.key_id(k): k for k in public_keys}
    in_db = set()
    candidates: list[tuple[str, seals.Seal]] = []
    for seal_id, text in stored:
        in_db.add(text)
        try:
            candidates.append((f"seal {seal_id} in the database", msgspec.json.decode(text, type=seals.Seal)))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            findings.append(Finding(None, "forged", (seal_id,), f"seal {seal_id} in the database is not a seal ({e})"))
    if seal_file is not None and Path(seal_file).exists():
        for n, seal in enumerate(seals.read(seal_file), 1):
            if msgspec.json.encode(seal).decode() not in in_db:
                candidates.append((f"seal {n} of {seal_file}", seal))
                findings.append(Finding(None, "unrecorded", (n,), f"seal {n} of {seal_file} ({seal.sealed_at}) is "
                                                                  "missing from the database"))
    sealed: dict[int, tuple[int, bytes]] = {}
    genuine = 0
    for where, seal in candidates:
        key = by_key.get(seal.key_id)
        if key is None or not seals.is_genuine(seal, key):
            why = "signed by no key given" if key is None else "its signature does not hold"
            findings.append(Finding(None, "forged", (), f"{where} ({seal.sealed_at}): {why}"))
            continue
        genuine += 1
        if until is not None and dt.datetime.fromisoformat(seal.sealed_at) >= until:
            continue
        for head in seal.heads:
            if head.record_no > sealed.get(head.scale_id, (0, b""))[0]:
                sealed[head.scale_id] = (head.record_no, bytes.fromhex(head.link))
    return sealed, genuine, findings


# -- one record, for a receipt ---------------------------------------------------------------------

SHOW_SQL = (f"SELECT {_COLUMNS}, measured_at, created_at, data_1, data_2, data_3, data_4, data_5 "
            "FROM weighing_logs WHERE scale_id = %s AND record_no = ANY(%s) ORDER BY record_no, id")


class Shown(NamedTuple):
    """One record as stored, with its chain position (:func:`show`)."""

    row: dict  #: the stored columns
    verdict: str  #: what its link says
    sealed_by: str | None  #: the first seal covering it (its time), None when none does yet


def show(dsn: str, schema: str, scale: int, record_no: int) -> Shown | None:
    """Record ``record_no`` of ``scale``'s chain as stored, with the check of its link against its predecessor's,
    and the first seal whose head for the scale is at or past it; None when no such record is stored."""
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows = conn.execute(SHOW_SQL, (scale, [record_no - 1, record_no])).fetchall()
        start = conn.execute("SELECT record_no, link FROM ingestor_alibi_starts WHERE scale_id = %s",
                             (scale,)).fetchone()
        stored_seals = [text for (text,) in conn.execute("SELECT seal FROM ingestor_seals ORDER BY id")]
    mine = [r for r in rows if r[2] == record_no]
    if not mine:
        return None
    r = mine[0]
    records = _records([x[:13] for x in rows])
    this = next(x for x in records if x.record_no == record_no)
    if record_no == 1:
        prev = alibi.genesis(scale)
    elif start is not None and start[0] == record_no - 1:
        prev = bytes(start[1])
    else:
        prev = next((x.link for x in records if x.record_no == record_no - 1), None)
    if prev is None:
        verdict = f"cannot be checked: record {record_no - 1}, its predecessor, is not stored"
    elif alibi.verify_chain(scale, [this], start=(record_no, prev)):
        verdict = "CHANGED: it differs from what was linked"
    else:
        verdict = "intact: its link holds against its predecessor's"
    sealed_by = None
    for text in stored_seals:
        seal = msgspec.json.decode(text, type=seals.Seal)
        if any(h.scale_id == scale and h.record_no >= record_no for h in seal.heads):
            sealed_by = f"{seal.sealed_at} (key {seal.key_id}, instance {seal.instance})"
            break
    row = {"scale_id": scale, "record_no": record_no, "row_id": r[1], "seq": r[4],
           "measured_at": r[13].isoformat(), "created_at": r[14].isoformat(),
           **{c: v for c, v in zip(DATA_FIELDS, r[15:20])}, "link": None if r[3] is None else bytes(r[3]).hex()}
    return Shown(row, verdict, sealed_by)

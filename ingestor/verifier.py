"""``ingestor alibi verify|show`` (issue 15, hardened in issue 26): the chains recomputed from the stored rows.

:func:`verify` reads, in one REPEATABLE READ snapshot, the rows of
``weighing_logs`` one day at a time (each day partition, and each day that
rows of the default partition fall on: the cost follows the rows that exist,
not the calendar), ordered by scale and record number and streamed; every
scale's head (``ingestor_claims``), where retention left each chain
(``ingestor_alibi_starts``) and the seals (``ingestor_seals``, and the seal
file when given). It names exactly which records were changed, deleted,
inserted, reordered, moved or cut off (:class:`ingestor.alibi.ChainCheck`,
:func:`ingestor.alibi.resolve`), where a head disagrees with its chain, which
seals are forged, which seals of the file the database lost and which of the
database the file lacks, and which scale's chain no longer holds a link a
seal signed (a chain rewritten consistently after the seal). Each tampered
record is named by one finding; a row that cannot be an event as received
(a data field not ``{"val": text}``, a time out of range) is a changed
record, never an error.

A time range (``since``/``until``, by ``created_at``) checks the links inside
it; the first record of each scale in the range is taken as stored (its
predecessor is not read), and records missing after the range's end are not
"truncated".

With ``archive=True`` the days retention dropped are read back from their
Parquet archives (``ingestor_archives``, format 2 carries record_no and
link) before the days PostgreSQL holds, and every chain is checked from its
first record. An archive that cannot be read is a finding; the chains go on
from the first record after it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import psycopg
from psycopg import sql

from . import alibi, seals
from .alibi import Finding, Record
from .errors import VerifyError
from .protocol import DATA_FIELDS
from .schema import regular_field, set_search_path

# µs since 1970 as int64, NULL for a time that cannot be one (±infinity, or past year 290,000)
_US = "CASE WHEN isfinite({c}) AND {c} < '290000-01-01 00:00+00' THEN (extract(epoch FROM {c}) * 1000000)::bigint END"
# a row that cannot be the event as received (a data field not {"val": text}, a time out of range) is flagged:
# its encoding is b"" and it is a changed record whatever it holds
_COLUMNS = ("scale_id, id, record_no, link, seq, " + _US.format(c="measured_at") + ", " + _US.format(c="created_at")
            + ", " + ", ".join(f"{c}->>'val'" for c in DATA_FIELDS)
            + ", NOT (" + " AND ".join(regular_field(c) for c in DATA_FIELDS) + ")")
FETCH_ROWS = 20_000
_DAY_PARTITION = re.compile(r"^weighing_logs_p([0-9]{8})$")
_EPOCH_DAY = dt.date(1970, 1, 1)  # partitions are ordered by day number, counted from here


class Skip(NamedTuple):
    """A skip of record numbers the service recorded after finding committed events missing at start, or after a
    killed run (``ingestor_alibi_skips``; docs/alibi.md#after-a-restore), and what the chains say of it."""

    floor: int  #: every chain continues at floor + 1 (or later) after it
    skipped_at: str  #: RFC 3339
    instance: str
    lost: int  #: committed events the service found missing (0: a killed run, none found)
    chains: int  #: chains read that jump to floor + 1, linked across the jump
    seals_lost: int  #: seals of the seal file the database lost with them (sealed before the skip)


class Report(NamedTuple):
    """What :func:`verify` found."""

    records: int  #: chained records checked
    scales: int
    seals: int  #: seals whose signature was checked and holds
    seals_checked: bool  #: False without a public key: seals were not checked
    findings: list[Finding]
    skips: tuple[Skip, ...] = ()  #: every skip recorded, oldest first: not findings


def verify(dsn: str, schema: str, *, scale: int | None = None, since: dt.datetime | None = None,
           until: dt.datetime | None = None, public_keys: Iterable = (), seal_file: str | os.PathLike | None = None,
           archive: bool = False, endpoint: str = "") -> Report:
    """Verify the chains of every scale (or ``scale``) over the rows with ``since <= created_at < until``.

    ``public_keys``: Ed25519 public keys (:func:`ingestor.seals.load_public`)
    whose seals count; none: signatures are not checked. ``seal_file``: the
    service's seal file, reconciled with the database's seals. ``archive``:
    also the dropped days' archives (``endpoint``: the S3-compatible store's
    URL). Raises VerifyError when ``seal_file`` cannot be read (missing, a
    directory, unreadable), psycopg.Error from PostgreSQL.
    """
    public_keys = list(public_keys)
    file_seals = _read_seal_file(seal_file) if seal_file is not None else None
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL TimeZone TO 'UTC'")
        heads = {s: (no, None if link is None else bytes(link)) for s, no, link in conn.execute(
            "SELECT scale_id, record_no, link FROM ingestor_claims WHERE record_no IS NOT NULL")}
        starts = {s: (no + 1, bytes(link)) for s, no, link in conn.execute(
            "SELECT scale_id, record_no, link FROM ingestor_alibi_starts")}
        stored_seals = conn.execute("SELECT id, instance, to_json(sealed_at) #>> '{}', key_id, seal "
                                    "FROM ingestor_seals ORDER BY id").fetchall()
        skips = conn.execute("SELECT floor, to_json(skipped_at) #>> '{}', instance, lost FROM ingestor_alibi_skips "
                             "ORDER BY floor").fetchall()
        pins: set[tuple[int, int, bytes]] = set()  # genuine seals' heads on a skip's floor
        sealed, genuine, findings = _check_seals(stored_seals, seal_file, file_seals, public_keys, until,
                                                 ({f for f, *_ in skips}, pins))
        findings, seals_lost = _lost_seals(findings, stored_seals, file_seals, skips)
        chains = _Chains(heads, {} if archive else starts, sealed, since is not None,  # archive: from record 1
                         frozenset(f for f, *_ in skips))
        for piece in itertools.chain(_archived(conn, endpoint, since, until, scale, chains.unreadable)
                                     if archive else (), _stored(conn, since, until, scale)):
            chains.feed(piece)  # one at a time: a day of PostgreSQL streamed, an archive's row group
        conn.rollback()
    for scale_id in (heads if scale is None else [scale] if scale in heads else []):
        chains.check_of(scale_id)  # a scale none of whose records was read: truncated, unless a range
    for check in chains.checks.values():
        if until is not None:
            check.head = None  # the rows read end before the chain's end
    findings += chains.findings + alibi.resolve(chains.checks.values())
    findings += _sealed_heads(sealed, chains.held, chains.starts, chains.checks, scale, since is not None, findings)
    scales = len(set(chains.checks) | (set(heads) if scale is None else {scale} & set(heads)))
    if public_keys:
        findings += _unsealed_jumps(chains.checks.values(), pins)
    jumps = [last for c in chains.checks.values() for _, last, _ in c.skipped]
    told = tuple(Skip(floor, at, instance, lost, jumps.count(floor), seals_lost.get(floor, 0))
                 for floor, at, instance, lost in skips)
    return Report(sum(c.records for c in chains.checks.values()), scales, genuine, bool(public_keys),
                  sorted(findings, key=_order), told)


class _Chains:
    """Every scale's :class:`ingestor.alibi.ChainCheck` as the pieces come, and each scale's greatest sealed
    record's stored links (``held``; a second row under that number is named apart)."""

    def __init__(self, heads: dict, starts: dict, sealed: dict[int, tuple[int, bytes]], ranged: bool,
                 floors: frozenset[int] = frozenset()) -> None:
        self.heads, self.starts, self.sealed, self.ranged, self.floors = heads, starts, sealed, ranged, floors
        self.checks: dict[int, alibi.ChainCheck] = {}
        self.held: dict[int, set] = {}
        self.findings: list[Finding] = []
        self._trust_next = False  # after an archive that cannot be read: each chain goes on from its next record

    def check_of(self, scale_id: int) -> alibi.ChainCheck:
        check = self.checks.get(scale_id)
        if check is None:
            start = (1, None) if self.ranged or self._trust_next else self.starts.get(scale_id)
            check = self.checks[scale_id] = alibi.ChainCheck(scale_id, start, self.heads.get(scale_id, (0, None)),
                                                                  self.floors)
        return check

    def unreadable(self, finding: Finding) -> None:
        """An archive could not be read: named once, and every chain taken up again at its next record."""
        self.findings.append(finding)
        self._trust_next = True
        for check in self.checks.values():
            check.prev = None

    def feed(self, piece: Iterable[tuple]) -> None:
        for scale_id, group in itertools.groupby(piece, key=lambda r: r[0]):
            records = _records(list(group))
            self.check_of(scale_id).feed(records)
            if scale_id in self.sealed:
                wanted = self.sealed[scale_id][0]
                links = [r.link for r in records if r.record_no == wanted]
                if links:
                    self.held.setdefault(scale_id, set()).update(links)


# -- the rows, a day at a time ---------------------------------------------------------------------

def _stored(conn: psycopg.Connection, since: dt.datetime | None, until: dt.datetime | None,
            scale: int | None) -> Iterator[Iterator[tuple]]:
    """The rows PostgreSQL holds, one day at a time, oldest first: each day partition, and each day that rows of
    another partition (the default) fall on, those out of every day's range (±infinity) last."""
    params = {"since": since, "until": until, "scale": scale}
    window = _window(since, until, scale)
    pieces: list[tuple[float, str, sql.Composable]] = []  # (day number, partition, its rows of that day)
    for (name,) in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                "WHERE i.inhparent = 'weighing_logs'::regclass"):
        day = _day_of(name)
        if day is not None:
            lo = dt.datetime.combine(day, dt.time(), dt.UTC)
            if (until is None or lo < until) and (since is None or lo + dt.timedelta(days=1) > since):
                pieces.append(((day - _EPOCH_DAY).days, name, window))
            continue
        days = sql.SQL("SELECT DISTINCT CASE WHEN isfinite(created_at) THEN "
                       "floor(extract(epoch FROM created_at) / 86400)::bigint END FROM {} WHERE {}").format(
            sql.Identifier(name), window)
        for (number,) in conn.execute(days, params):
            if number is None:
                pieces.append((math.inf, name, sql.SQL("NOT isfinite(created_at) AND {}").format(window)))
            else:
                pieces.append((number, name, sql.SQL(
                    "created_at >= to_timestamp({}) AND created_at < to_timestamp({}) AND {}").format(
                    sql.Literal(number * 86400), sql.Literal((number + 1) * 86400), window)))
    for _, name, where in sorted(pieces, key=lambda p: (p[0], p[1])):
        yield _rows(conn, sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY scale_id, record_no, id").format(
            sql.SQL(_COLUMNS), sql.Identifier(name), where), params)


def _day_of(partition: str) -> dt.date | None:
    match = _DAY_PARTITION.match(partition)
    try:
        return dt.datetime.strptime(match[1], "%Y%m%d").date() if match else None
    except ValueError:
        return None


def _window(since: dt.datetime | None, until: dt.datetime | None, scale: int | None) -> sql.Composable:
    parts = [sql.SQL("true")]
    if since is not None:
        parts.append(sql.SQL("created_at >= %(since)s"))
    if until is not None:
        parts.append(sql.SQL("created_at < %(until)s"))
    if scale is not None:
        parts.append(sql.SQL("scale_id = %(scale)s"))
    return sql.SQL(" AND ").join(parts)


def _rows(conn: psycopg.Connection, query: sql.Composed | sql.SQL, params: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="alibi_rows") as rows:
        rows.itersize = FETCH_ROWS
        rows.execute(query, params)
        yield from rows


def _archived(conn: psycopg.Connection, endpoint: str, since: dt.datetime | None, until: dt.datetime | None,
              scale: int | None, unreadable) -> Iterator[Iterator[tuple]]:
    """Each dropped day's archive, oldest first, as rows shaped like _COLUMNS' (per row group: whole scales).
    An archive that cannot be read is passed to ``unreadable`` as a finding."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .archive import Target

    dropped = conn.execute(
        "SELECT partition, location FROM ingestor_archives a WHERE NOT EXISTS (SELECT FROM pg_inherits i JOIN "
        "pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'weighing_logs'::regclass AND c.relname = a.partition) "
        "ORDER BY day").fetchall()
    for partition, location in dropped:
        try:
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
        except (OSError, pa.ArrowException, KeyError, ValueError) as e:
            unreadable(Finding(None, "archive", (), f"the archive of {partition} at {location} cannot be read "
                                                    f"({_reason(e)}): its records are not verified"))


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split())[:200] or type(e).__name__


def _archive_rows(table) -> Iterator[tuple]:
    import pyarrow as pa

    us = {c: table[c].cast(pa.int64()).to_pylist() for c in ("measured_at", "created_at")}
    columns = {c: table[c].to_pylist() for c in ("scale_id", "id", "record_no", "link", "seq", *DATA_FIELDS)}
    for i in range(table.num_rows):
        link = columns["link"][i]
        try:
            link = None if link is None else bytes.fromhex(link)
        except ValueError:
            link = b"?"  # not hex: a link no record can have
        vals = [columns[c][i] for c in DATA_FIELDS]
        yield (columns["scale_id"][i], columns["id"][i], columns["record_no"][i], link, columns["seq"][i],
               us["measured_at"][i], us["created_at"][i], *vals, False)


def _records(rows: list[tuple]) -> list[Record]:
    """Records of rows shaped like _COLUMNS'. A row that cannot be encoded (flagged irregular, a time out of range,
    a val over 64 bytes) gets the event b"": it is a changed record whatever it holds."""
    def fields(r: tuple) -> tuple:
        return (r[0], r[4], r[5], r[6], *r[7:12])

    regular = [r for r in rows if not r[12] and r[5] is not None and r[6] is not None]
    try:
        encoded = alibi.canonical_from_rows([fields(r) for r in regular])
        if len(regular) == len(rows):  # the common case: every row an event as received
            return [Record(r[2], r[1], None if r[3] is None else bytes(r[3]), encoded.event(i))
                    for i, r in enumerate(rows)]
        events = {id(r): encoded.event(i) for i, r in enumerate(regular)}
    except (ValueError, OverflowError, alibi.struct.error):
        events = {}
        for r in regular:
            try:
                events[id(r)] = alibi.canonical_from_rows([fields(r)]).event(0)
            except (ValueError, OverflowError, alibi.struct.error):
                pass
    return [Record(r[2], r[1], None if r[3] is None else bytes(r[3]), events.get(id(r), b"")) for r in rows]


# -- the seals --------------------------------------------------------------------------------------

def _read_seal_file(path: str | os.PathLike) -> list[tuple[int, seals.Seal | None]]:
    """(line number, the seal or None when the line is not one) of each line of the seal file; a torn last line
    (a crash mid-append) left out. Raises VerifyError when the file cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise VerifyError(f"seal file {os.fspath(path)!r}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    out: list[tuple[int, seals.Seal | None]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((number, msgspec.json.decode(line, type=seals.Seal)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            if number == len(lines):  # the last line without its newline: a torn append
                break
            out.append((number, None))
    return out


def _check_seals(stored: list[tuple], seal_file: str | os.PathLike | None,
                 file_seals: list[tuple[int, seals.Seal | None]] | None, public_keys: list,
                 until: dt.datetime | None, floors: tuple[set[int], set] = (set(), set())
                 ) -> tuple[dict[int, tuple[int, bytes]], int, list[Finding]]:
    """Each scale's greatest sealed head among the genuine seals (before ``until``), their count, and one finding
    per seal that is forged, altered, lost from the database (unrecorded) or missing from the file (unfiled).

    Seals are matched across the database and the file by (instance, sealed_at); signatures are checked only
    with ``public_keys``. ``floors``: (the skips' floors, a set to which each genuine head on one of them is
    added as (scale, record number, link)).
    """
    copies, findings = _copies(stored, seal_file, file_seals)
    by_key = {seals.key_id(k): k for k in public_keys}
    # a file holds its own instance's seals (two instances may share the database); a file holding none holds
    # none of any
    filed = {s.instance for _, s in file_seals or () if s is not None} or {k[0] for k in copies}
    sealed: dict[int, tuple[int, bytes]] = {}
    genuine = 0
    for (instance, _), entry in copies.items():
        finding, good = _judge(instance, entry, seal_file, file_seals is not None, instance in filed, by_key)
        findings += [finding] if finding is not None else []
        if len(good) != 1:
            continue  # none genuine, or two genuine versions that cannot be told apart: neither pins anything
        genuine += 1
        if until is not None and not _before(good[0].sealed_at, until):
            continue
        for head in good[0].heads:
            if head.record_no in floors[0]:
                try:
                    floors[1].add((head.scale_id, head.record_no, bytes.fromhex(head.link)))
                except ValueError:
                    pass
            if head.record_no > sealed.get(head.scale_id, (0, b""))[0]:
                try:
                    sealed[head.scale_id] = (head.record_no, bytes.fromhex(head.link))
                except ValueError:
                    pass
    return sealed, genuine, findings


def _copies(stored: list[tuple], seal_file: str | os.PathLike | None,
            file_seals: list[tuple[int, seals.Seal | None]] | None) -> tuple[dict, list[Finding]]:
    """Every seal's copies, keyed by (instance, sealed_at): ``{"db": [(id, seal, columns that differ from its
    signed text)], "file": [(line, seal)]}``; and a finding for each row or line that is not a seal."""
    findings: list[Finding] = []
    copies: dict[tuple[str, object], dict[str, list]] = {}
    unreadable: dict[tuple[str, object], list[tuple[int, str]]] = {}
    for seal_id, instance, sealed_at, key_id, text in stored:
        try:
            seal = msgspec.json.decode(text, type=seals.Seal)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            # keyed by its columns, so its copy in the file is named with it, not again as unrecorded
            unreadable.setdefault((instance, _moment(sealed_at)), []).append((seal_id, str(e)))
            continue
        columns = [name for name, column, signed in (("instance", instance, seal.instance),
                                                      ("key_id", key_id, seal.key_id)) if column != signed]
        columns += [] if _same_moment(sealed_at, seal.sealed_at) else ["sealed_at"]
        copies.setdefault((seal.instance, _moment(seal.sealed_at)), {"db": [], "file": []})["db"].append(
            (seal_id, seal, columns))
    for number, filed in file_seals or ():
        if filed is None:
            findings.append(Finding(None, "forged", (number,), f"line {number} of {seal_file} is not a seal"))
            continue
        copies.setdefault((filed.instance, _moment(filed.sealed_at)), {"db": [], "file": []})["file"].append(
            (number, filed))
    for key, rows in unreadable.items():
        twin = copies.pop(key, {"file": []})["file"] if not copies.get(key, {}).get("db") else []
        findings.append(Finding(None, "forged", tuple(i for i, _ in rows), "; ".join(
            f"seal {i} of the database is not a seal ({why})" for i, why in rows)
            + "".join(f"; line {n} of {seal_file} holds the seal it replaced" for n, _ in twin)))
    return copies, findings


def _judge(instance: str, entry: dict, seal_file: str | os.PathLike | None, file_given: bool, filed: bool,
           by_key: dict) -> tuple[Finding | None, list[seals.Seal]]:
    """One seal's finding (None when its copies agree, are where they belong, and, with keys, are genuine) and its
    genuine versions (with keys)."""
    in_db, in_file = entry["db"], entry["file"]
    sealed_at = in_db[0][1].sealed_at if in_db else in_file[0][1].sealed_at
    where = [f"seal {i} of the database" for i, _, _ in in_db] + [f"line {n} of {seal_file}" for n, _ in in_file]
    versions = {msgspec.json.encode(s) for _, s, _ in in_db} | {msgspec.json.encode(s) for _, s in in_file}
    kind, problems = ("forged", [f"{' and '.join(where)} differ"]) if len(versions) > 1 else (None, [])
    for i, _, columns in in_db:
        if columns:
            kind = "forged"
            problems.append(f"the {', '.join(columns)} column(s) of seal {i} differ from its signed text")
    good = []
    for version in versions if by_key else ():
        seal = msgspec.json.decode(version, type=seals.Seal)
        key = by_key.get(seal.key_id)
        if key is not None and seals.is_genuine(seal, key):
            good.append(seal)
        else:
            kind = "forged"
            problems.append("signed by no key given" if key is None else "its signature does not hold")
    if not in_db and file_given:
        kind = kind or "unrecorded"
        problems.append("missing from the database")
    if not in_file and file_given and filed:
        kind = kind or "unfiled"
        problems.append(f"missing from {seal_file}")
    numbers = tuple(i for i, _, _ in in_db) or tuple(n for n, _ in in_file)
    finding = None if kind is None else Finding(None, kind, numbers, f"{' and '.join(where)} ({instance}, "
                                                                      f"{sealed_at}): " + "; ".join(problems))
    return finding, good


def _moment(text: str | None) -> object:
    """A seal's time as a datetime to match copies by; the text itself when it is not one."""
    try:
        return dt.datetime.fromisoformat(text) if text is not None else None
    except ValueError:
        return text


def _same_moment(column: str | None, signed: str) -> bool:
    moment = _moment(column)
    return isinstance(moment, dt.datetime) and moment == _moment(signed)


def _before(sealed_at: str, until: dt.datetime) -> bool:
    moment = _moment(sealed_at)
    try:
        return isinstance(moment, dt.datetime) and moment < until
    except TypeError:  # a time without an offset cannot be compared with an aware one: not a genuine seal's
        return False


def _sealed_heads(sealed: dict[int, tuple[int, bytes]], held: dict[int, set], starts: dict,
                  checks: dict[int, alibi.ChainCheck], scale: int | None, ranged: bool,
                  findings: list[Finding]) -> list[Finding]:
    """Each scale's greatest sealed record against its stored link (``held``: those read); a record another
    finding names already is not named again."""
    named = {(f.scale_id, n) for f in findings if f.scale_id is not None and f.kind != "inserted" for n in f.records}
    out = []
    for scale_id, (record_no, link) in sealed.items():
        if scale is not None and scale_id != scale:
            continue
        start = starts.get(scale_id, (1, None))[0]
        check = checks.get(scale_id)
        first = check._first_read if check is not None and check._first_read is not None else 0
        if record_no < start or (ranged and scale_id not in held and record_no < first):
            continue  # dropped by retention, or before the range: not ours to check
        if (scale_id, record_no) in named:
            continue
        links = held.get(scale_id, set())
        records = [Record(record_no, 0, link if link in links else next(iter(links)), b"")] if links else []
        out += alibi.verify_heads(scale_id, records, [(record_no, link)])
    return out


def _unsealed_jumps(checks: Iterable[alibi.ChainCheck], pins: set[tuple[int, int, bytes]]) -> list[Finding]:
    """A jump to a skip's floor from a stored record is the service's only when a genuine seal signs the chain's
    head on that floor with that record's link (it seals right after a skip, before any writer goes on); otherwise
    the records before the jump may have been deleted and the skip written to hide it. A chain begun after a skip
    (a jump from its genesis) needs no seal: its first record links to the genesis."""
    out = []
    for check in checks:
        for first, last, before in check.skipped:
            if first == 1 and before == alibi.genesis(check.scale_id):
                continue
            if (check.scale_id, last, before) not in pins:
                out.append(Finding(check.scale_id, "skipped", _named_span(first, last), (
                    f"records {first}-{last} were skipped to a recorded floor, but no genuine seal signs the chain's "
                    f"head at record {last} with record {first - 1}'s link: records may have been deleted, and the "
                    "skip written to hide it")))
    return out


def _named_span(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1)) if last - first < alibi.MAX_NAMED else (first, last)


def _lost_seals(findings: list[Finding], stored: list[tuple], file_seals: list[tuple[int, seals.Seal | None]] | None,
                skips: list[tuple]) -> tuple[list[Finding], dict[int, int]]:
    """The findings without the seals a restore took from the database, and how many each skip explains.

    A seal of the file that the database lacks (``unrecorded``) is explained by a skip when it was sealed
    before the skip and after the newest seal of its instance the database holds from before the skip: the
    database lost its last seals with its last commits. Any other is still a finding.
    """
    if not skips or not file_seals:
        return findings, {}
    held = [(instance, _moment(at)) for _, instance, at, _, _ in stored]
    moments = sorted((_moment(at), floor) for floor, at, _, _ in skips)
    explained: dict[int, int] = {}
    kept = []
    lines = {n: seal for n, seal in file_seals if seal is not None}
    for f in findings:
        seal = lines.get(f.records[0]) if f.kind == "unrecorded" and len(f.records) == 1 else None
        floor = _skip_explaining(seal, held, moments) if seal is not None else None
        if floor is None:
            kept.append(f)
        else:
            explained[floor] = explained.get(floor, 0) + 1
    return kept, explained


def _skip_explaining(seal: seals.Seal, held: list[tuple[str, Any]], moments: list[tuple[Any, int]]) -> int | None:
    # Any: the moments are datetimes, or a forged copy's text; comparing those raises TypeError, caught below
    at: Any = _moment(seal.sealed_at)
    for skipped_at, floor in moments:
        try:
            if not at < skipped_at:
                continue
            before = [m for i, m in held if i == seal.instance and isinstance(m, dt.datetime) and m < skipped_at]
            return floor if not before or max(before) < at else None
        except TypeError:  # a time without an offset: not a genuine seal's
            return None
    return None


def _order(f: Finding) -> tuple:
    return (f.scale_id is not None, f.scale_id or 0, f.records)


def passed_over(dsn: str, schema: str, scale: int, record_no: int) -> tuple[int, str, int] | None:
    """The skip (floor, skipped_at, lost) whose jump passed over record ``record_no`` of ``scale``: its chain holds
    no record from ``record_no`` up to the floor, and goes on after it (or its head sits on it). None otherwise.
    Raises psycopg.Error from PostgreSQL."""
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        return conn.execute(
            "SELECT k.floor, to_json(k.skipped_at) #>> '{}', k.lost FROM ingestor_alibi_skips k "
            "WHERE k.floor >= %(no)s AND NOT EXISTS (SELECT FROM weighing_logs WHERE scale_id = %(scale)s "
            "AND record_no BETWEEN %(no)s AND k.floor) AND (EXISTS (SELECT FROM weighing_logs WHERE "
            "scale_id = %(scale)s AND record_no = k.floor + 1) OR EXISTS (SELECT FROM ingestor_claims "
            "WHERE scale_id = %(scale)s AND record_no = k.floor)) ORDER BY k.floor LIMIT 1",
            {"scale": scale, "no": record_no}).fetchone()


# -- one record, for a receipt ---------------------------------------------------------------------

SHOW_SQL = (f"SELECT {_COLUMNS}, to_json(measured_at) #>> '{{}}', to_json(created_at) #>> '{{}}', "
            "data_1, data_2, data_3, data_4, data_5 "
            "FROM weighing_logs WHERE scale_id = %s AND record_no BETWEEN %s AND %s ORDER BY record_no, id")


class Shown(NamedTuple):
    """One record as stored, with its chain position (:func:`show`)."""

    row: dict  #: the stored columns
    verdict: str  #: what its links say
    sealed_by: str | None  #: the seal covering it, and whether it was checked; None when none does yet
    intact: bool  #: its link holds, its successor's holds against it, and (keys given) a covering seal is genuine
    #: and pins it


def show(dsn: str, schema: str, scale: int, record_no: int, public_keys: Iterable = (),
         seal_file: str | os.PathLike | None = None) -> Shown | None:
    """Record ``record_no`` of ``scale``'s chain as stored, checked as an inspector needs it; None when no such
    record is stored.

    Its link is checked against its predecessor's, its successor's against
    it (a record rewritten with a link of its own breaks there), and, with
    ``public_keys``, the first genuine seal whose head for the scale is at or
    past it: every link from the record up to that head, and the head's
    stored link against the seal. Without keys the seal is named, marked
    unchecked. Raises VerifyError when ``seal_file`` cannot be read,
    psycopg.Error from PostgreSQL.
    """
    public_keys = list(public_keys)
    file_seals = _read_seal_file(seal_file) if seal_file is not None else None
    with psycopg.connect(dsn) as conn:
        set_search_path(conn, schema)
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SET LOCAL TimeZone TO 'UTC'")
        start = conn.execute("SELECT record_no, link FROM ingestor_alibi_starts WHERE scale_id = %s",
                             (scale,)).fetchone()
        stored_seals = conn.execute("SELECT id, instance, to_json(sealed_at) #>> '{}', key_id, seal "
                                    "FROM ingestor_seals ORDER BY id").fetchall()
        seal, seal_said = _covering_seal(stored_seals, file_seals, public_keys, scale, record_no)
        last = seal[0] if seal is not None else record_no + 1
        rows = conn.execute(SHOW_SQL, (scale, record_no - 1, max(last, record_no + 1))).fetchall()
        # the record after a skip links to the last record before it (docs/alibi.md#after-a-restore)
        across = conn.execute("SELECT (SELECT link FROM weighing_logs WHERE scale_id = %s AND record_no < %s "
                              "ORDER BY record_no DESC LIMIT 1) FROM ingestor_alibi_skips WHERE floor = %s",
                              (scale, record_no, record_no - 1)).fetchone()
        conn.rollback()
    mine = [r for r in rows if r[2] == record_no]
    if not mine:
        return None
    r = mine[0]
    if record_no == 1:
        prev = alibi.genesis(scale)
    elif start is not None and start[0] == record_no - 1:
        prev = bytes(start[1])
    elif across is not None:
        prev = alibi.genesis(scale) if across[0] is None else bytes(across[0])
    else:
        prev = None
    verdict, intact = _verdict(_records([x[:13] for x in rows]), r[1], scale, record_no, prev, seal)
    if seal_said is not None and seal_said.startswith("FORGED"):
        intact = False
    row = {"scale_id": scale, "record_no": record_no, "row_id": r[1], "seq": r[4], "measured_at": r[13],
           "created_at": r[14], **{c: v for c, v in zip(DATA_FIELDS, r[15:20])},
           "link": None if r[3] is None else bytes(r[3]).hex()}
    return Shown(row, verdict, seal_said, intact)


def _verdict(records: list[Record], row_id: int, scale: int, record_no: int, prev: bytes | None,
             seal: tuple[int, bytes] | None) -> tuple[str, bool]:
    """(what the links say of record ``record_no``, whether it is intact): its own link against ``prev`` (None:
    the stored predecessor's), its successor's against it, and up to the head ``seal`` signed, if any."""
    check = alibi.ChainCheck(scale, (record_no - 1, None) if prev is None else (record_no, prev))
    check.feed(records)
    found = [f for f in alibi.resolve([check]) if f.kind != "inserted" or row_id in f.records]
    if prev is None and not any(x.record_no == record_no - 1 for x in records):
        return f"cannot be checked: record {record_no - 1}, its predecessor, is not stored", False
    if found:
        return "CHANGED: " + "; ".join(f.detail for f in found), False
    nxt = next((x for x in records if x.record_no == record_no + 1), None)
    verdict = "intact: its link holds against its predecessor's" + (
        ", and its successor's against its own" if nxt is not None else " (it is the newest record)")
    if seal is None:
        return verdict, True
    sealed_no, sealed_link = seal
    stored = next((x.link for x in records if x.record_no == sealed_no), None)
    if stored != sealed_link:
        return (f"CHANGED: record {sealed_no}, the head the seal signed, "
                f"{'is gone' if stored is None else 'holds another link'}: rewritten since"), False
    return verdict + f"; every link up to record {sealed_no}, the head the seal signed, holds", True


def _covering_seal(stored: list[tuple], file_seals: list | None, public_keys: list, scale: int,
                   record_no: int) -> tuple[tuple[int, bytes] | None, str | None]:
    """(the head a genuine seal signed for ``scale`` at or past ``record_no``, to check the chain up to; what to say
    of the seal). The first such seal by sealed_at; without keys the first stored one, unchecked."""
    candidates = []
    for seal_id, _, _, _, text in stored:
        try:
            candidates.append((f"seal {seal_id} of the database", msgspec.json.decode(text, type=seals.Seal)))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
    candidates += [(f"line {n} of the seal file", s) for n, s in file_seals or () if s is not None]
    covering = sorted(((s.sealed_at, where, s, h) for where, s in candidates for h in s.heads
                       if h.scale_id == scale and h.record_no >= record_no), key=lambda c: (c[0], c[1]))
    if not covering:
        return None, None
    if not public_keys:
        sealed_at, where, s, _ = covering[0]
        return None, f"{sealed_at} (key {s.key_id}, instance {s.instance}; {where}): signature not checked " \
                     "(no --public-key)"
    by_key = {seals.key_id(k): k for k in public_keys}
    forged = []
    for sealed_at, where, s, h in covering:
        key = by_key.get(s.key_id)
        if key is not None and seals.is_genuine(s, key):
            try:
                link = bytes.fromhex(h.link)
            except ValueError:
                continue
            said = f"{sealed_at} (key {s.key_id}, instance {s.instance}; {where}): signature holds"
            return (h.record_no, link), said
        forged.append(f"{where} ({sealed_at}): " + ("signed by no key given" if key is None
                                                    else "its signature does NOT hold"))
    return None, "FORGED: " + "; ".join(forged)

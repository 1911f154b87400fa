"""The Parquet archive of day partitions (docs/operations.md#the-archive-of-old-days).

One day partition of ``weighing_logs`` becomes one Parquet file,
``<target>/<partition>.parquet``, in four steps, each with a defined outcome
when it fails:

1. **Read** (one REPEATABLE READ snapshot): the partition's row count and
   checksum (:data:`CHECKSUM_PG`), then its rows by ``COPY … TO STDOUT``,
   ordered by (scale_id, measured_at, seq).
2. **Write** them to ``.<partition>.parquet.tmp`` beside the final name (the
   leading dot hides it from pyarrow's and DuckDB's directory reads): zstd,
   typed columns (the data fields as their ``val`` strings, timestamps as
   UTC timestamps in µs), one row group per scale's day or per several small
   scales (at least :data:`ROW_GROUP_ROWS` rows), so a per-scale query
   reads one row group.
3. **Verify**: read the temporary file back from the target and recompute
   count and checksum (:data:`CHECKSUM_ARROW`, the same formula in DuckDB).
   Any difference: ArchiveError, the temporary file removed.
4. **Move** it to the final name, then record it in ``ingestor_archives``
   (migration 009). Retention with an archive target drops only recorded
   partitions (:func:`ingestor.partitions.retire`).

A failure at any step leaves the partition in PostgreSQL and no file under
the final name that is not verified; at worst a ``.tmp`` file, overwritten by
the next attempt. Targets: a local (or mounted) directory, or
``s3://bucket/prefix`` through pyarrow's S3 filesystem, credentials from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, or the AWS
SDK's other sources), never from the configuration.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import psycopg

from .errors import ArchiveError, ConfigError
from .failpoints import failpoint
from .schema import one, regular_field, row

log = logging.getLogger(__name__)

ROW_GROUP_ROWS = 65_536  # a row group ends at the first scale boundary past this many rows
MAX_ROW_GROUP_ROWS = 1_048_576  # … or here, inside one very busy scale's day
CSV_BLOCK_BYTES = 8 << 20  # pyarrow reads the COPY stream in blocks of this size
ZSTD_LEVEL = 3  # bench/archive_size.py: level 9 saves ~4 % more for 3× the CPU
FORMAT_VERSION = 2  # of the key-value metadata "scale_ingestor" in each file; 2 added record_no and link
METADATA_KEY = b"scale_ingestor"
S3_CONNECT_TIMEOUT_S, S3_REQUEST_TIMEOUT_S = 10.0, 120.0

COLUMNS = ("id", "scale_id", "seq", "measured_at", "created_at", "data_1", "data_2", "data_3", "data_4", "data_5",
           "record_no", "link")
DATA = COLUMNS[5:10]
CHAIN = COLUMNS[10:]  # the alibi chain's (migration 010; NULL with it off): format 1 files lack them

# The checksum of a partition: the sum of a 60-bit number per row, the first 15
# hex digits of the MD5 of the row's canonical text
#   id|scale_id|seq|measured_at µs since 1970|created_at µs|data_1|…|data_5[|record_no|link as hex]
# with each data field written as <bytes of val>:<val>, or "-" when NULL; record_no
# and link only when not NULL (concat_ws leaves NULLs out), so a format 1 file's
# checksum is unchanged.
# Order-free, so PostgreSQL and DuckDB may read the rows in any order; any
# changed, missing or extra row changes it (but for a chance of 2^-60).
# NULL for a time that is no int64 of µs (±infinity): such a row is refused (_PG_IRREGULAR) before it matters
_PG_US = "CASE WHEN isfinite({c}) AND {c} < '290000-01-01 00:00+00' THEN (extract(epoch FROM {c}) * 1000000)::bigint END"
_PG_FIELD = "coalesce(octet_length({c}->>'val') || ':' || ({c}->>'val'), '-')"
_PG_CANON = "concat_ws('|', id, scale_id, seq, {}, {}, {}, record_no, encode(link, 'hex'))".format(
    _PG_US.format(c="measured_at"), _PG_US.format(c="created_at"), ", ".join(_PG_FIELD.format(c=c) for c in DATA))
# A data field survives the archive only as {"val": "<text>"} (docs/PROTOCOL.md §8); others refuse it.
# Any other shape (another key, a val that is not a string, '{}', an array, a scalar) is refused, never turned into
# NULL; so is a time the columns cannot hold (±infinity, past year 290,000).
_PG_IRREGULAR = " OR ".join([f"NOT {regular_field(c)}" for c in DATA] + [
    f"NOT (isfinite({c}) AND {c} < '290000-01-01 00:00+00')" for c in ("measured_at", "created_at")])
CHECKSUM_PG = (f"SELECT count(*), coalesce(sum(('x' || left(md5({_PG_CANON}), 15))::bit(60)::bigint), 0), "
               f"min(id) FILTER (WHERE {_PG_IRREGULAR}) "
               "FROM weighing_logs WHERE created_at >= %(lo)s AND created_at < %(hi)s")
_DUCK_FIELD = "coalesce(strlen({c})::varchar || ':' || {c}, '-')"
_DUCK_CANON = "concat_ws('|', id, scale_id, seq, epoch_us(measured_at), epoch_us(created_at), {}, record_no, link)".format(
    ", ".join(_DUCK_FIELD.format(c=c) for c in DATA))
CHECKSUM_ARROW = (f"SELECT count(*), coalesce(sum(('0x' || left(md5({_DUCK_CANON}), 15))::BIGINT), 0) "
                  "FROM batches")
ROWS_SELECT = "SELECT id, scale_id, seq, {}, {}, {}, record_no, encode(link, 'hex') FROM weighing_logs".format(
    _PG_US.format(c="measured_at"), _PG_US.format(c="created_at"), ", ".join(f"{c}->>'val'" for c in DATA))
ROWS_COPY = (f"COPY ({ROWS_SELECT} WHERE created_at >= %(lo)s AND created_at < %(hi)s "
             "ORDER BY scale_id, measured_at, seq) TO STDOUT (FORMAT csv)")


def arrow_schema():
    """The archive's columns: int64/int32 ids, ``timestamp[us, tz=UTC]`` times, UTF-8 ``val`` strings (nullable),
    the alibi chain's ``record_no`` (int64) and ``link`` (64 hex digits), NULL where the chain was off."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema([
        pa.field("id", pa.int64(), nullable=False), pa.field("scale_id", pa.int32(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False), pa.field("measured_at", ts, nullable=False),
        pa.field("created_at", ts, nullable=False), *(pa.field(c, pa.string()) for c in DATA),
        pa.field("record_no", pa.int64()), pa.field("link", pa.string())])


def masked(uri: str) -> str:
    """``uri`` with any user and password of its authority shown as ``***`` (error messages reach the journal)."""
    parsed = urllib.parse.urlsplit(uri)
    if "@" not in parsed.netloc:
        return uri
    return urllib.parse.urlunsplit(parsed._replace(netloc="***@" + parsed.netloc.rsplit("@", 1)[1]))


def check_endpoint(endpoint: str) -> dict:
    """pyarrow's S3 options for an S3-compatible store's URL ``http(s)://HOST[:PORT]``; ConfigError naming it (its
    credentials masked) otherwise."""
    ep = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    if ep.scheme not in ("http", "https") or not ep.hostname or "@" in ep.netloc or ep.path.strip("/") or ep.query:
        raise ConfigError(f"archive endpoint {masked(endpoint)!r}: expected http(s)://HOST[:PORT], credentials "
                          "in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    return {"endpoint_override": ep.netloc, "scheme": ep.scheme}


class Target:
    """Where archives go: a directory (local or mounted), or ``s3://bucket/prefix``.

    ``endpoint``: an S3-compatible store's URL (``http://minio.plant:9000``),
    overriding AWS's; empty for AWS itself. Raises ConfigError for a URI
    carrying credentials or options (they belong in the environment).
    """

    def __init__(self, uri: str, endpoint: str = "") -> None:
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        parsed = urllib.parse.urlsplit(self.uri)
        if parsed.scheme == "s3":
            if "@" in parsed.netloc or parsed.query:
                raise ConfigError(f"archive target {masked(uri)!r}: credentials and options do not go in the URI; "
                                  "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment")
            if not parsed.netloc:
                raise ConfigError(f"archive target {uri!r}: no bucket (s3://BUCKET/PREFIX)")
            options: dict = {"connect_timeout": S3_CONNECT_TIMEOUT_S, "request_timeout": S3_REQUEST_TIMEOUT_S}
            if endpoint:
                options.update(check_endpoint(endpoint))
            self.fs = pafs.S3FileSystem(**options)
            self.base = (parsed.netloc + parsed.path).rstrip("/")
            self.local = False
        elif parsed.scheme in ("", "file"):
            self.base = str(Path(parsed.path if parsed.scheme else self.uri).resolve())
            self.uri = self.base
            self.fs = pafs.LocalFileSystem()
            self.local = True
        else:
            raise ConfigError(f"archive target {uri!r}: expected a directory or s3://BUCKET/PREFIX")

    def check(self) -> None:
        """ConfigError when a local target cannot be a directory (it, or a folder above it, is a file); nothing is
        made. An S3 target is checked by its first write."""
        if not self.local:
            return
        for path in (Path(self.base), *Path(self.base).parents):
            if path.exists():
                if not path.is_dir():
                    raise ConfigError(f"archive target {self.uri!r}: {path} is a file, not a directory")
                return

    @classmethod
    def of_location(cls, location: str, endpoint: str = "") -> tuple[Target, str]:
        """(target, file name) of a location recorded in ``ingestor_archives``."""
        directory, name = location.rsplit("/", 1)
        return cls(directory, endpoint), name

    def path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def location(self, name: str) -> str:
        """The URI of file ``name`` as recorded in ``ingestor_archives``."""
        return f"{self.uri}/{name}"

    def size(self, name: str) -> int | None:
        """Bytes of file ``name``, None when there is none. OSError when the target cannot be asked."""
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(name))
        return None if info.type == pafs.FileType.NotFound else info.size

    def __repr__(self) -> str:
        return f"Target({self.uri!r})"


class Archived(NamedTuple):
    """One verified archive of a day partition."""

    partition: str
    location: str
    rows: int
    checksum: int
    file_bytes: int
    table_bytes: int  #: the partition and its indexes in PostgreSQL
    seconds: float


def file_name(partition: str) -> str:
    return f"{partition}.parquet"


def temporary_name(partition: str) -> str:
    return f".{partition}.parquet.tmp"


def archive_partition(conn: psycopg.Connection, target: Target, partition: str, day: dt.date) -> Archived:
    """Archive the day partition ``partition`` (of UTC day ``day``) into ``target``; see the module's steps.

    ``conn``: an autocommit connection with the ingestor's schema
    on its search_path. Raises ArchiveError when a data field is not
    ``{"val": text}``, when verification fails, or when the final name holds
    a different file not recorded as this partition's archive; OSError when
    the target cannot be written or read; psycopg.Error from PostgreSQL.
    In every case the partition stays and no final file is left unverified.
    """
    started = time.monotonic()
    lo = dt.datetime.combine(day, dt.time(), dt.UTC)
    bounds = {"lo": lo, "hi": lo + dt.timedelta(days=1)}
    name = file_name(partition)
    tmp = temporary_name(partition)
    moving: str | None = tmp  # the temporary file to verify and move; None when only the record is missing
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        rows, checksum, irregular = row(conn.execute(CHECKSUM_PG, bounds))
        rows, checksum = int(rows), int(checksum)
        if irregular is not None:
            raise ArchiveError(f"{partition}: row id {irregular} has a data field that is not {{\"val\": text}} "
                               "or a time out of range; the archive's columns could not hold it: not archived")
        table_bytes = one(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (partition,)))
        if _already_archived(conn, target, partition, name, rows, checksum):
            moving = None  # the final name holds exactly these rows: only the record is missing
        else:
            meta = {"format": FORMAT_VERSION, "partition": partition, "day": day.isoformat(), "rows": rows,
                    "checksum": str(checksum)}
            try:
                with conn.cursor().copy(ROWS_COPY, bounds) as copy:
                    _write(target, tmp, arrow_batches(copy), meta)
            except BaseException:
                _remove_quietly(target, tmp)
                raise
    if moving is not None:
        _verify_and_move(target, partition, moving, name, rows, checksum)
    file_bytes = target.size(name) or 0
    failpoint("archive.record", conn)
    conn.execute(
        "INSERT INTO ingestor_archives (partition, day, location, rows, checksum, file_bytes, table_bytes) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (partition) DO UPDATE SET location = EXCLUDED.location, "
        "rows = EXCLUDED.rows, checksum = EXCLUDED.checksum, file_bytes = EXCLUDED.file_bytes, "
        "table_bytes = EXCLUDED.table_bytes, verified_at = now()",
        (partition, day, target.location(name), rows, checksum, file_bytes, table_bytes))
    done = Archived(partition, target.location(name), rows, checksum, file_bytes, table_bytes,
                    round(time.monotonic() - started, 2))
    log.info("Archived %s: %d rows, %d bytes in PostgreSQL, %d bytes of Parquet at %s (verified, %.1f s)",
             partition, rows, table_bytes, file_bytes, done.location, done.seconds)
    return done


def _verify_and_move(target: Target, partition: str, tmp: str, name: str, rows: int, checksum: int) -> None:
    """Step 3 and 4: read ``tmp`` back, compare, move it to ``name``; on any failure ``tmp`` is removed."""
    try:
        got_rows, got_checksum = verify(target, tmp)
        if (got_rows, got_checksum) != (rows, checksum):
            raise ArchiveError(f"{partition}: the file read back from {target.location(tmp)} holds {got_rows} "
                               f"rows, checksum {got_checksum}; PostgreSQL {rows} rows, checksum {checksum}: "
                               "not archived")
        failpoint("archive.move")
        target.fs.move(target.path(tmp), target.path(name))
        if target.local:
            _fsync_directory(target.base)
    except BaseException:
        _remove_quietly(target, tmp)
        raise


class _CopyReader(io.RawIOBase):
    """A readable file over the chunks of a psycopg COPY TO STDOUT, for pyarrow's CSV reader."""

    def __init__(self, chunks: Iterator[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def arrow_batches(copy: psycopg.Copy) -> Iterator:
    """Record batches of :func:`arrow_schema` from a ``COPY (ROWS_SELECT …) TO STDOUT (FORMAT csv)``.

    PostgreSQL's CSV writes NULL unquoted and empty and quoted (``""``), so
    a NULL data field and an empty ``val`` stay apart (PostgreSQL docs, COPY, "CSV Format").
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    chunks = iter(copy)
    first = next(chunks, None)
    if first is None:  # no rows: pyarrow refuses an empty CSV
        return
    schema = arrow_schema()
    types = {c: (pa.int64() if f.type == pa.timestamp("us", tz="UTC") else f.type) for c, f in zip(COLUMNS, schema)}
    reader = pacsv.open_csv(
        io.BufferedReader(_CopyReader(itertools.chain([first], chunks)), CSV_BLOCK_BYTES),
        read_options=pacsv.ReadOptions(column_names=list(COLUMNS), block_size=CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                             quoted_strings_can_be_null=False, null_values=[""]))
    for batch in reader:
        columns = [col if f.type == col.type else col.view(f.type) for col, f in zip(batch.columns, schema)]
        yield pa.record_batch(columns, schema=schema)


def _row_groups(batches: Iterable) -> Iterator:
    """Tables of whole scales' rows (input ordered by scale_id): each at least ROW_GROUP_ROWS rows, ending where
    a scale ends, or MAX_ROW_GROUP_ROWS rows of one scale; the last one whatever is left."""
    import numpy as np
    import pyarrow as pa

    pending = None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        pending = table if pending is None else pa.concat_tables([pending, table])
        while pending.num_rows > ROW_GROUP_ROWS:
            scales = pending.column("scale_id").to_numpy()
            starts = np.flatnonzero(scales[ROW_GROUP_ROWS:] != scales[ROW_GROUP_ROWS - 1:-1])
            if len(starts):
                cut = ROW_GROUP_ROWS + int(starts[0])
            elif pending.num_rows >= MAX_ROW_GROUP_ROWS:
                cut = MAX_ROW_GROUP_ROWS
            else:
                break
            yield pending.slice(0, cut).combine_chunks()
            pending = pending.slice(cut)
    if pending is not None and pending.num_rows:
        yield pending.combine_chunks()


def _write(target: Target, tmp: str, batches: Iterable, meta: dict) -> None:
    """Write the Parquet file ``tmp`` (fsync'd when local); OSError from the target."""
    import pyarrow.parquet as pq

    schema = arrow_schema().with_metadata({METADATA_KEY: json.dumps(meta).encode()})
    if target.local:
        os.makedirs(target.base, exist_ok=True)
    with target.fs.open_output_stream(target.path(tmp)) as sink:
        with pq.ParquetWriter(sink, schema, compression="zstd", compression_level=ZSTD_LEVEL,
                              write_statistics=True) as writer:
            for group in _row_groups(batches):
                failpoint("archive.write")
                writer.write_table(group.replace_schema_metadata(schema.metadata), row_group_size=group.num_rows)
    if target.local:  # the archive must be on disk before retention may drop the partition
        fd = os.open(target.path(tmp), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verify(target: Target, name: str) -> tuple[int, int]:
    """(rows, checksum) of the Parquet file ``name`` as read back from ``target`` (CHECKSUM_ARROW).

    Raises OSError when it cannot be read, ArchiveError when it is not an
    archive of this format.
    """
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    failpoint("archive.verify")
    schema = arrow_schema()
    with target.fs.open_input_file(target.path(name)) as f:
        parquet = pq.ParquetFile(f)
        found = parquet.schema_arrow.remove_metadata()
        if found.equals(schema):
            batches = parquet.iter_batches(batch_size=ROW_GROUP_ROWS)
        elif found.equals(pa.schema(list(schema)[:len(COLUMNS) - len(CHAIN)])):  # format 1: no chain columns
            batches = (pa.record_batch(b.columns + [pa.nulls(b.num_rows, schema.field(c).type) for c in CHAIN],
                                       schema=schema) for b in parquet.iter_batches(batch_size=ROW_GROUP_ROWS))
        else:
            raise ArchiveError(f"{target.location(name)} is not an archive of weighing_logs (columns differ)")
        con = duckdb.connect()
        try:
            con.execute("SET threads = 1")  # beside the writers on a small box; bench/archive_size.py times it
            con.register("batches", pa.RecordBatchReader.from_batches(schema, batches))
            found = con.execute(CHECKSUM_ARROW).fetchone()
        finally:
            con.close()
    if found is None:  # an aggregate always gives a row
        raise ArchiveError("DuckDB returned no checksum row")
    return int(found[0]), int(found[1])


def file_metadata(target: Target, name: str) -> dict:
    """The "scale_ingestor" key-value metadata of archive ``name`` ({} when it has none)."""
    import pyarrow.parquet as pq

    with target.fs.open_input_file(target.path(name)) as f:
        kv = pq.read_metadata(f).metadata or {}
    return json.loads(kv[METADATA_KEY]) if METADATA_KEY in kv else {}


def _already_archived(conn: psycopg.Connection, target: Target, partition: str, name: str,
                      rows: int, checksum: int) -> bool:
    """Whether the final name already holds a verified archive of exactly these rows (an earlier run that stopped
    before recording it); False when it holds nothing, or this partition's recorded older archive (replaced).

    Raises ArchiveError when it holds anything else (another plant's archive
    under the same prefix, say): that is never overwritten.
    """
    if target.size(name) is None:
        return False
    if verify(target, name) == (rows, checksum):
        return True
    recorded = conn.execute("SELECT location, checksum FROM ingestor_archives WHERE partition = %s",
                            (partition,)).fetchone()
    meta = file_metadata(target, name)
    if recorded and recorded[0] == target.location(name) and meta.get("checksum") == str(int(recorded[1])):
        return False
    raise ArchiveError(f"{target.location(name)} already exists and is not an archive of {partition} as this database "
                       f"holds or recorded it (its metadata: {meta or 'none'}): not overwritten; give each plant its "
                       "own --archive-to prefix, or move the file away")


def _remove_quietly(target: Target, name: str) -> None:
    try:
        target.fs.delete_file(target.path(name))
    except (OSError, FileNotFoundError):
        pass  # not written yet, or the target is gone: the next attempt overwrites it


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

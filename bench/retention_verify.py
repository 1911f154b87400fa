"""What retention's read-back of an archive costs before it drops a day (issue 26), local and S3.

    python bench/retention_verify.py --rows 5000000

One past day partition of ROWS bench-plant rows (300 scales, two data
fields, record numbers and links) is made with SQL in a throwaway server,
archived to a local directory and to a local S3-compatible server (moto),
then ``partitions.retire`` drops it from a copy of the database for each
target, timed: the size check alone (what retention did before) against
the size check plus the read-back of rows and checksum (what it does now).
A plant day (300 events/s) is 25.9 million rows: the figures scale with the
rows (the read-back is DuckDB over the file, one thread). Results go to
bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compare import machine, save_results  # noqa: E402
from throughput import ROOT, fresh_db, throwaway_server  # noqa: E402

from ingestor import archive, partitions  # noqa: E402
from ingestor.schema import set_search_path  # noqa: E402

PLANT_DAY = 25_920_000


def fill(dsn: str, day: dt.date, rows: int) -> str:
    name = f"weighing_logs_p{day:%Y%m%d}"
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE {name} PARTITION OF weighing_logs FOR VALUES FROM ('{start.isoformat()}') "
                  f"TO ('{(start + dt.timedelta(days=1)).isoformat()}')")
        c.execute(f"""INSERT INTO weighing_logs (scale_id, seq, measured_at, created_at, data_1, data_2, record_no, link)
            SELECT i % 300 + 1, i / 300, t, t + interval '3 ms', jsonb_build_object('val', round((i % 9973) * 0.01, 2)::text),
                   '{{"val": "kg"}}', i / 300 + 1, sha256(i::text::bytea)
            FROM generate_series(0, {rows - 1}) i, LATERAL (SELECT '{start.isoformat()}'::timestamptz
                 + (i * 86400.0 / {rows}) * interval '1 s' AS t) x""")
        c.execute(f"VACUUM ANALYZE {name}")
    return name


def moto() -> tuple[subprocess.Popen, str]:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    import pyarrow.fs as pafs

    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir("bench")
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = p.parse_args()
    workdir, server = throwaway_server("retention")
    proc, endpoint = moto()
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=30)
    results: dict = {"rows": a.rows, "machine": machine(server), "targets": {}}
    lines = [f"# Retention's read-back before a drop, {a.rows:,} rows, {dt.date.today()}", "", results["machine"], "",
             "| target | archive s | size check s | read-back s | read-back rows/s | read-back of a plant day, s "
             "| retire s (size, read-back, drop) |", "|---|---:|---:|---:|---:|---:|---:|"]
    try:
        for label, uri, ep in (("local", str(workdir / "archive"), ""), ("S3 (moto)", "s3://bench/plant", endpoint)):
            dsn = fresh_db(server, f"retention_{label.split()[0].lower()}")
            name = fill(dsn, day, a.rows)
            target = archive.Target(uri, ep)
            t0 = time.perf_counter()
            done, errors = partitions.archive_before(dsn, "public", target, day + dt.timedelta(days=1))
            archived_s = time.perf_counter() - t0
            assert not errors and len(done) == 1, errors
            with psycopg.connect(dsn, autocommit=True) as c:
                set_search_path(c, "public")
                loc, size, rows, checksum = c.execute("SELECT location, file_bytes, rows, checksum FROM "
                                                      "ingestor_archives").fetchone()
            t0 = time.perf_counter()
            assert target.size(archive.file_name(name)) == size  # what retention checked before
            size_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            assert archive.verify(target, archive.file_name(name)) == (rows, int(checksum))  # the read-back alone
            verify_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            retired = partitions.retire(dsn, "public", day + dt.timedelta(days=1), target)
            retire_s = time.perf_counter() - t0
            assert [p for p, _ in retired.dropped] == [name], retired
            results["targets"][label] = {"archive_s": archived_s, "size_check_s": size_s, "verify_s": verify_s,
                                         "retire_s": retire_s, "file_bytes": size}
            lines.append(f"| {label} | {archived_s:.1f} | {size_s:.3f} | {verify_s:.1f} | {rows / verify_s:,.0f} | "
                         f"{PLANT_DAY / (rows / verify_s):.0f} | {retire_s:.1f} |")
        save_results(a.out, f"retention-verify-{dt.date.today()}", results, lines)
    finally:
        proc.terminate()
        server.stop("immediate")
    return 0


if __name__ == "__main__":
    sys.exit(main())

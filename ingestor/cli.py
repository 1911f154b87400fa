"""The ``ingestor`` command (docs/operations.md#command-line): run, stats, top, migrate, rebuild-state,
partitions, history, dead-letters, alibi, central, keys, config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import msgspec

from . import __version__, deadletter, stats
from . import config as config_mod
from .child import setup_logging
from .errors import ConfigError, DatabaseError, IngestorError, StatsUnavailable

DEFAULT_STATS_ENDPOINT = config_mod.Config().stats_endpoint
T = TypeVar("T")
EXIT_CLOSED_PIPE = 141  # what a shell reports for a command its reader left (128 + SIGPIPE), quietly
DSN_OPTIONS = ("dsn", "edge_dsn", "central_dsn", "publisher_dsn")


class _Parser(argparse.ArgumentParser):
    """argparse with a refusal of one line (docs/operations.md#exit-codes): what is wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of ``ingestor run``; each defaults to None so only given flags override.

    No argparse ``type=``: every value is checked by config.load, whose one-line
    error names the option, the value and where it came from, for flags,
    environment and file alike (argparse would print the whole usage).
    """
    o = p.add_argument
    o("--config", metavar="FILE", help="TOML file with any of these options (keys as below, with _ for -)")
    o("--dsn", help="libpq connection string or URI; none anywhere: start an embedded PostgreSQL under --data-dir")
    o("--schema", help="database schema of the tables (default: public)")
    o("--instance", help="this service's name, unique among the ingestors writing one database: it keys their "
                         "recovery state and is in stats, /metrics and every log line (default: the host name)")
    o("--bind", help="PULL endpoint senders connect to (default: tcp://0.0.0.0:5555)")
    o("--ack-bind", help="ROUTER endpoint of acked mode (docs/PROTOCOL.md §5), or 'off' (default: tcp://0.0.0.0:5556)")
    o("--writers", help="writer processes, a number or 'auto' (default: auto = one per core, 2..8)")
    o("--batch-size", help="events per COPY batch at most (default: 5000)")
    o("--batch-timeout-ms", help="a writer starts at most one commit per this many ms unless its batch is full; "
                                 "no event waits longer for its commit to begin (default: 40)")
    o("--ring-capacity", help="slots in the shared-memory ring, all lanes together (default: 65536)")
    o("--max-frame-bytes", help="larger ZeroMQ frames are refused (default: 1048576)")
    o("--data-dir", help="state directory: embedded PostgreSQL, default dead-letter and spool dirs "
                         "(default: $STATE_DIRECTORY under systemd, else /var/lib/ingestor as root, ./ingestor-data)")
    o("--dead-letter-dir", help="JSON Lines files of invalid events (default: DATA_DIR/dead-letters)")
    o("--dead-letter-max-bytes", help="the dead-letter files' total size; the oldest go first "
                                                 "(default: 256 MiB)")
    o("--spool-dir", help="on-disk spool for when the ring is full (default: DATA_DIR/spool)")
    o("--spool-max-bytes", help="disk the spool may take; then the front stops reading (default: 1 GiB)")
    o("--stats-endpoint", help="ZeroMQ REP endpoint answering 'ingestor stats' (default: tcp://127.0.0.1:5557)")
    o("--partitions-ahead", help="days of weighing_logs partitions created ahead (default: 7)")
    o("--retention-days", help="drop day partitions older than this many days, hourly "
                                         "(default: 0 = keep everything)")
    o("--archive-to", metavar="TARGET", help="archive day partitions to Parquet here: a directory or s3://BUCKET/PREFIX; "
                                              "then --retention-days drops only verified archives (default: none)")
    o("--archive-after-days", help="archive each day partition once it is this many days old, hourly "
                                   "(default: 0 = only by 'ingestor partitions archive')")
    o("--archive-endpoint", help="URL of an S3-compatible store for --archive-to s3://… (default: AWS); credentials "
                                 "from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    o("--http-bind", help="HOST:PORT of /metrics, /health and ScaleHub's JSON monitoring endpoints, or 'off' "
                          "(default: 127.0.0.1:9108)")
    o("--stall-seconds", help="/health fails when nothing was committed this long while events "
                                          "are pending (default: 60)")
    o("--log-level", help="debug, info, warning or error (default: info)")
    o("--simulate-scales", help="also run a simulator of this many scales sending to --bind (default: 0)")
    o("--simulate-rate", help="simulated events per second, all scales together (default: 300)")
    o("--curve-secret-key", metavar="FILE", help="the service's CURVE key pair (a .key_secret file from "
                                                 "'ingestor keys generate'); with --curve-clients-dir: "
                                                 "CURVE on both input endpoints")
    o("--curve-clients-dir", metavar="DIR", help="directory of the allowed senders' public .key files; "
                                                 "other keys are refused and counted (refused_clients)")
    o("--alibi", metavar="true|false", help="link every stored event into its scale's alibi chain, for weighings "
                                            "legal for trade (docs/alibi.md; default: true)")
    o("--alibi-key", metavar="FILE", help="the Ed25519 secret key ('ingestor keys alibi') that signs seals of the "
                                          "chains' heads every --seal-interval-s and at each clean stop (default: no seals)")
    o("--seal-interval-s", help="seconds between seals (default: 300)")
    o("--seal-file", metavar="FILE", help="append-only file of the seals, beside their copy in the database "
                                          "(default: DATA_DIR/alibi-seals.jsonl)")
    o("--run-seconds", help="drain and exit after this many seconds (default: 0 = run until stopped)")
    o("--drain-seconds", help="a graceful stop writing longer than this keeps the rest in the spool "
                                          "(default: 60; keep systemd's TimeoutStopSec above it)")


def _add_database_options(p: argparse.ArgumentParser) -> None:
    """--dsn and --schema of the one-shot database commands; without a --dsn, the running service's database."""
    p.add_argument("--dsn", default=os.environ.get("INGESTOR_DSN"),
                   help="libpq connection string or URI of the database (default: $INGESTOR_DSN, else the database "
                        "of the service answering on --stats-endpoint); keep the password in a password file "
                        "(PGPASSFILE), not here")
    p.add_argument("--stats-endpoint", default=os.environ.get("INGESTOR_STATS_ENDPOINT", DEFAULT_STATS_ENDPOINT),
                   help="where to ask the running service for its database when no --dsn is given "
                        f"(default: $INGESTOR_STATS_ENDPOINT, else {DEFAULT_STATS_ENDPOINT})")
    p.set_defaults(find_dsn=True)
    p.add_argument("--schema", default=os.environ.get("INGESTOR_SCHEMA", "public"),
                   help="schema of the tables (default: $INGESTOR_SCHEMA, else public)")


def _endpoint(text: str) -> str:
    if text:
        from .archive import check_endpoint

        try:
            check_endpoint(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _add_endpoint_option(p: argparse.ArgumentParser) -> None:
    """--endpoint of the commands that read or write archives."""
    p.add_argument("--endpoint", type=_endpoint, default=os.environ.get("INGESTOR_ARCHIVE_ENDPOINT", ""),
                   help="URL of the S3-compatible store holding s3:// archives (default: $INGESTOR_ARCHIVE_ENDPOINT, "
                        "else AWS)")


def _add_partition_commands(sub: argparse._SubParsersAction) -> None:
    """``ingestor partitions archive|list`` (docs/operations.md#the-archive-of-old-days)."""
    pt = sub.add_parser("partitions", help="day partitions of weighing_logs")
    pt_sub = pt.add_subparsers(dest="action", required=True)
    ar = pt_sub.add_parser("archive", help="archive day partitions before DATE to Parquet, verified (drops nothing)",
                           description="Write each day partition wholly before DATE that has no archive yet to "
                                       "TARGET/<partition>.parquet, read it back, verify rows and checksum, and record "
                                       "it (docs/operations.md#the-archive-of-old-days). S3 credentials come from "
                                       "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).")
    ar.add_argument("--before", required=True, type=_date, help="YYYY-MM-DD: partitions of days before it")
    ar.add_argument("--to", required=True, metavar="TARGET", help="a directory, or s3://BUCKET/PREFIX")
    _add_endpoint_option(ar)
    _add_database_options(ar)
    vf = pt_sub.add_parser("verify", help="read every recorded archive back and check rows and checksum; exit 1 "
                                          "when one is missing or changed")
    _add_endpoint_option(vf)
    _add_database_options(vf)
    ls = pt_sub.add_parser("list", help="day partitions: rows, bytes in PostgreSQL, archived where and when")
    ls.add_argument("--count", action="store_true", help="count each partition's rows (else PostgreSQL's estimate, ~)")
    ls.add_argument("--json", action="store_true", help="one JSON object per partition")
    _add_database_options(ls)


def _add_alibi_commands(sub: argparse._SubParsersAction) -> None:
    """``ingestor alibi verify|show`` (docs/alibi.md)."""
    al = sub.add_parser("alibi", help="verify the alibi chains and seals; show one record for a receipt")
    al_sub = al.add_subparsers(dest="action", required=True)
    vf = al_sub.add_parser("verify", help="recompute every chain, check every seal; exit 0 verified, 1 when "
                                          "anything was changed, deleted, inserted, reordered, cut off or forged",
                           description="Recompute every scale's alibi chain from the stored rows and check every "
                                       "seal (docs/alibi.md#verifying). Prints each finding, or 'verified: N "
                                       "records, M seals'. Exit 0: verified; 1: findings; 2: could not verify.")
    vf.add_argument("--scale", type=int, help="only this scale_id")
    vf.add_argument("--since", type=_moment, help="only rows created at or after (YYYY-MM-DD or ISO 8601, UTC)")
    vf.add_argument("--until", type=_moment, help="only rows created before")
    vf.add_argument("--public-key", action="append", default=[], metavar="FILE",
                    help="an Ed25519 public key (NAME.ed25519.pub) whose seals count; repeat for older keys. "
                         "Without one the seals are not checked")
    vf.add_argument("--seal-file", metavar="FILE", help="the service's append-only seal file: its seals are "
                                                         "checked too, and each one the database lacks is reported")
    vf.add_argument("--archive", action="store_true", help="also the days retention dropped, read back from their "
                                                          "Parquet archives: every chain from its first record")
    _add_endpoint_option(vf)
    _add_database_options(vf)
    sh = al_sub.add_parser("show", help="one record as stored, with its chain position (the number on a receipt)")
    sh.add_argument("record", metavar="SCALE/RECORD", help="scale_id and record number, as printed on a receipt: 17/4711")
    sh.add_argument("--json", action="store_true", help="one JSON object")
    sh.add_argument("--public-key", action="append", default=[], metavar="FILE",
                    help="an Ed25519 public key whose seals count (repeatable): the first seal covering the record "
                         "is checked, and every link up to the head it signed. Without one the seal is not checked")
    sh.add_argument("--seal-file", metavar="FILE", help="the service's seal file: its seals count too")
    _add_database_options(sh)


def _add_key_commands(sub: argparse._SubParsersAction) -> None:
    """``ingestor keys generate|alibi``: CURVE pairs (docs/operations.md#security) and the alibi sealing pair."""
    ks = sub.add_parser("keys", help="CURVE key pairs for the service and its senders; the alibi sealing key")
    ks_sub = ks.add_subparsers(dest="action", required=True)
    gen = ks_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (mode 0600) into DIR")
    gen.add_argument("--dir", default="/etc/ingestor/curve" if os.geteuid() == 0 else "curve",
                     help="where to write (default: /etc/ingestor/curve as root, ./curve otherwise)")
    gen.add_argument("--name", default="server", help="file name without suffix (default: server)")
    al = ks_sub.add_parser("alibi", help="the Ed25519 sealing key pair of the alibi chains: NAME.ed25519 (secret, "
                                         "mode 0600) and NAME.ed25519.pub (for inspectors) in DIR")
    al.add_argument("--dir", default="/etc/ingestor/alibi" if os.geteuid() == 0 else "alibi",
                    help="where to write (default: /etc/ingestor/alibi as root, ./alibi otherwise)")
    al.add_argument("--name", default="alibi", help="file name without suffix (default: alibi)")


def _add_central_commands(sub: argparse._SubParsersAction) -> None:
    """``ingestor central setup|status`` (docs/operations.md#every-plant-into-one-central-database)."""
    ce = sub.add_parser("central", help="every plant into one central database (PostgreSQL logical replication)")
    ce_sub = ce.add_subparsers(dest="action", required=True)
    su = ce_sub.add_parser("setup", help="publish an edge's schema and subscribe to it on the central server "
                                         "(idempotent; run it daily: it also makes the central day partitions)")
    su.add_argument("--edge-dsn", required=True, help="the edge's database, as reached from here")
    su.add_argument("--central-dsn", required=True, help="the central database")
    su.add_argument("--publisher-dsn", help="the edge's database as the central server reaches it, with a password "
                                            "it can read (default: --edge-dsn)")
    su.add_argument("--schema", required=True, help="the edge's schema (its --schema), the same on the central server")
    cs = ce_sub.add_parser("status", help="the central copy's lag, read on the edge")
    cs.add_argument("--edge-dsn", required=True, help="the edge's database")
    cs.add_argument("--schema", required=True, help="the edge's schema")
    cs.add_argument("--central-dsn", help="also ask the central server: each table's state and the errors its "
                                          "subscription counted; exit 1 when it is failing")


def _add_dead_letter_commands(sub: argparse._SubParsersAction) -> None:
    """``ingestor dead-letters list|replay``."""
    dl = sub.add_parser("dead-letters", help="inspect or replay dead letters")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    ls = dl_sub.add_parser("list", help="counts by kind, with time range and an example reason")
    rp = dl_sub.add_parser("replay", help="re-submit (acked mode) the dead letters that are valid now; keep the rest")
    for p in (ls, rp):
        p.add_argument("--dead-letter-dir", help="default: from --config / INGESTOR_DEAD_LETTER_DIR / DATA_DIR/dead-letters")
        p.add_argument("--config", metavar="FILE")
    ls.add_argument("--json", action="store_true")
    rp.add_argument("--ack-endpoint", default="tcp://127.0.0.1:5556",
                    help="the service's acked-mode ROUTER endpoint (default: tcp://127.0.0.1:5556)")
    rp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answers (default: 30)")

    rp.add_argument("--curve-server-key", metavar="FILE", help="the service's public .key file, when CURVE is on")
    rp.add_argument("--curve-client-key", metavar="FILE", help="this client's .key_secret file, "
                                                                "its public half in the service's --curve-clients-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ingestor", description="Scale measurements from ZeroMQ into PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"scale-ingestor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the service")
    _add_run_options(run)

    st = sub.add_parser("stats", help="the running service's figures (docs/operations.md#stats)")
    st.add_argument("--stats-endpoint", default=os.environ.get("INGESTOR_STATS_ENDPOINT", DEFAULT_STATS_ENDPOINT),
                    help=f"the service's stats endpoint (default: $INGESTOR_STATS_ENDPOINT, else {DEFAULT_STATS_ENDPOINT})")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--histograms", action="store_true",
                    help="with --json: also the latency and batch histograms (which /metrics exports too)")
    st.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer (default: 2)")

    tp = sub.add_parser("top", help="live view of the running service (q or Ctrl-C quits)")
    tp.add_argument("--stats-endpoint", default=os.environ.get("INGESTOR_STATS_ENDPOINT", DEFAULT_STATS_ENDPOINT),
                    help=f"the service's stats endpoint (default: $INGESTOR_STATS_ENDPOINT, else {DEFAULT_STATS_ENDPOINT})")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")

    mg = sub.add_parser("migrate", help="create or upgrade the schema (idempotent)",
                        description="Apply the migrations of sql/ that the database lacks, each in its own "
                                    "transaction, and create the coming day partitions. Safe to run again.")
    _add_database_options(mg)

    rb = sub.add_parser("rebuild-state", help="recompute scale_current_states from weighing_logs")
    _add_database_options(rb)

    _add_partition_commands(sub)

    hs = sub.add_parser("history", help="one scale's measurements across the archive and PostgreSQL, as CSV",
                        description="Rows of one scale with SINCE <= measured_at < UNTIL: days still in PostgreSQL "
                                    "from it, days retention dropped from their Parquet archives "
                                    "(docs/operations.md#querying-the-archive). CSV with a header, or JSON lines.")
    hs.add_argument("--scale", required=True, type=int, help="the scale_id")
    hs.add_argument("--since", required=True, type=_moment, help="YYYY-MM-DD or an ISO 8601 time (UTC unless given)")
    hs.add_argument("--until", type=_moment, default=None, help="exclusive end, as --since (default: now)")
    hs.add_argument("--json", action="store_true", help="one JSON object per row instead of CSV")
    _add_endpoint_option(hs)
    _add_database_options(hs)

    _add_dead_letter_commands(sub)

    _add_alibi_commands(sub)

    _add_central_commands(sub)

    _add_key_commands(sub)

    cf = sub.add_parser("config", help="the effective configuration")
    cf_sub = cf.add_subparsers(dest="action", required=True)
    show = cf_sub.add_parser("show", help="print every option with where its value came from")
    _add_run_options(show)
    return parser


def _load_config(args: argparse.Namespace) -> tuple[config_mod.Config, dict[str, str]]:
    flags = {k: v for k, v in vars(args).items() if k in config_mod.FIELDS}
    return config_mod.load(flags, config_file=args.config)


def cmd_run(args: argparse.Namespace) -> int:
    config, sources = _load_config(args)
    config_mod.check_directories(config, sources)
    setup_logging(config.log_level, config.instance)
    for name in config_mod.unknown_environment():
        logging.getLogger("ingestor").warning("Ignoring %s: no such option (options: ingestor config show)", name)
    from .supervisor import Supervisor

    return Supervisor(config).run()


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        figures = stats.fetch(args.stats_endpoint, args.timeout)
    except StatsUnavailable as e:
        print(f"ingestor stats: {e}", file=sys.stderr)
        return 1
    if not args.json:
        print(stats.format_text(figures))
        return 0
    out = msgspec.to_builtins(figures)
    if not args.histograms:
        for name in stats.HISTOGRAMS:
            del out[name]
    print(json.dumps(out, indent=2))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from . import top

    return top.run(args.stats_endpoint, args.interval, args.once)


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import schema

    setup_logging("info")
    applied = _database(lambda: schema.migrate(args.dsn, args.schema))
    print(f"schema {args.schema!r} is up to date ({len(applied)} migration(s) applied now)")
    return 0


def _running_dsn(endpoint: str) -> str:
    """The database of the service answering on ``endpoint`` (as ``ingestor stats`` finds it); ConfigError when
    none answers or it has not reached its database yet."""
    try:
        dsn = stats.fetch(endpoint, 2.0).dsn
    except StatsUnavailable:
        raise ConfigError(f"no --dsn given, INGESTOR_DSN is not set, and no running ingestor answered on {endpoint} "
                          "to say its database") from None
    if not dsn:
        raise ConfigError(f"no --dsn given, and the ingestor on {endpoint} does not know its database yet (starting)")
    return dsn


def _database(call: Callable[[], T]) -> T:
    """Run a one-shot database command; a PostgreSQL error becomes one line and exit 2 (see main)."""
    import psycopg

    try:
        return call()
    except psycopg.Error as e:
        raise DatabaseError(f"PostgreSQL: {' '.join(str(e).split())}") from None


def _date(text: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid date {text!r}: expected YYYY-MM-DD") from None


def _moment(text: str):
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: expected YYYY-MM-DD or ISO 8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def cmd_history(args: argparse.Namespace) -> int:
    import datetime as dt

    from . import history

    setup_logging("warning")
    until = args.until or dt.datetime.now(dt.UTC)
    table = _database(lambda: history.history(args.dsn, args.schema, args.scale, args.since, until, args.endpoint))
    if args.json:
        for row in table.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))
    else:
        import pyarrow.csv as pacsv

        sys.stdout.flush()
        pacsv.write_csv(table, sys.stdout.buffer)
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    from . import archive, partitions

    setup_logging("info")
    if args.action == "list":
        states = _database(lambda: partitions.partitions(args.dsn, args.schema, args.count))
        if args.json:
            for p in states:
                print(json.dumps(p._asdict(), default=str))
        else:
            print(partitions.format_partitions(states))
        return 0
    if args.action == "verify":
        verdicts = _database(lambda: partitions.verify_archives(args.dsn, args.schema, args.endpoint))
        for v in verdicts:
            print(f"{v.partition}: {'ok' if v.ok else 'FAILED'}, {v.detail} ({v.location})")
        bad = sum(not v.ok for v in verdicts)
        print(f"verified {len(verdicts) - bad} of {len(verdicts)} archive(s)" + (f"; {bad} FAILED" if bad else ""))
        return 1 if bad else 0
    target = archive.Target(args.to, args.endpoint)
    target.check()
    done, errors = _database(lambda: partitions.archive_before(args.dsn, args.schema, target, args.before))
    for a in done:
        print(f"{a.location}: {a.rows} rows, {a.file_bytes} bytes (PostgreSQL: {a.table_bytes} bytes), verified")
    print(f"archived {len(done)} partition(s) before {args.before}" + (f"; {len(errors)} failed" if errors else ""))
    for e in errors:
        print(f"ingestor partitions archive: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_central(args: argparse.Namespace) -> int:
    from . import central

    setup_logging("info")
    if args.action == "setup":
        published, subscribed = _database(
            lambda: central.setup(args.edge_dsn, args.central_dsn, args.schema, args.publisher_dsn))
        name = central.name_of(args.schema)
        print(f"publication {name} on the edge: {'created' if published else 'already there'}; "
              f"subscription {name} on the central server: {'created' if subscribed else 'already there'}")
        return 0
    return _central_status(args)


def _central_status(args: argparse.Namespace) -> int:
    """``ingestor central status``: the edge's slot; with --central-dsn, the subscription's tables and errors."""
    from . import central

    state = _database(lambda: central.lag(args.edge_dsn, args.schema))
    if state is None:
        print(f"no replication slot {central.name_of(args.schema)} on the edge: run 'ingestor central setup' first",
              file=sys.stderr)
        return 1
    lag = "unknown yet" if state.lag_bytes is None else f"{state.lag_bytes} bytes of WAL"
    print(f"{state.slot}: {'streaming' if state.active else 'central server not connected'}, lag {lag}")
    if state.syncing_tables:
        print(f"{state.syncing_tables} table(s) of a central copy still in their initial copy (table-sync slots on "
              "the edge): one that stays is failing on the central server; see its log, or add --central-dsn")
    if not args.central_dsn:
        return 0
    sub = _database(lambda: central.subscription(args.central_dsn, args.schema))
    if sub is None:
        print(f"no subscription {central.name_of(args.schema)} on the central server: run 'ingestor central setup'",
              file=sys.stderr)
        return 1
    for t in sub.tables:
        print(f"{t.table}: {central.STATES.get(t.state, t.state)}")
    errors = "unknown (PostgreSQL before 15)" if sub.apply_errors is None else \
        f"{sub.apply_errors} applying changes, {sub.sync_errors} copying tables"
    print(f"subscription {'enabled' if sub.enabled else 'DISABLED'}; errors counted: {errors}")
    if sub.failing:
        print(f"ingestor central status: the central copy of {args.schema} is FAILING: its subscription counts errors "
              "(the central server's log names them)", file=sys.stderr)
        return 1
    return 0


def cmd_rebuild_state(args: argparse.Namespace) -> int:
    from . import schema

    setup_logging("info")
    rows = _database(lambda: schema.rebuild_state(args.dsn, args.schema))
    print(f"scale_current_states rebuilt from weighing_logs: {rows} scales")
    return 0


def _dead_letter_dir(args: argparse.Namespace) -> Path:
    if args.dead_letter_dir:
        directory, source = Path(args.dead_letter_dir), "--dead-letter-dir"
    else:
        config, sources = config_mod.load({}, config_file=args.config)
        directory, source = config.resolved_dead_letter_dir(), sources["dead_letter_dir"]
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"dead-letter directory {str(directory)!r} (from {source}) is a file, not a directory")
    return directory


def cmd_dead_letters(args: argparse.Namespace) -> int:
    directory = _dead_letter_dir(args)
    if args.action == "list":
        summary = deadletter.summarize(directory)
        if args.json:
            print(json.dumps(summary, indent=2))
        elif not summary:
            print(f"no dead letters in {directory}")
        else:
            print(f"dead letters in {directory}")
            print(f"{'count':>9}  {'kind':<22} first .. last (UTC)  example reason")
            for kind, s in summary.items():
                print(f"{s['count']:>9}  {kind:<22} {s['first']} .. {s['last']}  {s['example']}")
        return 0
    curve = None
    if args.curve_server_key or args.curve_client_key:
        if not (args.curve_server_key and args.curve_client_key):
            raise ConfigError("--curve-server-key and --curve-client-key go together")
        from . import security
        from .client import CurveKeys
        curve = CurveKeys(security.load_public_key(args.curve_server_key),
                          *security.load_secret_key(args.curve_client_key))
    from .replay import replay
    done = replay(directory, args.ack_endpoint, args.timeout, curve)
    print(f"re-submitted {done.answered} dead letter(s) to {args.ack_endpoint}, each answered; "
          f"kept {done.still_invalid} still invalid"
          + (f" and {done.unanswered} unanswered (is the service running?)" if done.unanswered else ""))
    return 1 if done.unanswered else 0


def cmd_alibi(args: argparse.Namespace) -> int:
    from . import seals, verifier

    if args.action == "show":
        scale, _, number = args.record.replace(":", "/").partition("/")
        if not (scale.lstrip("-").isdigit() and number.isdigit()):
            raise ConfigError(f"record {args.record!r}: expected SCALE/RECORD, as 17/4711")
        keys = [seals.load_public(path) for path in args.public_key]
        shown = _database(lambda: verifier.show(args.dsn, args.schema, int(scale), int(number), keys,
                                                args.seal_file))
        if shown is None:
            skip = _database(lambda: verifier.passed_over(args.dsn, args.schema, int(scale), int(number)))
            print(f"ingestor: no record {number} of scale {scale} is stored"
                  + ("" if skip is None else f"; its chain skipped records up to {skip[0]} at {skip[1]} after "
                     + (f"{skip[2]} committed events were found missing" if skip[2] else "a killed run")
                     + ": a receipt naming it names a weighing the database lost (docs/alibi.md#after-a-restore)"),
                  file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps({**shown.row, "verdict": shown.verdict, "sealed_by": shown.sealed_by,
                              "intact": shown.intact}))
        else:
            for key, value in shown.row.items():
                print(f"{key:12} {'NULL' if value is None else value}")
            print(f"{'link check':12} {shown.verdict}")
            print(f"{'sealed by':12} {shown.sealed_by or 'no seal yet'}")
        return 0 if shown.intact else 1
    keys = [seals.load_public(path) for path in args.public_key]
    report = _database(lambda: verifier.verify(args.dsn, args.schema, scale=args.scale, since=args.since,
                                               until=args.until, public_keys=keys, seal_file=args.seal_file,
                                               archive=args.archive, endpoint=args.endpoint))
    for f in report.findings:
        where = "seals" if f.scale_id is None else f"scale {f.scale_id}"
        print(f"{f.kind.upper()}: {where}: {f.detail}")
    for k in report.skips:
        print(f"SKIP: record numbers up to {k.floor} skipped at {k.skipped_at} by {k.instance} after "
              + (f"{k.lost} committed events were found missing" if k.lost else "a killed run")
              + f": {k.chains} chain(s) read continue past it, linked across; {k.seals_lost} seal(s) of the seal file "
              "lost with the database's last commits (docs/alibi.md#after-a-restore)")
    seals_said = f"{report.seals} seals" if report.seals_checked else "seals not checked (no --public-key)"
    if report.findings:
        print(f"NOT verified: {len(report.findings)} finding(s) in {report.records} records of {report.scales} "
              f"scale(s); {seals_said}")
        return 1
    print(f"verified: {report.records} records, {seals_said}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from . import seals, security

    generate_keys = seals.generate_keys if args.action == "alibi" else security.generate_keys
    try:
        public, secret = generate_keys(args.dir, args.name)
    except FileExistsError as e:
        print(f"ingestor: {e}", file=sys.stderr)
        return 1
    print(f"public key (give to the other side): {public}\n"
          f"secret key (keep here, mode 0600):   {secret}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config, sources = _load_config(args)
    print(config_mod.to_toml(config, sources))
    for name in config_mod.unknown_environment():
        print(f"# ignored: {name} names no option", file=sys.stderr)
    return 0


COMMANDS = {
    "run": cmd_run,
    "stats": cmd_stats,
    "top": cmd_top,
    "migrate": cmd_migrate,
    "rebuild-state": cmd_rebuild_state,
    "partitions": cmd_partitions,
    "history": cmd_history,
    "alibi": cmd_alibi,
    "central": cmd_central,
    "dead-letters": cmd_dead_letters,
    "keys": cmd_keys,
    "config": cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (docs/operations.md#exit-codes). A refusal is one line on stderr and 2; a
    reader that went away (``ingestor … | head``) ends the command quietly with 141."""
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "find_dsn", False) and not args.dsn:
            args.dsn = _running_dsn(args.stats_endpoint)
        for option in DSN_OPTIONS:  # malformed is refused before anything is done (a service would retry it)
            if getattr(args, option, None):
                config_mod.check_dsn(getattr(args, option), "--" + option.replace("_", "-"))
        code = COMMANDS[args.command](args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader is gone: what is left unprinted goes nowhere, and Python's flush at exit must not complain
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    except IngestorError as e:  # one line, exit 2 (docs/operations.md#exit-codes)
        print(f"ingestor: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written where a file or directory was named
        where = f"{e.filename}: " if e.filename else ""
        print(f"ingestor: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Builds the Grafana dashboard monitoring/grafana/dashboards/scale-ingestor.json with Grafana's own typed SDK.

The dashboard is never edited by hand: change a panel here, then run

    python monitoring/dashboard.py

(``pip install -e '.[test]'`` brings grafana-foundation-sdk, pinned to its Grafana 11.6 build).
tests/test_dashboard.py fails when the committed JSON differs from what this builds, and
tests/test_prometheus.py runs every query below against a real Prometheus scraping a real service.

Every query selects ``instance=~"$instance"``: the hidden variable ``instance`` holds the scrape
targets whose ``ingestor_info`` carries the chosen ``ingestor_instance`` names, so one dashboard
serves every edge box of a plant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as gm

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "scale-ingestor.json"
UID = "scale-ingestor"
SEL = 'instance=~"$instance"'
DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid="${datasource}")
WIDTH = 24


class Query(NamedTuple):
    expr: str
    legend: str


class PanelSpec(NamedTuple):
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str
    kind: str = "timeseries"  # or "stat"


def rate(counter: str, legend: str) -> Query:
    return Query(f"rate(ingestor_{counter}_total{{{SEL}}}[$__rate_interval])", f"{legend} {{{{instance}}}}")


def quantile(q: float, histogram: str, legend: str) -> Query:
    return Query(f"histogram_quantile({q}, sum by (instance, le) "
                 f"(rate(ingestor_{histogram}_bucket{{{SEL}}}[$__rate_interval])))", f"{legend} {{{{instance}}}}")


ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    ("Flow", (
        PanelSpec("Events per second", "short", (
            rate("received_events", "received"), rate("persisted", "persisted"), rate("duplicates", "duplicates"),
            rate("invalid", "invalid"), rate("failed", "failed")),
            "Received (valid or not), committed to weighing_logs, already stored, rejected as invalid, rejected by "
            "PostgreSQL. Invalid and failed events are dead-lettered."),
        PanelSpec("Lost events per second", "short", (
            rate("lost", "lost"), rate("lost_after_commit", "lost after commit")),
            "Accepted events kept nowhere, and committed events a failover took away. Anything above 0 is an "
            "incident: the log's ERROR lines name each event (alerts IngestorLostEvents, IngestorLostAfterCommit)."),
        PanelSpec("Pending events", "short", (
            Query(f"ingestor_pending_events{{{SEL}}}", "pending {{instance}}"),),
            "Accepted and not yet committed: in the ring, the spool or the front's hands."),
        PanelSpec("Ring fill", "percentunit", (
            Query(f"ingestor_ring_used_slots{{{SEL}}} / ingestor_ring_capacity_slots{{{SEL}}}", "ring {{instance}}"),),
            "Share of the shared-memory ring's slots holding events. At 100% the front spills to the spool."),
        PanelSpec("Spool", "bytes", (
            Query(f"ingestor_spool_bytes{{{SEL}}}", "spool bytes {{instance}}"),),
            "Disk the on-disk spool takes: events that waited for ring room or for the database (alert "
            "IngestorSpooling)."),
        PanelSpec("Spilled and replayed (events per second)", "short", (
            rate("spooled_events", "spilled to the spool"), rate("replayed_events", "replayed from the spool")),
            "Back-pressure episodes: events the front appended to the spool because the ring was full or the "
            "database away, and events an earlier run left in the spool."),
    )),
    ("Latency and batches", (
        PanelSpec("Receive-to-commit latency", "s", (
            quantile(0.5, "receive_to_commit_seconds", "p50"), quantile(0.99, "receive_to_commit_seconds", "p99")),
            "From a frame's receipt to the commit of its events."),
        PanelSpec("Batch size", "short", (
            quantile(0.5, "batch_size_events", "p50"), quantile(0.99, "batch_size_events", "p99")),
            "Events per committed batch."),
        PanelSpec("Batch duration", "s", (
            quantile(0.5, "batch_duration_seconds", "p50"), quantile(0.99, "batch_duration_seconds", "p99")),
            "Wall time of a committed batch: COPY and UPSERT in one transaction."),
    )),
    ("Processes and database", (
        PanelSpec("Database connected", "none", (
            Query(f"min by (instance) (ingestor_database_connected{{{SEL}}})", "{{instance}}"),),
            "1 while every live writer's last database operation succeeded (alert IngestorDatabaseUnreachable).",
            kind="stat"),
        PanelSpec("Writers alive", "short", (
            Query(f"sum by (instance) (ingestor_writer_alive{{{SEL}}})", "{{instance}}"),),
            "Writer processes alive now.", kind="stat"),
        PanelSpec("Writer restarts", "short", (
            Query(f"increase(ingestor_writer_restarts_total{{{SEL}}}[$__rate_interval])",
                  "writer {{writer}} {{instance}}"),),
            "Restarts of each writer by the supervisor: a crash, or a database error it could not ride out."),
        PanelSpec("Acked mode (messages per second)", "short", (
            rate("acked_messages", "received"), rate("ack_replies", "replied"), rate("ack_expired", "expired")),
            "Messages on the ROUTER endpoint, replies sent, and messages given up without a reply (the sender "
            "re-sends them)."),
    )),
    ("Dead letters", (
        PanelSpec("Dead letters (events per second)", "short", (
            Query(f"rate(ingestor_invalid_total{{{SEL}}}[$__rate_interval]) + "
                  f"rate(ingestor_failed_total{{{SEL}}}[$__rate_interval])", "written {{instance}}"),
            rate("dead_letter_errors", "could not be written"), rate("dead_letters_dropped", "deleted for room"),
            rate("refused_frames", "frames refused (too large)")),
            "Invalid and PostgreSQL-rejected events go to the dead-letter directory; failures to write them are "
            "logged whole."),
    )),
    ("Keeping: central copy, archive, seals", (
        PanelSpec("Central copy lag", "bytes", (
            Query(f"ingestor_central_lag_bytes{{{SEL}}}", "lag {{instance}}"),),
            "WAL bytes the central server has not confirmed (only where a central server subscribes)."),
        PanelSpec("Central copy stalled", "s", (
            Query(f"ingestor_central_stalled_seconds{{{SEL}}}", "stalled {{instance}}"),),
            "Seconds nothing was confirmed while WAL waited (alert IngestorCentralCopyStalled at 900 s)."),
        PanelSpec("Central tables in their first copy", "short", (
            Query(f"ingestor_central_syncing_tables{{{SEL}}}", "tables {{instance}}"),),
            "Tables of the central copy whose initial copy has not finished (alert IngestorCentralCopyNotSynced "
            "after an hour)."),
        PanelSpec("Archive and retention", "short", (
            Query(f"increase(ingestor_archived_partitions_total{{{SEL}}}[1d])", "archived in a day {{instance}}"),
            Query(f"increase(ingestor_archive_failures_total{{{SEL}}}[1d])", "archive failures in a day {{instance}}"),
            Query(f"ingestor_retention_refused_partitions{{{SEL}}}", "retention refused {{instance}}")),
            "Day partitions archived to Parquet and verified, failed attempts, and days retention refused to drop "
            "(no verified archive)."),
        PanelSpec("Seals", "short", (
            Query(f"increase(ingestor_seals_total{{{SEL}}}[1h])", "seals in an hour {{instance}}"),
            Query(f"increase(ingestor_seal_failures_total{{{SEL}}}[1h])", "seal failures in an hour {{instance}}")),
            "Signed seals of the alibi chains' heads stored (docs/alibi.md)."),
    )),
)


def panel(spec: PanelSpec, x: int, y: int, width: int) -> gd.Panel:
    builder = stat.Panel() if spec.kind == "stat" else timeseries.Panel().fill_opacity(10).line_width(1)
    builder = (builder.title(spec.title).description(spec.description).unit(spec.unit).datasource(DATASOURCE)
               .grid_pos(gm.GridPos(h=8, w=width, x=x, y=y)))
    for i, q in enumerate(spec.queries):
        builder = builder.with_target(prometheus.Dataquery().expr(q.expr).legend_format(q.legend)
                                      .ref_id(chr(ord("A") + i)).datasource(DATASOURCE))
    return builder


def variables() -> list:
    return [
        gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        gd.QueryVariable("ingestor_instance").label("Ingestor").datasource(DATASOURCE)
        .query("label_values(ingestor_info, ingestor_instance)").multi(True).include_all(True)
        .refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(gm.VariableSort.ALPHABETICAL_ASC),
        # the scrape targets of the chosen ingestors: Prometheus keeps "instance" for the target
        gd.QueryVariable("instance").hide(gm.VariableHide.HIDE_VARIABLE).datasource(DATASOURCE)
        .query('label_values(ingestor_info{ingestor_instance=~"$ingestor_instance"}, instance)')
        .multi(True).include_all(True).refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED),
    ]


def build() -> dict:
    """The dashboard as Grafana's JSON model (a dict)."""
    board = (gd.Dashboard("scale-ingestor").uid(UID).tags(["scale-ingestor"]).refresh("10s").time("now-1h", "now")
             .timezone("browser").editable()
             .description("Edge ingestors of the weighing plant: flow, latency, processes, dead letters, keeping "
                          "(docs/operations.md \"Watching it\").")
             .variables(variables()))
    y = 0
    for title, specs in ROWS:
        board = board.with_row(gd.Row(title).grid_pos(gm.GridPos(h=1, w=WIDTH, x=0, y=y)))
        y += 1
        width = WIDTH // min(3, len(specs))
        for i, spec in enumerate(specs):
            board = board.with_panel(panel(spec, (i % 3) * width, y + (i // 3) * 8, width))
        y += 8 * ((len(specs) + 2) // 3)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def rendered() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(rendered())
    print(f"wrote {OUT}", file=sys.stderr)

// The live page's script (ingestor/live.py): polls /api/v1/live once a second, keeps the last
// WINDOW_S seconds of figures in the browser for the charts, and looks scales up on request.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 300;
const LATENCY_WINDOW_S = 10;
// the figures shown, by their names in `ingestor stats`; "bad" ones turn red when above 0
const FIGURES = [
  ["received_events"], ["persisted"], ["duplicates"], ["invalid", "bad"], ["failed", "bad"], ["lost", "bad"],
  ["lost_after_commit", "bad"], ["pending"], ["ring_used"], ["ring_capacity"], ["spool_events"], ["spool_bytes"],
  ["events_per_s"], ["latency_p50_ms"], ["latency_p99_ms"], ["database_connected"], ["uptime_s"],
  ["dead_letter_errors", "bad"], ["archived_partitions"], ["archive_failures", "bad"], ["seals"],
  ["seal_failures", "bad"], ["central_lag_bytes"],
];

const samples = [];  // {t (s), received, persisted, invalid, pending, hist: Map upper_ms -> count}
const charts = {};

function figure(stats, name) {
  if (name === "latency_p50_ms") return stats.latency_ms.p50;
  if (name === "latency_p99_ms") return stats.latency_ms.p99;
  return stats[name];
}

function shown(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "NO";
  return String(value);
}

function buildFigures() {
  const box = document.getElementById("figures");
  for (const [name, kind] of FIGURES) {
    const div = document.createElement("div");
    div.className = "figure";
    div.dataset.kind = kind || "";
    div.innerHTML = `<div class="name">${name}</div><div class="value" id="stat-${name}">–</div>`;
    box.appendChild(div);
  }
}

function makeChart(id, series) {
  const el = document.getElementById(id);
  const opts = {
    width: Math.max(300, el.clientWidth), height: 160, legend: {live: false},
    // at least a minute wide: one sample alone would stretch the time axis over years
    scales: {x: {time: true, range: (u, min, max) => [Math.min(min, max - 60), max]},
             y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
    series: [{}, ...series.map(([label, stroke]) => ({label, stroke, width: 2, spanGaps: false}))],
  };
  charts[id] = new uPlot(opts, [[], ...series.map(() => [])], el);
}

function quantile(deltas, q) {
  const bounds = [...deltas.keys()].sort((a, b) => a - b);
  const total = bounds.reduce((acc, b) => acc + deltas.get(b), 0);
  if (total <= 0) return null;
  let acc = 0;
  for (const b of bounds) {
    acc += deltas.get(b);
    if (acc >= q * total) return b;
  }
  return bounds[bounds.length - 1];
}

function windowDeltas(now, before) {
  const deltas = new Map();
  for (const [b, c] of now.hist) deltas.set(b, c - (before.hist.get(b) || 0));
  return deltas;
}

function record(stats) {
  const h = stats.latency_histogram;
  samples.push({
    t: Date.now() / 1000, received: stats.received_events, persisted: stats.persisted,
    invalid: stats.invalid, pending: stats.pending, hist: new Map(h.upper_ms.map((u, i) => [u, h.count[i]])),
  });
  while (samples.length && samples[0].t < samples[samples.length - 1].t - WINDOW_S) samples.shift();
}

function drawCharts() {
  const t = [], rin = [], rout = [], rbad = [], p50 = [], p99 = [], pend = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i], dt = b.t - a.t;
    if (dt <= 0) continue;
    t.push(b.t);
    rin.push(Math.max(0, (b.received - a.received) / dt));
    rout.push(Math.max(0, (b.persisted - a.persisted) / dt));
    rbad.push(Math.max(0, (b.invalid - a.invalid) / dt));
    let j = i;
    while (j > 0 && samples[j - 1].t >= b.t - LATENCY_WINDOW_S) j--;
    const deltas = windowDeltas(b, samples[j]);
    p50.push(quantile(deltas, 0.5));
    p99.push(quantile(deltas, 0.99));
    pend.push(b.pending);
  }
  charts["chart-rates"].setData([t, rin, rout, rbad]);
  charts["chart-latency"].setData([t, p50, p99]);
  charts["chart-pending"].setData([t, pend]);
}

function showGlance(glance) {
  const box = document.getElementById("glance");
  box.className = glance.level;
  document.getElementById("level").textContent = glance.level;
  const list = document.getElementById("reasons");
  list.replaceChildren(...(glance.reasons.length ? glance.reasons : ["receiving and committing"]).map(text => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
}

function showStats(stats) {
  document.getElementById("instance").textContent = `instance ${stats.instance} · ${stats.status}`;
  for (const [name, kind] of FIGURES) {
    const el = document.getElementById(`stat-${name}`);
    const value = figure(stats, name);
    el.textContent = shown(value);
    el.parentElement.classList.toggle("bad", kind === "bad" && value > 0);
  }
  document.getElementById("writers").replaceChildren(...stats.writers.map((w, i) => {
    const tr = document.createElement("tr");
    for (const cell of [i, w.pid, w.alive ? "alive" : "DEAD", w.persisted, w.batches, w.last_batch_ms, w.restarts]) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      tr.appendChild(td);
    }
    return tr;
  }));
  document.getElementById("recent").replaceChildren(...stats.recent_events.slice().reverse().map(e => {
    const li = document.createElement("li");
    li.textContent = `${e.time} ${e.event}`;
    return li;
  }));
}

async function poll() {
  try {
    const answer = await (await fetch("/api/v1/live", {cache: "no-store"})).json();
    showGlance(answer.glance);
    if (answer.stats) {
      showStats(answer.stats);
      record(answer.stats);
      drawCharts();
    }
    document.getElementById("updated").textContent = `updated ${new Date().toISOString().slice(11, 19)} UTC`;
  } catch (e) {
    showGlance({level: "red", reasons: [`no answer from the service: ${e.message}`]});
  }
  setTimeout(poll, POLL_MS);
}

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
}

async function lookUp(event) {
  event.preventDefault();
  const id = document.getElementById("scale-id").value.trim();
  const error = document.getElementById("scale-error");
  const table = document.getElementById("scale-weighings");
  error.textContent = "";
  const answer = await fetch(`/api/v1/scales/${encodeURIComponent(id)}`, {cache: "no-store"});
  const body = await answer.json();
  if (!answer.ok) {
    error.textContent = body.error;
    table.hidden = true;
    return;
  }
  const latest = body.latest;
  document.getElementById("scale-latest").textContent = latest
    ? `scale ${body.scale_id}: latest seq ${latest.seq} measured ${latest.measured_at}, data_1 ${JSON.stringify(latest.data[0])}`
    : `scale ${body.scale_id} has sent nothing yet`;
  table.tBodies[0].replaceChildren(...body.weighings.map(w => {
    const tr = document.createElement("tr");
    tr.className = "weighing";
    for (const text of [w.seq, w.measured_at, JSON.stringify(w.data[0]), JSON.stringify(w.data[1]),
                        w.record_no === null ? "not chained" : w.record_no]) cell(tr, String(text));
    return tr;
  }));
  table.hidden = body.weighings.length === 0;
}

buildFigures();
makeChart("chart-rates", [["received/s", "#2c6fbb"], ["persisted/s", "#1f8a4c"], ["invalid/s", "#c0392b"]]);
makeChart("chart-latency", [["p50", "#2c6fbb"], ["p99", "#c27c0e"]]);
makeChart("chart-pending", [["pending", "#556"]]);
document.getElementById("lookup-form").addEventListener("submit", lookUp);
poll();

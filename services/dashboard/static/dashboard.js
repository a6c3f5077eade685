// The modelwatch dashboard page. It keeps no state of its own beyond what the service sends: a
// `snapshot` when the event stream (re)connects, then an `update` every DASHBOARD_PUSH_S with only
// what changed. Charts are uPlot (npm, served by the dashboard; no CDN).
"use strict";

const STALE_MS = 6000; // the service sends at least every 2 s; silence this long means trouble
const RATE_POINTS = 600;
const ERROR_SERIES = [
  ["mae/", "MAE", "#2e86c1"], ["p90_error/", "p90 |error|", "#8e44ad"], ["rmse/", "RMSE", "#16a085"],
];
const PALETTE = ["#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d",
  "#f1c40f", "#2c3e50", "#e84393", "#00a8ff", "#6d214f"];

const state = {
  page: { jaeger_ui_url: "http://localhost:16686" },
  rows: [], windows: { features: [], predictions: [] }, alerts: new Map(), alertEvents: [],
  rate: [[], []], lastEvent: 0, charts: {},
};

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 3) => (v === null || v === undefined ? "–"
  : Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v).toPrecision(digits));
const seconds = (iso) => Date.parse(iso) / 1000;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function traceLink(traceId) {
  if (!traceId) return el("span", { class: "empty" }, "not traced");
  return el("a", { href: `${state.page.jaeger_ui_url}/trace/${traceId}`, target: "_blank",
    rel: "noopener", class: "trace-link", "data-trace-id": traceId }, traceId.slice(0, 12) + "…");
}

// -- applying what the service sends --------------------------------------------------------------

function applySnapshot(s) {
  state.page = s.page;
  state.rows = s.rows;
  state.windows = s.windows;
  state.alerts = new Map(s.alerts.map((a) => [a.alert, a]));
  state.alertEvents = s.alert_events;
  applyCounters(s);
  renderAll();
}

function applyUpdate(u) {
  state.rows = state.rows.concat(u.rows).slice(-50);
  for (const w of u.windows) {
    const list = state.windows[w.stream];
    const at = list.findIndex((x) => x.id === w.id);
    if (at >= 0) list[at] = w; else list.push(w);
    if (list.length > 120) list.shift();
  }
  for (const a of u.alerts) {
    state.alerts.set(a.alert, a);
    if (a.state !== "open") state.alertEvents = state.alertEvents.concat([a]).slice(-100);
  }
  applyCounters(u);
  renderRows();
  if (u.windows.length) renderWindows();
  if (u.alerts.length) renderAlerts();
}

function applyCounters(c) {
  $("model-version").textContent = c.model_version || "–";
  $("rows-total").textContent = c.rows_total.toLocaleString("en");
  $("rows-per-s").textContent = c.rows_per_s.toFixed(1);
  $("updated").textContent = new Date().toLocaleTimeString();
  const rate = state.rate;
  rate[0].push(Date.now() / 1000); rate[1].push(c.rows_per_s);
  if (rate[0].length > RATE_POINTS) { rate[0].shift(); rate[1].shift(); }
  state.charts.rate?.setData(rate);
  renderDeadLetters(c.dead_letters);
}

// -- rendering ------------------------------------------------------------------------------------

function renderAll() { renderRows(); renderWindows(); renderAlerts(); }

function renderRows() {
  const body = $("rows").tBodies[0];
  body.replaceChildren(...state.rows.slice().reverse().map((r) => el("tr", { "data-message-id": r.message_id },
    el("td", {}, r.recorded_at.replace("T", " ").slice(0, 23)), el("td", { class: "id" }, r.message_id),
    el("td", {}, fmt(r.y_true, 4)), el("td", {}, fmt(r.y_pred, 4)), el("td", {}, fmt(r.absolute_error, 4)),
    el("td", {}, fmt(r.latency_ms, 3)), el("td", {}, r.model_version), el("td", {}, traceLink(r.trace_id)))));
}

function renderDeadLetters(counts) {
  const entries = Object.entries(counts || {});
  $("dead-letter-total").textContent = entries.reduce((n, [, c]) => n + c, 0);
  $("dead-letters").tBodies[0].replaceChildren(...entries.map(([q, c]) =>
    el("tr", { class: c ? "breached" : "", "data-queue": q }, el("td", {}, `${q}.dlq`), el("td", {}, c))));
}

function examples(alert) {
  const span = el("span");
  for (const e of alert.examples) {
    span.append(el("span", { class: "example" }, el("span", { class: "id" }, e.message_id), " ", traceLink(e.trace_id)));
  }
  return span;
}

function windowName(w) { return `${w.stream} #${w.index} (${w.rows} rows)`; }

function renderAlerts() {
  const open = [...state.alerts.values()].filter((a) => a.state !== "resolved");
  $("open-alert-count").textContent = open.length;
  $("no-open-alerts").hidden = open.length > 0;
  $("open-alerts").tBodies[0].replaceChildren(...open.map((a) => el("tr",
    { class: "breached", "data-alert": a.alert },
    el("td", {}, a.opened_at.replace("T", " ").slice(0, 19)), el("td", {}, a.statistic),
    el("td", {}, a.feature || "–"), el("td", {}, fmt(a.value)), el("td", {}, fmt(a.threshold)),
    el("td", {}, windowName(a.window)), el("td", { class: "examples" }, examples(a)))));
  $("alert-event-count").textContent = state.alertEvents.length;
  $("alert-events").replaceChildren(...state.alertEvents.slice().reverse().map((a) => el("li",
    { "data-alert": a.alert }, el("span", { class: `badge ${a.state}` }, a.state), " ",
    a.emitted_at.replace("T", " ").slice(0, 19), " ", a.summary, " ", examples(a))));
}

function renderWindows() {
  renderErrorChart();
  renderDrift();
}

function renderErrorChart() {
  const windows = state.windows.predictions;
  const x = windows.map((w) => seconds(w.closed_at));
  const data = [x];
  const series = [{}];
  for (const [key, label, colour] of ERROR_SERIES) {
    data.push(windows.map((w) => w.statistics[key]?.[0] ?? null));
    data.push(windows.map((w) => w.statistics[key]?.[1] ?? null));
    series.push({ label, stroke: colour, width: 2, points: { show: true } });
    series.push({ label: `${label} threshold`, stroke: colour, dash: [6, 4], width: 1, points: { show: false } });
  }
  chart("error", "error-chart", series, data);
}

function features(windows) {
  const names = new Set();
  for (const w of windows) for (const key of Object.keys(w.statistics)) {
    const [stat, feature] = key.split("/");
    if (stat === "psi" && feature) names.add(feature);
  }
  return [...names];
}

function renderDrift() {
  const windows = state.windows.features;
  const names = features(windows);
  const data = [windows.map((w) => seconds(w.closed_at))];
  const series = [{}];
  names.forEach((name, i) => {
    data.push(windows.map((w) => w.statistics[`psi/${name}`]?.[0] ?? null));
    series.push({ label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5 });
  });
  const threshold = windows.length ? windows.at(-1).statistics[`psi/${names[0]}`]?.[1] : null;
  data.push(windows.map(() => threshold));
  series.push({ label: "PSI threshold", stroke: "#c0392b", dash: [6, 4], width: 1, points: { show: false } });
  chart(`drift-${names.join(",")}`, "drift-chart", series, data, "drift");
  const latest = windows.at(-1);
  $("drift-window").textContent = latest ? `${windowName(latest)}, closed ${latest.closed_at}` : "none yet";
  $("drift-table").tBodies[0].replaceChildren(...(latest ? names : []).map((name) => {
    const s = (stat) => latest.statistics[`${stat}/${name}`] || [null, null, false];
    const drifted = ["psi", "ks_pvalue", "wasserstein"].some((stat) => s(stat)[2]);
    const cell = (stat) => el("td", { class: s(stat)[2] ? "breached" : "" }, fmt(s(stat)[0]));
    return el("tr", { class: drifted ? "breached" : "", "data-feature": name }, el("td", {}, name),
      cell("psi"), cell("ks_pvalue"), cell("wasserstein"), el("td", {}, drifted ? "yes" : "no"));
  }));
}

// One uPlot per chart, made again only when its series change (a new feature), else given data.
function chart(key, id, series, data, slot = id) {
  const target = $(id);
  const existing = state.charts[slot];
  if (existing && existing.key === key) { existing.plot.setData(data); return; }
  existing?.plot.destroy();
  const plot = new uPlot({ width: target.clientWidth || 500, height: 240, series,
    scales: { x: { time: true } }, legend: { live: false } }, data, target);
  state.charts[slot] = { key, plot };
}

function rateChart() {
  const target = $("rate-chart");
  state.charts.rate = new uPlot({ width: target.clientWidth || 500, height: 200,
    series: [{}, { label: "rows/s", stroke: "#2e86c1", width: 2, fill: "rgba(46,134,193,.1)" }],
    scales: { x: { time: true } }, legend: { live: false } }, state.rate, target);
}

// -- the event stream -----------------------------------------------------------------------------

function setStatus(name) {
  const s = $("status");
  s.className = `status ${name}`;
  s.textContent = name;
  document.body.dataset.status = name;
}

function connect() {
  // EventSource reconnects by itself when the service restarts; each reconnect sends a snapshot.
  const source = new EventSource("/events");
  source.addEventListener("snapshot", (e) => { state.lastEvent = Date.now(); applySnapshot(JSON.parse(e.data)); setStatus("live"); });
  source.addEventListener("update", (e) => { state.lastEvent = Date.now(); applyUpdate(JSON.parse(e.data)); setStatus("live"); });
  source.onerror = () => setStatus("reconnecting");
}

setInterval(() => {
  if (state.lastEvent && Date.now() - state.lastEvent > STALE_MS && document.body.dataset.status === "live") setStatus("stale");
}, 1000);
window.addEventListener("resize", () => {
  for (const [slot, c] of Object.entries(state.charts)) {
    const plot = slot === "rate" ? c : c.plot;
    plot.setSize({ width: plot.root.parentElement.clientWidth, height: plot.height });
  }
});
rateChart();
setStatus("connecting");
connect();

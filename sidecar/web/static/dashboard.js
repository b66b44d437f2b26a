// The sidecar dashboard: vanilla JS over the JSON API and the /api/events server-sent events.
// Everything is written with textContent (never innerHTML), so no value from a DICOM header or an
// error message can inject markup. No patient data is shown unless the server sends it.
"use strict";

const state = {
  series: [],                 // rows from /api/series
  slices: new Map(),          // series_uid -> Map(instance key -> slice message)
  alertKeys: new Set(),
  selected: null,
  showNames: false,
  retryEnabled: false,
};

const $ = (sel) => document.querySelector(sel);
const short = (uid) => (uid && uid.length > 14 ? "…" + uid.slice(-12) : uid || "");
const fmtTime = (t) => {
  if (!t) return "";
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

// At most one call per `ms`, and always one after the last request: a steady stream of events
// (a busy scanner) must not postpone the refresh forever, as a debounce would.
function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

async function getJSON(url) {
  const rsp = await fetch(url, { cache: "no-store" });
  if (!rsp.ok) throw new Error(`${url}: ${rsp.status}`);
  return rsp.json();
}

// -- series list ------------------------------------------------------------------------------

async function refreshSeries() {
  try {
    const data = await getJSON("/api/series?limit=200");
    state.series = data.series;
    state.showNames = data.show_patient_names;
    renderSeries();
  } catch (e) { console.warn(e); }
}
const refreshSeriesSoon = throttle(refreshSeries, 150);

function renderSeries() {
  const byAe = new Map();
  for (const row of state.series) {
    const ae = row.calling_ae || "(unknown AE)";
    if (!byAe.has(ae)) byAe.set(ae, []);
    byAe.get(ae).push(row);
  }
  const box = $("#series-list");
  box.replaceChildren();
  for (const [ae, rows] of byAe) {
    box.append(el("div", { class: "ae" }, ae));
    const head = ["series", "modality", "state", "model", "images", "alerts", "last received"];
    if (state.showNames) head.splice(1, 0, "patient");
    const table = el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
    const body = el("tbody");
    for (const r of rows) {
      const cells = [short(r.series_uid), r.modality, r.state, r.model_id || "—", r.n_instances, r.n_alerts,
                     fmtTime(r.last_received)];
      if (state.showNames) cells.splice(1, 0, r.patient_name || "");
      const tr = el("tr", { class: "series" + (r.series_uid === state.selected ? " selected" : ""),
                            dataset: { seriesUid: r.series_uid },
                            onclick: () => { $("#follow").checked = false; select(r.series_uid); } },
                    ...cells.map((c) => el("td", {}, c)));
      body.append(tr);
    }
    table.append(body);
    box.append(table);
  }
}

function select(uid) {
  if (state.selected === uid) return;
  state.selected = uid;
  $("#detail-uid").textContent = uid;
  for (const tr of document.querySelectorAll("tr.series")) tr.classList.toggle("selected", tr.dataset.seriesUid === uid);
  renderSlices();
  refreshTimeline();
}

// -- slices -----------------------------------------------------------------------------------

function addSlice(s) {
  if (!state.slices.has(s.series_uid)) state.slices.set(s.series_uid, new Map());
  state.slices.get(s.series_uid).set(`${s.instance_uid}#${s.frame ?? ""}`, s);
  if ($("#follow").checked) select(s.series_uid);
  if (s.series_uid === state.selected) renderSlices();
}

function renderSlices() {
  const box = $("#slices");
  box.replaceChildren();
  const slices = [...(state.slices.get(state.selected)?.values() ?? [])];
  slices.sort((a, b) => (a.instance_number ?? 0) - (b.instance_number ?? 0) || (a.frame ?? 0) - (b.frame ?? 0));
  for (const s of slices) {
    const p = s.probabilities[s.label];
    const other = Object.entries(s.probabilities).filter(([k]) => k !== s.label);
    const risk = s.uncertain ? 1 : (other.length ? other[0][1] : 0);
    const ood = Boolean(s.out_of_domain);
    box.append(el("div", { class: "slice" + (ood ? " out-of-domain" : (s.uncertain ? " uncertain" : "")),
                          dataset: { instanceUid: s.instance_uid, label: s.label, uncertain: String(s.uncertain),
                                     outOfDomain: String(ood) },
                          title: `${s.model} ${JSON.stringify(s.probabilities)}` },
      el("div", {}, `image ${s.instance_number ?? "?"}${s.frame ? " f" + s.frame : ""}`),
      el("div", {}, ood ? "not assessed: outside the model's domain"
                        : `${s.label.replace(/_/g, " ")} ${p.toFixed(2)}`),
      el("div", { class: "bar" }, el("span", { style: `width:${Math.round(100 * Math.min(1, risk))}%` }))));
  }
  if (!slices.length) box.append(el("p", { class: "muted" }, "No per-image results yet."));
}

// -- alerts -----------------------------------------------------------------------------------

function addAlert(a, live) {
  if (state.alertKeys.has(a.key)) return;
  state.alertKeys.add(a.key);
  const shown = Date.now() / 1000;
  const latency = a.received_at ? ` · ${(a.raised_at - a.received_at).toFixed(2)} s after receipt` : "";
  const li = el("li", { class: "alert" + (live ? " fresh" : ""),
                       dataset: { key: a.key, seriesUid: a.series_uid, raisedAt: String(a.raised_at),
                                  shownAt: String(shown), instanceNumber: String(a.instance_number ?? "") },
                       onclick: () => { $("#follow").checked = false; select(a.series_uid); } },
    el("strong", {}, a.lines[0] || "AI QA ALERT"), " ",
    el("span", {}, a.lines.slice(1).join(" · ")),
    el("div", { class: "muted" }, `${fmtTime(a.raised_at)} · series ${short(a.series_uid)}${latency}`));
  $("#alerts").prepend(li);
  $("#no-alerts").hidden = true;
}

// -- timeline ---------------------------------------------------------------------------------

async function refreshTimeline() {
  const uid = state.selected;
  if (!uid) return;
  try {
    const data = await getJSON(`/api/series/${encodeURIComponent(uid)}/timeline`);
    if (uid !== state.selected) return;
    const body = $("#timeline tbody");
    body.replaceChildren(...data.events.map((e) =>
      el("tr", { dataset: { kind: e.kind } }, el("td", {}, fmtTime(e.at)), el("td", {}, e.kind), el("td", {}, e.detail))));
  } catch (e) { console.warn(e); }
}
const refreshTimelineSoon = throttle(refreshTimeline, 150);

// -- outbox and dead letters ------------------------------------------------------------------

async function refreshOutbox() {
  try {
    const data = await getJSON("/api/outbox");
    state.retryEnabled = data.retry_enabled;
    const counts = {};
    for (const p of data.pending) counts[p.destination] = (counts[p.destination] || 0) + 1;
    const parts = Object.entries(counts).map(([d, n]) => `${d}: ${n}`);
    $("#pending-summary").textContent = parts.length ? `Pending: ${parts.join(", ")}` : "Nothing pending.";
    const body = $("#dead-letters tbody");
    body.replaceChildren(...data.dead.map((d) => el("tr", { dataset: { id: String(d.id) } },
      el("td", {}, d.id), el("td", {}, d.destination), el("td", {}, d.attempts), el("td", {}, d.last_error || ""),
      el("td", {}, state.retryEnabled
        ? el("button", { class: "retry", type: "button", onclick: () => retry(d.id) }, "Retry")
        : el("span", { class: "muted" }, "retry off")))));
  } catch (e) { console.warn(e); }
}
const refreshOutboxSoon = throttle(refreshOutbox, 200);

async function retry(id) {
  const token = $("#token").value;
  sessionStorage.setItem("sidecar-admin-token", token);
  const rsp = await fetch(`/api/dead-letters/${id}/retry`, {
    method: "POST", headers: { Authorization: `Bearer ${token}` } });
  const body = await rsp.json().catch(() => ({}));
  $("#retry-status").textContent = rsp.ok ? `requeued #${id}` : `retry #${id} failed: ${body.error || rsp.status}`;
  $("#retry-status").dataset.result = rsp.ok ? "ok" : "error";
  refreshOutbox();
}

// -- health: readiness checks (lanes, journal, disk, ...) and jobs given up ------------------------

async function refreshHealth() {
  try {
    const rsp = await fetch("/readyz", { cache: "no-store" });
    const data = await rsp.json();
    const ready = $("#ready");
    const down = Object.entries(data.checks).filter(([, c]) => !c.ok).map(([k]) => k);
    ready.textContent = data.ready ? "Ready." : `NOT READY: ${down.join(", ")}`;
    ready.className = data.ready ? "muted" : "not-ready";
    $("#checks tbody").replaceChildren(...Object.entries(data.checks).map(([k, c]) =>
      el("tr", { dataset: { check: k, ok: String(c.ok) } }, el("td", {}, k), el("td", {}, c.ok ? "ok" : "DOWN"),
         el("td", {}, c.detail))));
    const jobs = await getJSON("/api/jobs/given-up");
    $("#given-up tbody").replaceChildren(...jobs.jobs.map((j) =>
      el("tr", { dataset: { job: String(j.id), state: j.state } }, el("td", {}, j.id), el("td", {}, j.model_id),
         el("td", {}, j.state), el("td", {}, j.attempts), el("td", {}, j.reason))));
  } catch (e) { console.warn(e); }
}

// -- models -----------------------------------------------------------------------------------

async function loadModels() {
  try {
    const data = await getJSON("/api/models");
    const box = $("#models");
    box.replaceChildren();
    for (const c of data.models) {
      const figures = Object.entries(c.published || {}).map(([k, v]) => `${k} ${v}`).join(", ");
      box.append(el("div", { class: "card", dataset: { modelId: c.id } },
        el("strong", {}, `${c.name} `), el("code", {}, `${c.id} ${c.version}`),
        el("div", {}, c.intended_use),
        el("div", { class: "muted" }, `${c.manufacturer} · labels: ${c.labels.join(", ")}` +
                                      (c.not_for_clinical_use ? " · NOT FOR CLINICAL USE" : "")),
        c.reference ? el("div", { class: "muted" }, c.reference) : "",
        figures ? el("div", { class: "muted" }, `published: ${figures}`) : ""));
    }
    for (const [id, why] of Object.entries(data.unavailable)) {
      box.append(el("div", { class: "card unavailable" }, el("code", {}, id), ` unavailable: ${why}`));
    }
    if (!box.children.length) box.append(el("p", { class: "muted" }, "No models loaded."));
  } catch (e) { console.warn(e); }
}

// -- live stream ------------------------------------------------------------------------------

function connect() {
  const es = new EventSource("/api/events");
  const conn = $("#conn");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn on"; };
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn off"; };
  es.addEventListener("instance", (ev) => {
    const m = JSON.parse(ev.data);
    if ($("#follow").checked && !state.selected) select(m.series_uid);
    refreshSeriesSoon();
  });
  es.addEventListener("slice", (ev) => addSlice(JSON.parse(ev.data)));
  es.addEventListener("alert", (ev) => {
    const a = JSON.parse(ev.data);
    // a message from the replayed backlog is older than the page; only new ones flash
    addAlert(a, a.raised_at * 1000 >= pageLoaded);
    refreshSeriesSoon();
  });
  es.addEventListener("timeline", (ev) => {
    const e = JSON.parse(ev.data);
    refreshSeriesSoon();
    if (e.series_uid === state.selected) refreshTimelineSoon();
    if (["written", "sent", "retry", "dead", "requeued"].includes(e.kind)) refreshOutboxSoon();
    if (["failed", "quarantined"].includes(e.kind)) refreshHealth();
  });
}

const pageLoaded = Date.now();
$("#token").value = sessionStorage.getItem("sidecar-admin-token") || "";
refreshSeries();
refreshOutbox();
loadModels();
refreshHealth();
setInterval(refreshHealth, 5000);
connect();

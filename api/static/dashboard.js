// cohortstream dashboard: reads /statistics, /subjects and /cohorts with the API key the
// user entered (kept in this tab's sessionStorage, sent as "Authorization: Bearer").
// Every value from the API is put into the page with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "cohortstream.apiKey";
const MATRIX_MAX = Number(document.body.dataset.matrixMax) || 2000;  // api.dashboard.MATRIX_MAX_SUBJECTS
const PAGE = 500;
// The keys of GET /statistics "totals" (api/statistics.py _totals).
const TOTAL_LABELS = {
  series: "series", instances: "DICOM instances", questionnaires: "questionnaires",
  ehr_records: "EHR rows", annotations: "annotations",
};
const MULTIMODAL_LABELS = {
  subjects: "subjects", with_imaging: "with imaging", with_questionnaire: "with questionnaire",
  with_ehr: "with EHR", complete: "imaging + questionnaire + EHR",
};

const $ = (id) => document.getElementById(id);
let lastQuery = null;

class Unauthorized extends Error {}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function setStatus(text) { $("status").textContent = text; }

function storedKey() { return sessionStorage.getItem(KEY_STORAGE); }

function showLogin(message) {
  $("dashboard").hidden = true;
  $("forget-key").hidden = true;
  $("refresh").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("api-key").focus();
  setStatus("");
}

async function api(path, options) {
  const opts = options || {};
  const headers = Object.assign({ Authorization: "Bearer " + storedKey() }, opts.headers || {});
  if (opts.json !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: opts.method || "GET", headers,
    body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined,
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    throw new Unauthorized("The key was refused (unknown, revoked or mistyped). Enter a key.");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      message = body.error + (body.field ? " (" + body.field + ")" : "");
    } catch (_) { /* not the API's error shape */ }
    throw new Error(message);
  }
  return response;
}

function cards(container, values, labels, prefix) {
  container.replaceChildren();
  for (const [key, label] of Object.entries(labels)) {
    const card = el("div", null, { class: "card", "data-stat": prefix + "." + key });
    card.append(el("div", values[key] ?? 0, { class: "value" }), el("div", label, { class: "label" }));
    container.append(card);
  }
}

function table(node, header, rows) {
  node.replaceChildren();
  const head = el("tr");
  for (const h of header) head.append(el("th", h));
  node.append(head);
  for (const row of rows) {
    const tr = el("tr");
    row.forEach((cell) => tr.append(el("td", cell)));
    node.append(tr);
  }
}

const PLOT_CONFIG = { displayModeBar: false, responsive: true };
function layout(extra) {
  return Object.assign({ margin: { l: 40, r: 10, t: 10, b: 40 }, height: 250, font: { size: 11 },
                         legend: { orientation: "h", y: -0.2 } }, extra || {});
}

function plot(id, traces, extra) {
  const node = $(id);
  if (!window.Plotly) {
    node.classList.add("unavailable");
    node.textContent = "Plots unavailable (plotly not installed on the server); numbers below.";
    return;
  }
  window.Plotly.react(node, traces, layout(extra), PLOT_CONFIG);
}

function bar(name, counts) {
  return { type: "bar", name, x: Object.keys(counts), y: Object.values(counts) };
}

function dayAxis(ingestion) {
  // Ticks on whole days; one per day while the range is short.
  const days = [...new Set(Object.values(ingestion).flat().map((d) => d.day))].sort();
  const span = days.length ? (Date.parse(days[days.length - 1]) - Date.parse(days[0])) / 86400000 : 0;
  return Object.assign({ type: "date", tickformat: "%Y-%m-%d" }, span <= 14 ? { dtick: 86400000 } : {});
}

function render(stats) {
  cards($("totals"), stats.totals, TOTAL_LABELS, "totals");
  if (stats.multimodal) {
    cards($("multimodal"), stats.multimodal, MULTIMODAL_LABELS, "multimodal");
    $("multimodal-note").textContent = "Registry join computed at " + stats.multimodal.computed_at +
      " (cached up to " + stats.multimodal.max_age_s + " s).";
  } else {
    // The server computes this join in the background; it is not ready yet.
    $("multimodal").replaceChildren();
    $("multimodal-note").textContent = "Being computed; press Refresh in a moment.";
  }

  plot("plot-modality", [bar("series", stats.series_by_modality), bar("patients", stats.patients_by_modality)],
       { barmode: "group" });
  const modalities = [...new Set([...Object.keys(stats.series_by_modality), ...Object.keys(stats.patients_by_modality)])].sort();
  table($("table-modality"), ["modality", "series", "patients"],
        modalities.map((m) => [m, stats.series_by_modality[m] ?? 0, stats.patients_by_modality[m] ?? 0]));

  plot("plot-body-part", [bar("series", stats.series_by_body_part)]);
  table($("table-body-part"), ["body part", "series"], Object.entries(stats.series_by_body_part));

  plot("plot-age", [bar("DICOM (age at study)", stats.age_bands.dicom), bar("EHR (anchor age)", stats.age_bands.ehr)],
       { barmode: "group" });
  const bands = Object.keys(stats.age_bands.dicom);
  table($("table-age"), ["age", "DICOM", "EHR"], bands.map((b) => [b, stats.age_bands.dicom[b] ?? 0, stats.age_bands.ehr[b] ?? 0]));

  const sexes = [...new Set([...Object.keys(stats.sex.dicom), ...Object.keys(stats.sex.ehr)])].sort();
  plot("plot-sex", [bar("DICOM", stats.sex.dicom), bar("EHR", stats.sex.ehr)], { barmode: "group" });
  table($("table-sex"), ["sex", "DICOM", "EHR"], sexes.map((s) => [s, stats.sex.dicom[s] ?? 0, stats.sex.ehr[s] ?? 0]));

  const completionStatuses = ["COMPLETE", "UNVERIFIED", "INCOMPLETE"];
  const forms = stats.questionnaire_completion.map((c) => c.instrument + (c.event_name ? " @ " + c.event_name : ""));
  plot("plot-completion", completionStatuses.map((s) => ({
    type: "bar", name: s, x: forms, y: stats.questionnaire_completion.map((c) => c.counts[s] ?? 0),
  })), { barmode: "stack" });
  table($("table-completion"), ["instrument @ event", ...completionStatuses],
        stats.questionnaire_completion.map((c, i) => [forms[i], ...completionStatuses.map((s) => c.counts[s] ?? 0)]));

  const annotationStatuses = ["suggested", "accepted", "corrected", "rejected"];
  const models = stats.annotations_by_model.map((m) => m.model);
  plot("plot-annotations", annotationStatuses.map((s) => ({
    type: "bar", name: s, x: models, y: stats.annotations_by_model.map((m) => m.counts[s] ?? 0),
  })), { barmode: "stack" });
  table($("table-annotations"), ["model", ...annotationStatuses],
        stats.annotations_by_model.map((m) => [m.model, ...annotationStatuses.map((s) => m.counts[s] ?? 0)]));

  const line = (name, days) => ({ type: "scatter", mode: "lines+markers", name,
                                  x: days.map((d) => d.day), y: days.map((d) => d.count) });
  plot("plot-ingestion", [
    line("DICOM instances", stats.ingestion.dicom_instances_per_day),
    line("REDCap records", stats.ingestion.redcap_records_per_day),
    line("EHR rows", stats.ingestion.ehr_records_per_day),
  ], { xaxis: dayAxis(stats.ingestion) });

  // Cohort builder choices from what the cohort actually holds.
  const choices = $("modality-choices");
  choices.replaceChildren();
  for (const m of Object.keys(stats.patients_by_modality).sort()) {
    const label = el("label");
    const box = el("input", null, { type: "checkbox", value: m, name: "modality" });
    label.append(box, document.createTextNode(" " + m));
    choices.append(label);
  }
  const instrument = $("q-instrument");
  instrument.replaceChildren(el("option", "(none)", { value: "" }));
  for (const name of [...new Set(stats.questionnaire_completion.map((c) => c.instrument))].sort()) {
    instrument.append(el("option", name, { value: name }));
  }
}

async function loadMatrix(modalityHint) {
  const subjects = [];
  let cursor = null;
  let more = true;
  while (more && subjects.length < MATRIX_MAX) {
    const params = new URLSearchParams({ limit: String(Math.min(PAGE, MATRIX_MAX - subjects.length)) });
    if (cursor) params.set("cursor", cursor);
    const page = await (await api("/subjects?" + params)).json();
    subjects.push(...page.items);
    cursor = page.next_cursor;
    more = cursor !== null;
  }
  const modalities = [...new Set([...modalityHint, ...subjects.flatMap((s) => s.modalities)])].sort();
  const columns = [...modalities, "questionnaire", "EHR"];
  const node = $("matrix");
  node.replaceChildren();
  const head = el("tr");
  head.append(el("th", "subject"));
  columns.forEach((c) => head.append(el("th", c)));
  node.append(head);
  for (const s of subjects) {
    const tr = el("tr", null, { "data-subject": s.subject_id });
    tr.append(el("td", s.subject_id, { title: s.identifiers.join("\n") }));
    const has = [...modalities.map((m) => s.modalities.includes(m)), s.questionnaire_count > 0, s.has_ehr];
    has.forEach((yes, i) => tr.append(el("td", yes ? "●" : "·", { class: yes ? "yes" : "no", "data-column": columns[i] })));
    node.append(tr);
  }
  $("matrix-note").textContent = subjects.length + " subjects shown" +
    (more ? " (the first " + MATRIX_MAX + "; the counts above cover everyone)" : "") + ".";
}

// The review queue (GET /annotations/queue), each row linking to its study in OHIF
// (viewer_url, a path on this API; the viewer uses its own /login session).
const QUEUE_ROWS = 20;
async function loadQueue() {
  const answer = await (await api("/annotations/queue?limit=" + QUEUE_ROWS)).json();
  const node = $("review-queue");
  node.replaceChildren();
  const head = el("tr");
  for (const h of ["model", "series", "uncertainty", "status", "viewer"]) head.append(el("th", h));
  node.append(head);
  for (const item of answer.items) {
    const tr = el("tr");
    tr.append(el("td", item.model_name), el("td", item.series_instance_uid),
              el("td", item.uncertainty === null || item.uncertainty === undefined ? "" : item.uncertainty.toFixed(3)),
              el("td", item.status));
    const cell = el("td");
    if (item.viewer_url && item.viewer_url.startsWith("/ohif/")) {
      cell.append(el("a", "open in OHIF", { href: item.viewer_url, target: "_blank", rel: "noopener" }));
    }
    tr.append(cell);
    node.append(tr);
  }
  if (!answer.items.length) {
    const empty = el("tr");
    empty.append(el("td", "nothing to review", { colspan: "5" }));
    node.append(empty);
  }
}

// Feature coverage and one distribution plot per chosen feature (GET /features/summary).
async function loadFeatures(chosen) {
  const params = new URLSearchParams();
  for (const name of chosen || []) params.append("feature", name);
  const summary = await (await api("/features/summary" + (params.size ? "?" + params : ""))).json();
  table($("feature-coverage"), ["block", "subjects", "share"],
        Object.entries(summary.coverage).map(([block, c]) =>
          [block, c.subjects, (100 * c.share).toFixed(1) + " %"]));
  const select = $("feature-choice");
  if (!select.options.length) {
    for (const name of summary.columns) select.append(el("option", name, { value: name }));
  }
  for (const option of select.options) option.selected = option.value in summary.distributions;
  const plots = $("feature-plots");
  plots.replaceChildren();
  for (const [name, dist] of Object.entries(summary.distributions)) {
    const id = "feature-plot-" + name;
    const box = el("div", null, { "data-feature": name });
    box.append(el("h3", name + " (n=" + dist.n + ", missing " + dist.missing + ")"), el("div", null, { id, class: "plot" }));
    plots.append(box);
    if (dist.kind === "numeric") {
      const centres = dist.counts.map((_, i) => (dist.edges[i] + dist.edges[i + 1]) / 2);
      plot(id, [{ type: "bar", name, x: centres, y: dist.counts }], { bargap: 0.05 });
    } else {
      plot(id, [bar(name, dist.counts)]);
    }
  }
}

async function plotChosenFeatures(event) {
  event.preventDefault();
  const chosen = [...$("feature-choice").selectedOptions].map((o) => o.value);
  try { await loadFeatures(chosen); } catch (err) { setStatus("Could not load features: " + err.message); }
}

async function load() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("forget-key").hidden = false;
  $("refresh").hidden = false;
  setStatus("Loading…");
  try {
    const stats = await (await api("/statistics")).json();
    render(stats);
    await loadQueue();
    await loadMatrix(Object.keys(stats.patients_by_modality));
    await loadFeatures(null);
    setStatus("Loaded " + new Date().toLocaleTimeString());
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(err.message);
    else setStatus("Could not load: " + err.message);
  }
}

function buildQuery() {
  const query = {};
  const modalities = [...document.querySelectorAll("#modality-choices input:checked")].map((b) => b.value);
  if (modalities.length) query.modalities = modalities;
  const instrument = $("q-instrument").value;
  if (instrument) {
    const q = { instrument, status: $("q-status").value };
    if ($("q-event").value.trim()) q.event_name = $("q-event").value.trim();
    query.questionnaires = [q];
  }
  const code = $("lab-code").value.trim();
  if (code) {
    const lab = { code };
    if ($("lab-min").value !== "") lab.min = Number($("lab-min").value);
    if ($("lab-max").value !== "") lab.max = Number($("lab-max").value);
    query.labs = [lab];
  }
  const prefixes = $("dx-prefixes").value.split(",").map((p) => p.trim()).filter(Boolean);
  if (prefixes.length) query.diagnoses = prefixes.map((p) => ({ code_prefix: p }));
  return query;
}

async function runQuery(event) {
  event.preventDefault();
  $("query-error").textContent = "";
  const query = buildQuery();
  try {
    const answer = await (await api("/cohorts/query", { method: "POST", json: query })).json();
    lastQuery = query;
    $("cohort-count").textContent = String(answer.count);
    table($("per-criterion"), ["criterion", "subjects meeting it alone"], Object.entries(answer.per_criterion));
    $("query-json").textContent = JSON.stringify(query, null, 2);
    $("cohort-ids").textContent = answer.subject_ids.join("\n");
    $("query-result").hidden = false;
    $("download-csv").disabled = false;
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(err.message);
    else $("query-error").textContent = err.message;
  }
}

async function downloadCsv() {
  if (lastQuery === null) return;
  $("query-error").textContent = "";
  try {
    const response = await api("/cohorts/export?format=csv", { method: "POST", json: lastQuery });
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", null, { href: url, download: "cohort.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    setStatus("Downloaded " + response.headers.get("X-Cohort-Count") + " subjects as cohort.csv");
  } catch (err) {
    if (err instanceof Unauthorized) showLogin(err.message);
    else $("query-error").textContent = err.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    load();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    showLogin("Key forgotten.");
  });
  $("refresh").addEventListener("click", load);
  $("feature-form").addEventListener("submit", plotChosenFeatures);
  $("cohort-form").addEventListener("submit", runQuery);
  $("download-csv").addEventListener("click", downloadCsv);
  if (storedKey()) load(); else showLogin();
});

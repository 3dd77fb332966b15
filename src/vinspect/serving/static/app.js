// vinspect operator page: upload images, show the verdict and heatmap, a live list of recent inspections
// and today's counts per class.  Plain JS, no build step; every value from the server is set as text.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, okClasses: new Set(), selected: null, busy: false, lastListKey: "" };
const PALETTE = ["#2458c6", "#e07b00", "#7b3fc4", "#00897b", "#c2185b", "#5d6d7e", "#8d6e63", "#0097a7"];

function apiKey() { return $("apikey").value || localStorage.getItem("vinspect.apiKey") || ""; }

// with a key, every read needs it too: fetches send the header; images (<img src>) send a same-site cookie
function keyCookie() {
  const k = apiKey();
  document.cookie = "vinspect_key=" + encodeURIComponent(k) + "; path=/; SameSite=Strict" + (k ? "" : "; max-age=0");
}

async function getJSON(path) {
  const headers = { Accept: "application/json" };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const r = await fetch(path, { headers });
  if (r.status === 401) $("key-label").hidden = false;
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function isOk(label) { return state.okClasses.has(label); }

function classColour(label) {
  if (isOk(label)) return "var(--ok)";
  const bad = state.model ? state.model.damaged_classes : [];
  if (bad.length === 1 && bad[0] === label) return "var(--bad)";  // intact/damaged models: red
  const i = bad.indexOf(label);
  return i < 0 ? "#999" : PALETTE[i % PALETTE.length];
}

function localTime(iso) {
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function localMidnightISO() {
  const d = new Date();
  d.setHours(0, 0, 0, 0);
  const off = -d.getTimezoneOffset();
  const p = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T00:00:00${off >= 0 ? "+" : "-"}${p(off / 60)}:${p(off % 60)}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function showError(msg) {
  const e = $("error");
  if (!msg) { e.hidden = true; e.textContent = ""; return; }
  e.hidden = false;
  e.textContent = msg;
}

// -- the current inspection ---------------------------------------------------------------------------

function show(rec) {
  state.selected = rec.id;
  const cur = $("current");
  cur.classList.remove("empty");
  const v = $("verdict");
  v.textContent = rec.label;
  v.className = "verdict " + (isOk(rec.label) ? "ok" : "bad");
  v.dataset.id = rec.id;
  $("score").textContent = `${(100 * rec.score).toFixed(1)} %`;
  const facts = [`#${rec.id}`, localTime(rec.created_at)];
  if (rec.part_id) facts.push(`part ${rec.part_id}`);
  if (rec.station) facts.push(`station ${rec.station}`);
  if (rec.latency_ms != null) facts.push(`${rec.latency_ms.toFixed(1)} ms`);
  if (rec.image && rec.image.filename) facts.push(rec.image.filename);
  $("facts").textContent = facts.join(" · ");
  const probs = $("probs");
  probs.replaceChildren();
  const entries = Object.entries(rec.probabilities || {}).sort((a, b) => b[1] - a[1]);
  for (const [c, p] of entries) {
    probs.append(el("div", "", c));
    const bar = el("div", "bar");
    const fill = el("span", c === rec.label ? "top " + (isOk(c) ? "ok" : "bad") : "");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bar.append(fill);
    probs.append(bar, el("div", "", `${(100 * p).toFixed(1)} %`));
  }
  $("img").src = rec.image_url + "?max_size=720";
  const heat = $("heat");
  heat.removeAttribute("src");
  heat.dataset.state = "loading";
  $("heat-caption").textContent = "heatmap: drawing…";
  heat.onload = () => {
    heat.dataset.state = "loaded";
    $("heat-caption").textContent = `heatmap: where the model looked for “${rec.label}”`;
  };
  heat.onerror = () => {
    heat.dataset.state = "error";
    $("heat-caption").textContent = "heatmap unavailable";
  };
  heat.src = rec.heatmap_url;
  for (const li of $("recent").children) li.classList.toggle("sel", li.dataset.id === String(rec.id));
}

// -- uploads ------------------------------------------------------------------------------------------

async function upload(files) {
  files = Array.from(files || []);
  if (!files.length) return;
  showError("");
  const prog = $("progress");
  let done = 0;
  for (const f of files) {
    prog.textContent = `inspecting ${f.name} (${done + 1} of ${files.length})…`;
    const fd = new FormData();
    fd.append("file", f, f.name);
    if ($("station").value) fd.append("station", $("station").value);
    if ($("part").value) fd.append("part_id", $("part").value);
    const headers = { Accept: "application/json" };
    if (apiKey()) headers["X-API-Key"] = apiKey();
    try {
      const r = await fetch("/v1/inspect", { method: "POST", body: fd, headers });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        showError(`${f.name}: ${body.detail || "HTTP " + r.status} (${body.error || r.status})`);
        if (r.status === 401) $("key-label").hidden = false;
      } else {
        show(body);
      }
    } catch (e) {
      showError(`${f.name}: ${e.message}`);
    }
    done++;
  }
  prog.textContent = `${done} image${done === 1 ? "" : "s"} inspected`;
  localStorage.setItem("vinspect.station", $("station").value);
  if ($("apikey").value) localStorage.setItem("vinspect.apiKey", $("apikey").value);
  refresh();
}

function setUpDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { upload(e.target.files); e.target.value = ""; });
  for (const t of [document.body, drop]) {
    t.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    t.addEventListener("dragleave", () => drop.classList.remove("over"));
    t.addEventListener("drop", (e) => {
      e.preventDefault();
      e.stopPropagation();
      drop.classList.remove("over");
      upload(e.dataTransfer.files);
    });
  }
}

// -- live panels --------------------------------------------------------------------------------------

function renderRecent(items) {
  const ol = $("recent");
  const key = items.map((r) => r.id).join(",");
  if (key === state.lastListKey) return;
  state.lastListKey = key;
  ol.replaceChildren();
  if (!items.length) ol.append(el("li", "empty", $("damaged-only").checked ? "no damaged parts" : "no inspections yet"));
  for (const r of items) {
    const li = el("li");
    li.dataset.id = r.id;
    li.dataset.label = r.label;
    if (r.id === state.selected) li.classList.add("sel");
    const img = el("img");
    img.loading = "lazy";
    img.alt = r.label;
    img.src = r.thumbnail_url;
    const txt = el("div");
    txt.append(el("div", "lbl " + (isOk(r.label) ? "ok" : "bad"), `${r.label}  ${(100 * r.score).toFixed(1)} %`));
    const meta = [`#${r.id}`, localTime(r.created_at)];
    if (r.station) meta.push(r.station);
    if (r.part_id) meta.push(r.part_id);
    txt.append(el("div", "meta", meta.join(" · ")));
    li.append(img, txt);
    li.addEventListener("click", () => show(r));
    ol.append(li);
  }
}

function renderCounts(s) {
  const tb = $("counts").querySelector("tbody");
  tb.replaceChildren();
  for (const [label, n] of Object.entries(s.by_label)) {
    const tr = el("tr");
    const td = el("td");
    const sw = el("span", "swatch");
    sw.style.background = classColour(label);
    td.append(sw, document.createTextNode(label));
    tr.append(td, el("td", "n", String(n)));
    tr.dataset.label = label;
    tb.append(tr);
  }
  const extra = [["damaged (all classes)", s.damaged, "_damaged"], ["rejected (bad input)", s.rejected, "_rejected"]];
  for (const [name, n, key] of extra) {
    const tr = el("tr", "muted");
    tr.append(el("td", "", name), el("td", "n", String(n)));
    tr.dataset.label = key;
    tb.append(tr);
  }
  $("today-total").textContent = `${s.ok} inspected`;
}

async function refresh() {
  try {
    const q = new URLSearchParams({ limit: "30" });
    if ($("damaged-only").checked) q.set("damaged", "true");
    const [list, stats] = await Promise.all([
      getJSON("/v1/inspections?" + q),
      getJSON("/v1/stats?" + new URLSearchParams({ since: localMidnightISO() })),
    ]);
    renderRecent(list.items);
    renderCounts(stats);
  } catch (e) {
    /* the health indicator says when the service is down */
  }
}

async function health() {
  const h = $("health");
  try {
    const r = await fetch("/healthz");
    h.className = "health " + (r.ok ? "up" : "down");
    $("health-text").textContent = r.ok ? "online" : "degraded";
  } catch (e) {
    h.className = "health down";
    $("health-text").textContent = "offline";
  }
}

async function init() {
  setUpDrop();
  $("station").value = localStorage.getItem("vinspect.station") || "";
  keyCookie();
  $("apikey").addEventListener("change", () => {
    localStorage.setItem("vinspect.apiKey", $("apikey").value);
    keyCookie();
    location.reload();
  });
  $("damaged-only").addEventListener("change", () => { state.lastListKey = ""; refresh(); });
  try {
    const m = await getJSON("/v1/model");
    state.model = m;
    state.okClasses = new Set(m.ok_classes);
    const acc = m.metrics && m.metrics.accuracy_mean != null ? ` · accuracy ${(100 * m.metrics.accuracy_mean).toFixed(1)} %` : "";
    $("model").textContent = `model ${m.name} (${m.sha256.slice(0, 12)}) · ${m.backbone}/${m.layer} + ${m.head ? m.head.name : "?"} · ` +
      `classes: ${m.classes.join(", ")}${acc}`;
    if (m.api_key_required) $("key-label").hidden = false;
  } catch (e) {
    $("model").textContent = "model information unavailable";
  }
  await Promise.all([refresh(), health()]);
  setInterval(refresh, 2000);
  setInterval(health, 5000);
}

document.addEventListener("DOMContentLoaded", init);

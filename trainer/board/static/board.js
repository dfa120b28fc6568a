// The board's page: lists what the server found, shows one card at a time, and refreshes on the
// server's "change" events. Text from files always goes in through textContent; only the
// server's SVG charts (whose text the server escapes) go in as markup.
"use strict";

const token = new URLSearchParams(location.search).get("token");
let current = null;          // {kind, path} of the open card, from location.hash
let lastDrawing = "";        // the drawing URL shown, so a refresh does not reload it
let refreshing = false, again = false;

function apiUrl(path, query) {
  const params = new URLSearchParams(query || {});
  if (token) params.set("token", token);
  const q = params.toString();
  return path + (q ? "?" + q : "");
}

async function getJSON(path, query) {
  const r = await fetch(apiUrl(path, query));
  if (!r.ok) throw new Error(r.status + ": " + (await r.text()));
  return r.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function num(v, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toPrecision(digits || 4);
}

function stateBadge(state, note) {
  const b = el("span", {class: "state " + state, text: state});
  if (note) b.title = note;
  return b;
}

function parseHash() {
  const m = /^#(run|grid|db|model)=(.*)$/.exec(location.hash);
  current = m ? {kind: m[1], path: decodeURIComponent(m[2])} : null;
}

function open(kind, path) {
  location.hash = kind + "=" + encodeURIComponent(path);
}

function listItems(ul, names, kind) {
  ul.replaceChildren(...names.map(name => {
    const li = el("li", {text: name, "data-path": name});
    if (current && current.kind === kind && current.path === name) li.classList.add("open");
    li.addEventListener("click", () => open(kind, name));
    return li;
  }));
  if (!names.length) ul.replaceChildren(el("li", {class: "empty", text: "none found"}));
}

function renderOverview(data) {
  document.getElementById("root").textContent = data.root;
  const body = document.querySelector("#run-table tbody");
  body.replaceChildren(...data.runs.map(row => {
    const tr = el("tr", {"data-path": row.path},
      el("td", {text: row.name}), el("td", {text: num(row.iteration)}), el("td", {text: num(row.loss)}),
      el("td", {text: num(row.best_accuracy)}), el("td", {text: num(row.lr, 3)}),
      el("td", {}, stateBadge(row.state, row.note)));
    if (current && current.kind === "run" && current.path === row.path) tr.classList.add("open");
    tr.addEventListener("click", () => open("run", row.path));
    return tr;
  }));
  document.getElementById("no-runs").hidden = data.runs.length > 0;
  listItems(document.getElementById("grid-list"), data.grids, "grid");
  listItems(document.getElementById("db-list"), data.databases, "db");
  listItems(document.getElementById("model-list"), data.models, "model");
  document.getElementById("status").textContent =
    `${data.runs.length} runs, ${data.grids.length} grids, ${data.databases.length} databases, ` +
    `${data.models.length} models` + (data.truncated ? " (folder too large: the search stopped early)" : "");
}

function chartBox(svgText, cls) {
  const box = el("div", {class: "chart-box " + (cls || "")});
  box.innerHTML = svgText;   // the server's SVG; its text is escaped there
  return box;
}

function errorLine(text) { return el("p", {class: "error-line", text: text}); }

function drawingBox(prototxt, card, canDraw) {
  if (!canDraw) return el("p", {class: "muted", text: "no drawing: Graphviz's dot program is not installed on the server"});
  const box = card.querySelector(".drawing") || el("div", {class: "drawing"});
  const src = apiUrl("/api/draw", {path: prototxt});
  if (src !== lastDrawing || !box.firstChild) {
    const img = el("img", {alt: "drawing of " + prototxt, src: src});
    img.addEventListener("error", () => box.replaceChildren(el("p", {class: "muted",
      text: "no drawing (Graphviz's dot is not installed, or the prototxt does not parse)"})));
    box.replaceChildren(img);
    lastDrawing = src;
  }
  return box;
}

function renderRun(card, data) {
  const row = data.row;
  const head = el("p", {}, stateBadge(row.state, row.note),
    el("span", {text: ` iteration ${num(row.iteration)}, loss ${num(row.loss)}, best test accuracy ${num(row.best_accuracy)}` +
      `, lr ${num(row.lr, 3)}` + (row.note ? ` (${row.note})` : "")}));
  const parts = [el("h3", {text: row.name}), head];
  if (data.error) parts.push(errorLine(data.error));
  for (const k of ["loss", "accuracy", "lr"]) if (data.charts[k]) parts.push(chartBox(data.charts[k], k));
  const counts = Object.entries(data.points).map(([k, v]) => `${k}: ${v}`).join(", ");
  if (counts) parts.push(el("p", {class: "muted points", text: "points: " + counts}));
  if (data.nets.length) {
    const old = card.querySelector(".drawing");
    parts.push(el("h4", {text: "net: " + data.nets[0]}), drawingBox(data.nets[0], old ? card : el("div"), data.can_draw));
  }
  card.replaceChildren(...parts);
}

function renderGrid(card, data) {
  const parts = [el("h3", {text: data.path})];
  if (data.error) { card.replaceChildren(...parts, errorLine(data.error)); return; }
  parts.push(el("p", {class: "muted", text: Object.entries(data.counts).map(([k, v]) => `${v} ${k}`).join(", ")}));
  parts.push(chartBox(data.figure, "grid-figure"));
  const cols = ["net", "family", "n", "split", "state", "iteration", "best_accuracy", "score"];
  const table = el("table", {id: "grid-table"}, el("thead", {}, el("tr", {}, ...cols.map(c => el("th", {text: c.replace("_", " ")})))));
  const body = el("tbody");
  for (const r of data.rows) {
    body.append(el("tr", {}, ...cols.map(c => c === "state" ? el("td", {}, stateBadge(r.state)) : el("td", {text: num(r[c])}))));
  }
  table.append(body);
  parts.push(table);
  card.replaceChildren(...parts);
}

function renderDb(card, data) {
  const parts = [el("h3", {text: data.path})];
  if (data.error) { card.replaceChildren(...parts, errorLine(data.error)); return; }
  parts.push(el("pre", {class: "summary", text: data.lines.join("\n")}), chartBox(data.histogram, "histogram"));
  if (data.has_sheet) {
    parts.push(el("img", {class: "sheet", alt: "contact sheet", src: apiUrl("/api/db/sheet", {path: data.path, v: data.stamp})}));
  }
  card.replaceChildren(...parts);
}

function renderModel(card, data) {
  const parts = [el("h3", {text: data.path})];
  if (data.error) { card.replaceChildren(...parts, errorLine(data.error)); return; }
  parts.push(el("p", {text: `deploy ${data.deploy}; weights ${data.weights[0]}` +
    (data.weights.length > 1 ? ` (newest of ${data.weights.length})` : "") +
    `; labels ${data.labels || "none"}; mean ${data.mean || "none"}` +
    `; preprocessing ${data.train_net ? "from " + data.train_net : "Caffe's classify.py defaults"}`}));
  const input = el("input", {type: "file", accept: "image/*"});
  const drop = el("div", {id: "drop"}, el("p", {text: "Drop an image here to classify it, or choose one: "}), input);
  const result = el("div", {id: "classify-result"});
  const send = async file => {
    result.replaceChildren(el("p", {class: "muted", text: "classifying " + file.name + "..."}));
    try {
      const r = await fetch(apiUrl("/api/classify", {path: data.path}),
        {method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"}});
      const text = await r.text();
      let answer;
      try { answer = JSON.parse(text); } catch (e) { answer = {error: r.status + ": " + text}; }
      if (answer.error) { result.replaceChildren(errorLine(answer.error)); return; }
      const table = el("table", {id: "top5"}, el("thead", {}, el("tr", {}, el("th", {text: "#"}), el("th", {text: "class"}),
        el("th", {text: "name"}), el("th", {text: "probability"}))));
      const body = el("tbody");
      for (const t of answer.top) body.append(el("tr", {}, el("td", {text: t.rank}), el("td", {text: t.class}),
        el("td", {text: t.name}), el("td", {text: t.prob.toFixed(4)})));
      table.append(body);
      result.replaceChildren(el("p", {text: file.name}), table);
    } catch (e) { result.replaceChildren(errorLine(String(e))); }
  };
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
  });
  input.addEventListener("change", () => { if (input.files.length) send(input.files[0]); });
  parts.push(drop, result, el("h4", {text: "net: " + data.deploy}), drawingBox(data.deploy, el("div"), data.can_draw));
  card.replaceChildren(...parts);
}

const RENDER = {run: ["/api/run", renderRun], grid: ["/api/grid", renderGrid], db: ["/api/db", renderDb],
                model: ["/api/model", renderModel]};

async function refreshCard(changed) {
  const card = document.getElementById("detail");
  if (!current) { card.hidden = true; return; }
  card.hidden = false;
  // A model card holds the classify result and the file picker: redraw it only when opened.
  if (changed && current.kind === "model" && card.dataset.path === "model:" + current.path) return;
  const want = current, key = current.kind + ":" + current.path;
  const [path, render] = RENDER[want.kind];
  // Another card may be opened while this one's data is on its way (a slow database card, then a
  // click on a model): its answer is dropped, and the refresh queued by that click draws the new card.
  // Drawn, it was labelled with the new card's name, which then never drew.
  const stale = () => current !== want;
  try {
    const data = await getJSON(path, {path: want.path});
    if (stale()) return;
    if (card.dataset.path !== key) { card.replaceChildren(); lastDrawing = ""; }
    card.dataset.path = key;
    render(card, data);
  } catch (e) {
    if (stale()) return;
    card.replaceChildren(el("h3", {text: want.path}), errorLine(String(e.message || e)));
  }
}

async function refresh(changed) {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    renderOverview(await getJSON("/api/overview"));
    await refreshCard(changed);
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach the board: " + (e.message || e);
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(true); }
  }
}

function listen() {
  const live = document.getElementById("live");
  const source = new EventSource(apiUrl("/api/events"));
  source.addEventListener("change", () => refresh(true));
  source.addEventListener("open", () => { live.textContent = "live"; live.classList.remove("off"); });
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.classList.add("off"); });
}

window.addEventListener("hashchange", () => { parseHash(); refresh(false); });
parseHash();
refresh(false).then(listen);

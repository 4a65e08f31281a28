// ld2 dashboard: the studies and workers of the API that serves this page, refreshed every
// second by polling (no page reload). Hash routes: "#/" the overview, "#/study/<id>" a study.
//
// Every call goes to this page's own server, with the bearer token when the API wants one:
// asked once, kept in sessionStorage (or localStorage with "remember"), never sent elsewhere.

import {
  Colormap, HeatMap, LinePlot, MAP_LIMIT, ProgressChart, SIDE_LIMIT, StudyValues, axisValue,
} from "./plots.js";

const POLL_MS = 1000;
const TOKEN_KEY = "ld2.dashboard.token";

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text; // never innerHTML: names are data
  return e;
}

// -- the token -------------------------------------------------------------------------------

function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";
}

function setToken(token, remember) {
  sessionStorage.setItem(TOKEN_KEY, token);
  if (remember) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_KEY);
}

// -- calling the API -------------------------------------------------------------------------

class Unauthorized extends Error {}

class Offline extends Error {}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, { method = "GET", params = {}, signal } = {}) {
  const url = new URL(path, document.baseURI); // relative: works under a proxy's prefix too
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(url, { method, headers, signal, cache: "no-store", credentials: "omit" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Offline(String(err));
  }
  if (resp.status === 401) throw new Unauthorized();
  let body = null;
  try {
    body = await resp.json();
  } catch (err) {
    if (err.name === "AbortError") throw err;
  }
  if (!resp.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, detail);
  }
  return body;
}

// -- the frame: views, banner, liveness ------------------------------------------------------

let polls = 0;
let current = null;

function showView(name) {
  for (const v of document.querySelectorAll("main > .view")) v.hidden = v.id !== `${name}-view`;
  document.body.dataset.view = name;
}

function setLive(ok, text) {
  const live = $("live");
  live.textContent = text || (ok ? `live · ${new Date().toLocaleTimeString("en-GB")}` : "not live");
  live.className = `live ${ok ? "ok" : "bad"}`;
}

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

function needToken(refused) {
  if (current) current.stop();
  current = null;
  banner("");
  showView("token");
  setLive(false, "token needed");
  const msg = $("token-message");
  msg.textContent = refused
    ? "The API refused this token: it is wrong, or it has changed. Enter the right one."
    : "This API requires a token. Enter it to see the studies.";
  msg.classList.toggle("error", refused);
  document.body.dataset.token = refused ? "refused" : "needed";
  $("forget-token").hidden = true;
  const input = $("token-input");
  input.value = "";
  input.focus();
}

function unauthorized() {
  const hadToken = Boolean(getToken());
  forgetToken(); // a refused token is not kept: the next visit asks again
  needToken(hadToken);
}

function route() {
  if (current) current.stop();
  const m = location.hash.match(/^#\/study\/(.+)$/);
  current = m ? new StudyPage(decodeURIComponent(m[1])) : new OverviewPage();
  $("forget-token").hidden = !getToken();
  $("plot-card").hidden = true;
  $("answer").hidden = true;
  current.start();
}

// -- formatting ------------------------------------------------------------------------------

const fmtInt = (n) => (n === null || n === undefined ? "∞" : Number(n).toLocaleString("en-US"));

function fmtRate(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 100) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(v >= 10 ? 1 : 2);
}

function fmtDuration(sec) {
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
  return `${Math.floor(sec / 86400)} d ${Math.floor((sec % 86400) / 3600)} h`;
}

function fmtEta(eta, now) {
  if (!eta || eta === "unpredictable") return "–";
  const sec = (Date.parse(eta) - Date.parse(now)) / 1000;
  return Number.isFinite(sec) ? `in ${fmtDuration(sec)}` : "–";
}

const clock = (d) => d.toLocaleTimeString("en-GB"); // 13:04:05

function fmtTime(ts) {
  if (!ts) return "–";
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  if (d.toDateString() === new Date().toDateString()) return clock(d);
  return `${d.toLocaleDateString("en-CA")} ${clock(d).slice(0, 5)}`; // 2024-05-01 13:04
}

function badge(status) {
  const b = el("span", `badge ${status}`, status);
  b.dataset.status = status;
  return b;
}

function progressBar(done, failed, total) {
  const wrap = el("div");
  const bar = el("div", "bar");
  const fill = el("div", "fill");
  const fail = el("div", "fail");
  if (total) {
    fill.style.width = `${(100 * done) / total}%`;
    fail.style.left = `${(100 * done) / total}%`;
    fail.style.width = `${(100 * failed) / total}%`;
  }
  bar.append(fill, fail);
  const pct = total ? ` (${((100 * done) / total).toFixed(1)} %)` : "";
  wrap.append(bar, el("div", "bar-text", `${fmtInt(done)} / ${fmtInt(total)}${pct}`));
  return wrap;
}

// -- a polled page -----------------------------------------------------------------------------

class Page {
  constructor() {
    this.stopped = false;
    this.ctrl = new AbortController();
    this.signal = this.ctrl.signal;
    this.timer = null;
  }

  start() {
    this.loop();
  }

  stop() {
    this.stopped = true;
    this.ctrl.abort();
    clearTimeout(this.timer);
  }

  get(path, params) {
    return api(path, { params, signal: this.signal });
  }

  async loop() {
    if (this.stopped || this.busy) return;
    this.busy = true;
    let delay = POLL_MS;
    try {
      const soon = await this.poll();
      if (this.stopped) return;
      polls += 1;
      document.body.dataset.polls = String(polls);
      document.dispatchEvent(new CustomEvent("ld2:polled", { detail: polls }));
      setLive(true);
      banner("");
      if (soon) delay = 50; // more landed results are waiting
    } catch (err) {
      if (this.stopped || err.name === "AbortError") return;
      if (err instanceof Unauthorized) {
        unauthorized();
        return;
      }
      setLive(false);
      if (err instanceof Offline) banner("Cannot reach the API: retrying every second…");
      else if (err instanceof ApiError) {
        if (this.failed(err)) return;
        banner(`The API answered ${err.status}: ${err.detail}`);
      } else {
        console.error(err);
        banner(`Error: ${err.message}`);
      }
    } finally {
      this.busy = false;
    }
    if (!this.stopped) this.timer = setTimeout(() => this.loop(), delay);
  }

  /** Poll now (after a control), unless a poll is under way. */
  refresh() {
    if (this.busy || this.stopped) return;
    clearTimeout(this.timer);
    this.loop();
  }

  /** Handle an API error; true: stop polling. */
  failed() {
    return false;
  }
}

// -- the overview --------------------------------------------------------------------------------

const workerSeen = new Map(); // worker id → when this page last saw it active (ms)

class OverviewPage extends Page {
  async poll() {
    const [studies, progress, workers] = await Promise.all([
      this.get("studies"),
      this.get("status/progress"),
      this.get("dashboard/workers"),
    ]);
    if (this.stopped) return false;
    showView("overview");
    this.studies(studies, progress);
    this.workers(workers);
    return false;
  }

  studies(studies, progress) {
    const pace = new Map(progress.progress_summaries.map((p) => [p.study_id, p]));
    const rows = studies.map((s) => {
      const sum = s.summary;
      const p = pace.get(sum.study_id);
      const tr = el("tr");
      tr.dataset.studyId = sum.study_id;
      const link = el("a", null, sum.name ?? sum.study_id);
      link.href = `#/study/${encodeURIComponent(sum.study_id)}`;
      const name = el("td");
      name.append(link);
      const status = el("td");
      status.append(badge(s.status));
      const bar = el("td");
      bar.append(progressBar(sum.done_grids, s.failed_grids, sum.total_grids));
      const eta = s.status === "done" ? "done" : s.status === "paused" ? "paused" : p ? fmtEta(p.eta, progress.now) : "–";
      tr.append(
        name, status, bar,
        el("td", "num", p && s.status !== "done" ? fmtRate(p.grid_velocity) : "–"),
        el("td", null, eta),
        el("td", "num", fmtInt(s.failed_grids)),
        el("td", "num", fmtInt(s.reserved_grids)),
        el("td", null, sum.study_strategy.type),
      );
      return tr;
    });
    $("studies").tBodies[0].replaceChildren(...rows);
    $("no-studies").hidden = rows.length > 0;
  }

  workers(view) {
    const now = Date.now();
    const rows = view.workers.map((w) => {
      if (w.active) workerSeen.set(w.worker_id, now);
      const seen = workerSeen.get(w.worker_id);
      let last;
      if (w.last_seen) {
        const ago = (Date.parse(view.now) - Date.parse(w.last_seen)) / 1000;
        last = ago < 5 ? "now" : `${fmtDuration(ago)} ago`;
      } else if (w.active) last = `within ${view.recent_sec} s`;
      else if (seen) last = `about ${fmtDuration((now - seen) / 1000 + view.recent_sec)} ago`;
      else last = `within ${fmtDuration(view.cutoff_sec)}`;
      const tr = el("tr");
      tr.dataset.workerId = w.worker_id;
      const who = el("td", null, w.name || w.worker_id);
      if (w.name) who.append(" ", el("span", "muted small", w.worker_id.slice(0, 8)));
      who.title = `worker id ${w.worker_id}`;
      tr.append(
        who,
        el("td", null, last),
        el("td", "num", String(w.trials)),
        el("td", "num", fmtRate(w.recent_points_per_sec)),
        el("td", "num", fmtRate(w.points_per_sec)),
        el("td", null, w.studies.join(", ")),
      );
      return tr;
    });
    $("workers").tBodies[0].replaceChildren(...rows);
    $("no-workers").hidden = rows.length > 0;
  }
}

// -- a study -----------------------------------------------------------------------------------

let colormap = null; // the shared colour map, fetched once

class StudyPage extends Page {
  constructor(id) {
    super();
    this.id = id;
    this.view = null; // /dashboard/study
    this.viewKey = null;
    this.viewAt = 0;
    this.failuresSeen = null;
    this.cursor = null;
    this.data = null;
    this.plot = null;
    this.chart = new ProgressChart($("progress-chart"));
    this.shown = false;
  }

  stop() {
    super.stop();
    $("hover").hidden = true;
  }

  async poll() {
    const info = await this.get("study/info", { study_id: this.id });
    // The study's view (axes, answer) again when its status or answer changed; a minimize's
    // best point moves often while it runs: at most every 5 s then (its value is looked up).
    const key = `${info.status}|${info.hit_flat_index}`;
    const moved = this.view && this.view.strategy === "minimize"
      && (info.best_flat_index ?? null) !== (this.view.answer?.flat ?? null);
    if (!this.view || key !== this.viewKey || (moved && Date.now() - this.viewAt > 5000)) {
      this.view = await this.get("dashboard/study", { study_id: this.id });
      this.viewKey = key;
      this.viewAt = Date.now();
    }
    if (!this.shown) await this.setup();
    let progress = null;
    if (info.status !== "done") {
      const all = await this.get("status/progress");
      progress = all.progress_summaries.find((p) => p.study_id === this.id) || null;
      if (progress) progress.now = all.now;
    }
    if (info.failed_grids !== this.failuresSeen) {
      this.failures(await this.get("dashboard/failures", { study_id: this.id }));
      this.failuresSeen = info.failed_grids;
    }
    let soon = false;
    if (this.data) {
      const landed = await this.get("study/landed", { study_id: this.id, after: this.cursor });
      soon = this.land(landed);
    }
    if (this.stopped) return false;
    if (info.status === "done" && !soon) this.chooseScale();
    this.render(info, progress);
    return soon;
  }

  failed(err) {
    if (err.status !== 404) return false;
    if (!this.shown) {
      $("study-title").textContent = this.id;
      $("study-sub").textContent = "";
      $("study-status").textContent = "";
      $("study-status").className = "badge";
      for (const id of ["stats", "progress-card", "failures-card", "plot-card", "answer"]) $(id).hidden = true;
    }
    showView("study");
    const gone = $("study-gone");
    gone.textContent = "This study no longer exists: it was deleted or cancelled.";
    gone.hidden = false;
    for (const b of ["btn-pause", "btn-resume", "btn-cancel", "btn-delete"]) $(b).disabled = true;
    setLive(true);
    return true;
  }

  /** Build the page for this study once: title, controls, the plot. */
  async setup() {
    const v = this.view;
    if (!colormap) colormap = new Colormap(await this.get("dashboard/colormap"));
    if (this.stopped) return;
    this.shown = true;
    showView("study");
    $("study-gone").hidden = true;
    for (const id of ["stats", "progress-card", "failures-card"]) $(id).hidden = false;
    $("study-title").textContent = v.label;
    const dims = v.axes.map((a) => `${a.name} (${a.kind}, ${a.size ?? "∞"})`).join(" × ");
    $("study-sub").textContent = `${v.strategy} · ${v.result_type} ${v.value_type} results · ${dims} · id ${v.study_id}`;
    $("failures").tBodies[0].replaceChildren();
    $("failures").hidden = true;
    $("no-failures").hidden = false;
    $("fail-count").textContent = "";
    for (const [id, action] of [["btn-pause", "pause"], ["btn-resume", "resume"],
      ["btn-cancel", "cancel"], ["btn-delete", "delete"]]) {
      $(id).addEventListener("click", () => this.control(action), { signal: this.signal });
    }
    this.setupPlot();
  }

  setupPlot() {
    const v = this.view;
    const card = $("plot-card");
    card.hidden = false;
    $("heat").hidden = true;
    $("line").hidden = true;
    $("slice-controls").hidden = true;
    $("slice-controls").replaceChildren();
    $("log-box").hidden = true;
    card.dataset.landed = "0";
    const note = $("plot-note");
    $("plot-title").textContent = "Results";
    const finite = v.total !== null;
    if (!finite) {
      note.textContent = "The first axis is infinite: no plot (the answer and progress are above).";
      return;
    }
    if (v.total > MAP_LIMIT) {
      note.textContent = `${fmtInt(v.total)} points: more than this page keeps (${fmtInt(MAP_LIMIT)}); no plot. Use ld2 result -o NAME.png.`;
      return;
    }
    this.data = new StudyValues(v.total, v.value_type);
    const vecNote = v.result_type === "vector" ? " Vector results are coloured by their first component." : "";
    if (v.axes.length === 1) {
      $("plot-title").textContent = `Results by ${v.axes[0].name}`;
      $("line").hidden = false;
      note.textContent = `Each point as it lands; missing points leave gaps.${vecNote}`;
      this.plot = new LinePlot(v, this.data);
      this.hover($("lineplot"), (e) => this.plot.describe(e.clientX));
    } else {
      this.plot = new HeatMap(v, colormap, this.data);
      const box = $("log-box");
      const check = $("log-scale");
      box.hidden = v.value_type === "bool";
      check.checked = false;
      check.addEventListener("change", () => {
        this.scaleChosen = true; // the reader's choice stands
        this.plot.setLog(check.checked);
      }, { signal: this.signal });
      this.sliceControls(vecNote);
      this.hover($("heatmap"), (e) => this.plot.describe(e.clientX, e.clientY));
    }
    this.cursor = null;
  }

  /** Row and column axes (any two; the first and second by default) and the other axes' indices. */
  sliceControls(vecNote) {
    const v = this.view;
    const box = $("slice-controls");
    const state = { ra: 0, ca: 1, fixed: v.axes.map(() => 0) };
    const apply = () => {
      const rows = v.axes[state.ra].size;
      const cols = v.axes[state.ca].size;
      const ok = state.ra !== state.ca && rows <= SIDE_LIMIT && cols <= SIDE_LIMIT;
      $("heat").hidden = !ok;
      const fixedText = v.axes.map((a, k) => (k === state.ra || k === state.ca ? null : `${a.name} = ${axisValue(a, state.fixed[k])}`)).filter(Boolean);
      const ra = v.axes[state.ra];
      const ca = v.axes[state.ca];
      $("plot-title").textContent = v.axes.length === 2 ? "Heat map" : `Heat map: a slice of ${v.axes.length} axes`;
      if (!ok) {
        $("plot-note").textContent = state.ra === state.ca
          ? "Choose two different axes."
          : `A side of this slice is longer than ${fmtInt(SIDE_LIMIT)} points: no map.`;
        return;
      }
      $("plot-note").textContent =
        `Rows: ${ra.name} (axis ${state.ra}); the top row is ${ra.name} = ${axisValue(ra, 0)}, its start. ` +
        `Columns: ${ca.name} (axis ${state.ca}); the left column is ${ca.name} = ${axisValue(ca, 0)}. ` +
        "Up is the start of the row axis, as in the PNG of ld2 result." +
        (fixedText.length ? ` Fixed: ${fixedText.join(", ")}.` : "") +
        " Grey: not computed yet (or NaN)." + vecNote;
      this.plot.setSlice(state.ra, state.ca, state.fixed);
    };
    if (v.axes.length > 2) {
      box.hidden = false;
      const pick = (label, key) => {
        const lab = el("label", null, `${label} `);
        const sel = el("select");
        v.axes.forEach((a, k) => {
          const o = el("option", null, `${a.name} (${a.size})`);
          o.value = String(k);
          sel.append(o);
        });
        sel.value = String(state[key]);
        sel.addEventListener("change", () => {
          state[key] = Number(sel.value);
          sliders();
          apply();
        });
        lab.append(sel);
        box.append(lab);
      };
      pick("rows", "ra");
      pick("columns", "ca");
      const sliderBox = el("span", "slice-controls");
      box.append(sliderBox);
      const sliders = () => {
        sliderBox.replaceChildren();
        v.axes.forEach((a, k) => {
          if (k === state.ra || k === state.ca) return;
          const lab = el("label", null, `${a.name} `);
          const input = el("input");
          input.type = "range";
          input.min = "0";
          input.max = String(a.size - 1);
          input.value = String(state.fixed[k]);
          input.dataset.axis = String(k);
          const shown = el("span", null, axisValue(a, state.fixed[k]));
          input.addEventListener("input", () => {
            state.fixed[k] = Number(input.value);
            shown.textContent = axisValue(a, state.fixed[k]);
            apply();
          });
          lab.append(input, " ", shown);
          sliderBox.append(lab);
        });
      };
      sliders();
    }
    apply();
  }

  hover(canvas, describe) {
    const tip = $("hover");
    canvas.addEventListener("mousemove", (e) => {
      const text = describe(e);
      if (!text) {
        tip.hidden = true;
        return;
      }
      tip.textContent = text;
      tip.hidden = false;
      tip.style.left = `${Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8)}px`;
      tip.style.top = `${Math.min(e.clientY + 14, window.innerHeight - tip.offsetHeight - 8)}px`;
    }, { signal: this.signal });
    canvas.addEventListener("mouseleave", () => { tip.hidden = true; }, { signal: this.signal });
  }

  /** Once a study is done: the PNG's scale (log when ld2.colormap.suits_log says so), unless
   * the reader already chose one. */
  chooseScale() {
    if (this.scaleChosen || !(this.plot instanceof HeatMap) || !this.data.count) return;
    this.scaleChosen = true;
    if (this.view.value_type === "bool" || !this.data.suitsLog()) return;
    $("log-scale").checked = true;
    this.plot.setLog(true);
  }

  /** Write what landed: everything anew on a reset, else only the new blocks' pixels (all of
   * the slice once if the colour range grew). True when more is probably waiting. */
  land(landed) {
    if (landed.reset) this.data.clear();
    let widened = false;
    for (const b of landed.blocks) widened = this.data.add(b.start, b.values) || widened;
    this.cursor = landed.cursor;
    const plot = this.plot;
    if (plot instanceof HeatMap && !$("heat").hidden) {
      if (landed.reset || widened) plot.repaint();
      else for (const b of landed.blocks) plot.paintRange(b.start, b.values.length);
      plot.drawBar();
    } else if (plot instanceof LinePlot && (landed.reset || landed.blocks.length)) {
      plot.repaint();
    }
    $("plot-card").dataset.landed = String(this.data.count);
    return landed.blocks.length >= 1000;
  }

  render(info, progress) {
    const sum = info.summary;
    const total = sum.total_grids;
    const status = $("study-status");
    status.textContent = info.status;
    status.className = `badge ${info.status}`;
    status.dataset.status = info.status;
    const done = $("st-done");
    const pct = total ? ` (${((100 * sum.done_grids) / total).toFixed(1)} %)` : "";
    done.textContent = `${fmtInt(sum.done_grids)} / ${fmtInt(total)}${pct}`;
    done.dataset.done = String(sum.done_grids);
    $("st-failed").textContent = fmtInt(info.failed_grids);
    $("st-flight").textContent = fmtInt(info.reserved_grids);
    $("st-flight").dataset.reserved = String(info.reserved_grids);
    $("st-velocity").textContent = progress ? fmtRate(progress.grid_velocity) : "–";
    $("st-eta").textContent = info.status === "done" ? "done"
      : info.status === "paused" ? "paused" : progress ? fmtEta(progress.eta, progress.now) : "–";
    $("st-workers").textContent = info.live_workers ?? "–";
    $("st-started").textContent = fmtTime(info.started_timestamp);
    $("st-finished").textContent = fmtTime(info.finished_timestamp);
    const active = info.status !== "done";
    $("btn-pause").disabled = !(info.status === "wait" || info.status === "running");
    $("btn-resume").disabled = info.status !== "paused";
    $("btn-cancel").disabled = !active;
    $("btn-delete").disabled = false;
    this.chart.add(sum.done_grids, info.failed_grids, total);
    this.chart.repaint();
    this.answer(info);
  }

  answer(info) {
    const v = this.view;
    const box = $("answer");
    if (v.strategy === "all_calculation") {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const a = v.answer;
    const params = a ? a.params.map((p, k) => `${v.axes[k].name} = ${p}`).join(", ") : "";
    const value = a && a.value !== null ? a.value : "?";
    const title = $("answer-title");
    const body = $("answer-body");
    if (v.strategy === "find_exact") {
      const target = v.target ? v.target.join(", ") : "?";
      title.textContent = `find_exact: the point whose result is ${target}`;
      if (a) body.textContent = `found ${params} (result ${value})`;
      else if (info.status === "done") body.textContent = "not found: the whole space was searched";
      else body.textContent = `searching… ${fmtInt(info.summary.done_grids)} points checked`;
    } else {
      title.textContent = info.status === "done" ? "minimize: the minimum" : "minimize: the best point so far";
      body.textContent = a ? `${value} at ${params}` : "nothing registered yet";
    }
    box.dataset.answer = a ? JSON.stringify(a) : "";
  }

  failures(list) {
    const axes = this.view.axes;
    const point = (vals) => vals.map((p, k) => `${axes[k].name} = ${p}`).join(", ");
    const rows = list.map((f) => {
      const tr = el("tr");
      const params = f.last ? `${point(f.first)} … ${point(f.last)}` : point(f.first);
      tr.append(
        el("td", "num", String(f.start)),
        el("td", "num", fmtInt(f.count)),
        el("td", null, params),
        el("td", "num", String(f.attempts)),
        el("td", "error", f.error || "(no message)"),
      );
      return tr;
    });
    $("failures").tBodies[0].replaceChildren(...rows);
    $("failures").hidden = rows.length === 0;
    $("no-failures").hidden = rows.length > 0;
    const points = list.reduce((n, f) => n + f.count, 0);
    const plural = (n, word) => `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;
    $("fail-count").textContent = list.length
      ? `(${plural(points, "point")} in ${plural(list.length, "range")})` : "";
  }

  async control(action) {
    const label = this.view ? this.view.label : this.id;
    const params = { study_id: this.id };
    if (action === "cancel" && !confirm(`Cancel the study "${label}"? Its results are removed and its name is freed.`)) return;
    if (action === "delete" && !confirm(`Delete the study "${label}" with all its results? This cannot be undone.`)) return;
    const buttons = ["btn-pause", "btn-resume", "btn-cancel", "btn-delete"].map($);
    buttons.forEach((b) => { b.disabled = true; });
    try {
      if (action === "cancel") await api("study", { method: "DELETE", params });
      else await api(`study/${action}`, { method: "POST", params });
      if (action === "cancel" || action === "delete") {
        location.hash = "#/";
        return;
      }
      this.refresh(); // show the new state now
    } catch (err) {
      if (err instanceof Unauthorized) unauthorized();
      else banner(`Could not ${action} the study: ${err.detail || err.message}`);
      buttons.forEach((b) => { b.disabled = false; });
    }
  }
}

// -- start -------------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  setToken(token, $("token-remember").checked);
  delete document.body.dataset.token;
  route();
});

$("forget-token").addEventListener("click", () => {
  forgetToken();
  needToken(false);
});

window.addEventListener("hashchange", route);
route();

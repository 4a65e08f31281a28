// ld2 dashboard: values, the shared colour map and the canvases of a study's page.
//
// A study's grid is row-major (the last axis fastest): the point at flat index f has index
// floor(f / stride[k]) % size[k] on axis k, stride[k] being the product of the later sizes.
// The heat map of two axes (rows, columns) is an ImageData of rows × columns pixels, one per
// point; each poll writes only the pixels of the blocks that landed, unless the colour range
// grew, when the whole slice is recoloured once.

export const MAP_LIMIT = 1 << 22; // points a study may have for the page to keep its values
export const SIDE_LIMIT = 16384; // the longest canvas side drawn

// -- values --------------------------------------------------------------------------------

/** A landed JSON value as a number: bools 0/1, "nan"/"inf"/"-inf", vectors by their first
 * component (as the colour map colours them). */
export function toNumber(v) {
  if (Array.isArray(v)) return v.length ? toNumber(v[0]) : NaN;
  if (typeof v === "number") return v;
  if (typeof v === "boolean") return v ? 1 : 0;
  if (v === "nan" || v === null || v === undefined) return NaN;
  if (v === "inf") return Infinity;
  if (v === "-inf") return -Infinity;
  return Number(v);
}

/** A float as Python writes it (repr): "1.0" rather than "1", "1e+16" beyond 10^16. */
export function pyFloat(x) {
  if (Number.isNaN(x)) return "nan";
  if (x === Infinity) return "inf";
  if (x === -Infinity) return "-inf";
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return Object.is(x, -0) ? "-0.0" : x.toFixed(1);
  const s = String(x);
  return s.replace(/e([+-])(\d)$/, "e$10$2");
}

/** A value of a `value_type` for display. */
export function showValue(x, kind) {
  if (kind === "bool") return Number.isNaN(x) ? "nan" : x ? "true" : "false";
  if (kind === "int") return Number.isFinite(x) ? String(x) : pyFloat(x);
  return pyFloat(x);
}

/** A short label for axis ticks and the colour bar. */
export function shortNumber(x) {
  if (!Number.isFinite(x)) return pyFloat(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(3).replace(/\.?0+e/, "e");
  return String(Number(x.toPrecision(5)));
}

/** Axis k's value at index i, exactly as ld2 computes it, as text. */
export function axisValue(axis, i) {
  if (axis.kind === "float") return pyFloat(Number(axis.start) + i * Number(axis.step));
  if (axis.kind === "int") return (BigInt(axis.start) + BigInt(i) * BigInt(axis.step)).toString();
  return (axis.start === "true" ? 1 : 0) + i ? "true" : "false";
}

/** Axis k's value at index i as a number (for tick labels). */
export function axisNumber(axis, i) {
  if (axis.kind === "bool") return (axis.start === "true" ? 1 : 0) + i;
  return Number(axis.start) + i * Number(axis.step);
}

/** Every landed value of a finite study by flat index (NaN where none landed yet), and the
 * range of the finite ones: the colour map's lo and hi. */
export class StudyValues {
  constructor(total, valueType) {
    this.total = total;
    this.fixedRange = valueType === "bool";
    this.values = new Float64Array(total);
    this.have = new Uint8Array(total);
    this.clear();
  }

  clear() {
    this.values.fill(NaN);
    this.have.fill(0);
    this.count = 0;
    this.min = Infinity;
    this.max = -Infinity;
    this.minPos = Infinity; // the smallest finite value above 0 (a log scale's lo)
  }

  /** Store a block; true if the colour range (linear or log) changed. */
  add(start, values) {
    const before = [this.min, this.max, this.minPos];
    const n = Math.min(values.length, this.total - start);
    for (let i = 0; i < n; i++) {
      const f = start + i;
      const v = toNumber(values[i]);
      if (!this.have[f]) {
        this.have[f] = 1;
        this.count++;
      }
      this.values[f] = v;
      if (Number.isFinite(v)) {
        if (v < this.min) this.min = v;
        if (v > this.max) this.max = v;
        if (v > 0 && v < this.minPos) this.minPos = v;
      }
    }
    return before[0] !== this.min || before[1] !== this.max || before[2] !== this.minPos;
  }

  /** [lo, hi] as ld2.colormap.rgb takes them: the finite min and max (0 and 1 for booleans,
   * or when nothing finite landed yet). */
  range(log = false) {
    if (log) return this.minPos <= this.max ? [this.minPos, this.max] : [1, 10];
    if (this.fixedRange || this.min > this.max) return [0, 1];
    return [this.min, this.max];
  }

  /** ld2.colormap.suits_log: every finite value above 0, the largest at least 100 times the
   * smallest, and the median in the lowest tenth of the range (what ld2's PNG decides by). */
  suitsLog() {
    if (this.fixedRange || !(this.min > 0) || this.max < 100 * this.min) return false;
    const seen = this.values.filter((v) => Number.isFinite(v)).sort();
    const n = seen.length;
    const median = n % 2 ? seen[(n - 1) / 2] : (seen[n / 2 - 1] + seen[n / 2]) / 2;
    return median - this.min < 0.1 * (this.max - this.min);
  }
}

// -- the colour map ------------------------------------------------------------------------

export class Colormap {
  constructor(json) {
    this.size = json.lut.length;
    this.lut = json.lut;
    this.missing = json.missing;
    this.flat = new Uint8ClampedArray((this.size + 1) * 3); // the table, then the missing colour
    json.lut.forEach((c, k) => this.flat.set(c, k * 3));
    this.flat.set(json.missing, this.size * 3);
    this.firstAxisIsRows = json.first_axis_is_rows;
  }

  /** ld2.colormap's rule: index floor(t * 256) of t = (v - lo) / (hi - lo), clipped; the middle
   * entry when lo == hi (the ends for ±inf); `size` (the missing colour) for NaN. */
  index(v, lo, hi) {
    if (Number.isNaN(v)) return this.size;
    if (hi !== lo) {
      const k = Math.floor(((v - lo) / (hi - lo)) * this.size);
      return k < 0 ? 0 : k >= this.size ? this.size - 1 : k;
    }
    if (v === Infinity) return this.size - 1;
    if (v === -Infinity) return 0;
    return this.size >> 1;
  }

  /** The scale `put` takes: the range [lo, hi], in log10 for a log scale. */
  scale(lo, hi, log) {
    return log ? { lo: Math.log10(lo), hi: Math.log10(hi), log } : { lo, hi, log };
  }

  /** v's colour on `scale` (log: log10 of v; at or below 0 the first colour, NaN missing). */
  indexOn(v, scale) {
    if (scale.log) v = v > 0 ? Math.log10(v) : Number.isNaN(v) ? NaN : -Infinity;
    return this.index(v, scale.lo, scale.hi);
  }

  /** Write v's colour on `scale` at byte offset o of RGBA pixel data. */
  put(data, o, v, scale) {
    const k = this.indexOn(v, scale) * 3;
    data[o] = this.flat[k];
    data[o + 1] = this.flat[k + 1];
    data[o + 2] = this.flat[k + 2];
    data[o + 3] = 255;
  }

  css(k) {
    const c = k < 0 ? this.missing : this.lut[k];
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }
}

// -- the heat map --------------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function tickIndices(n) {
  const out = new Set([0, Math.round((n - 1) / 4), Math.round((n - 1) / 2),
    Math.round((3 * (n - 1)) / 4), n - 1]);
  return [...out].filter((i) => i >= 0 && i < n).sort((a, b) => a - b);
}

/** A 2-D slice of a study's values on a canvas, one pixel per point. */
export class HeatMap {
  constructor(study, cmap, data) {
    this.study = study;
    this.cmap = cmap;
    this.data = data;
    this.axes = study.axes;
    this.sizes = study.axes.map((a) => a.size);
    this.strides = new Array(this.sizes.length).fill(1);
    for (let k = this.sizes.length - 2; k >= 0; k--) this.strides[k] = this.strides[k + 1] * this.sizes[k + 1];
    this.canvas = document.getElementById("heatmap");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: false });
    this.bar = document.getElementById("colorbar");
    this.lo = 0;
    this.hi = 1;
    this.log = false;
    this.logWanted = false;
    this.drawBar();
  }

  /** Show the slice of axes `rowAxis` (rows, down) × `colAxis` (columns, across), the other
   * axes at the indices `fixed[k]`. */
  setSlice(rowAxis, colAxis, fixed) {
    this.ra = rowAxis;
    this.ca = colAxis;
    this.fixed = fixed.slice();
    this.rows = this.sizes[rowAxis];
    this.cols = this.sizes[colAxis];
    this.rs = this.strides[rowAxis];
    this.cs = this.strides[colAxis];
    this.base = 0;
    for (let k = 0; k < this.sizes.length; k++) {
      if (k !== rowAxis && k !== colAxis) this.base += fixed[k] * this.strides[k];
    }
    // Row-major 2-D: the pixel index is the flat index itself.
    this.direct = this.sizes.length === 2 && rowAxis === 0 && colAxis === 1;
    this.canvas.width = this.cols;
    this.canvas.height = this.rows;
    this.image = this.ctx.createImageData(this.cols, this.rows);
    this.layout();
    this.repaint();
  }

  layout() {
    const card = document.getElementById("plot-card");
    const avail = Math.max(200, Math.min(680, (card.clientWidth || 900) - 240));
    let scale = Math.min(avail / this.cols, avail / this.rows, 16);
    let w = this.cols * scale;
    let h = this.rows * scale;
    w = Math.max(w, Math.min(avail, 160)); // a very thin grid is stretched to be seen
    h = Math.max(h, Math.min(avail, 120));
    this.canvas.style.width = `${Math.round(w)}px`;
    this.canvas.style.height = `${Math.round(h)}px`;
    this.shown = { w: Math.round(w), h: Math.round(h) };
    this.bar.style.height = `${Math.max(40, this.shown.h - 44)}px`;
    this.labels();
  }

  labels() {
    const ra = this.axes[this.ra];
    const ca = this.axes[this.ca];
    const rowTicks = document.getElementById("row-ticks");
    const colTicks = document.getElementById("col-ticks");
    rowTicks.replaceChildren();
    colTicks.replaceChildren();
    rowTicks.style.height = `${this.shown.h}px`;
    for (const i of tickIndices(this.rows)) {
      const t = el("span", "tick", shortNumber(axisNumber(ra, i)));
      t.style.top = `${((i + 0.5) / this.rows) * this.shown.h}px`;
      t.title = `${ra.name} = ${axisValue(ra, i)} (row ${i})`;
      rowTicks.append(t);
    }
    for (const i of tickIndices(this.cols)) {
      const t = el("span", "tick", shortNumber(axisNumber(ca, i)));
      t.style.left = `${((i + 0.5) / this.cols) * this.shown.w}px`;
      t.title = `${ca.name} = ${axisValue(ca, i)} (column ${i})`;
      colTicks.append(t);
    }
    const rowDir = axisNumber(ra, Math.max(this.rows - 1, 0)) >= axisNumber(ra, 0) ? "grows" : "falls";
    const colDir = axisNumber(ca, Math.max(this.cols - 1, 0)) >= axisNumber(ca, 0) ? "grows" : "falls";
    document.getElementById("row-label").textContent = `${ra.name} ↓ (${rowDir} downwards)`;
    const colLabel = document.getElementById("col-label");
    colLabel.textContent = `${ca.name} → (${colDir} rightwards)`;
  }

  /** A log (or linear) scale from now on; the slice is recoloured. */
  setLog(log) {
    this.logWanted = log;
    this.repaint();
  }

  /** Recolour the whole slice (after a reset, a new slice or a wider colour range). */
  repaint() {
    this.log = this.logWanted && this.data.max > 0;
    [this.lo, this.hi] = this.data.range(this.log);
    this.scale = this.cmap.scale(this.lo, this.hi, this.log);
    const px = this.image.data;
    const vals = this.data.values;
    const { scale, cmap } = this;
    if (this.direct) {
      const n = this.rows * this.cols;
      for (let p = 0; p < n; p++) cmap.put(px, p * 4, vals[p], scale);
    } else {
      let p = 0;
      for (let r = 0; r < this.rows; r++) {
        const rowBase = this.base + r * this.rs;
        for (let c = 0; c < this.cols; c++, p++) cmap.put(px, p * 4, vals[rowBase + c * this.cs], scale);
      }
    }
    this.ctx.putImageData(this.image, 0, 0);
    this.drawBar();
  }

  /** Colour the pixels of the flat range [start, start + n) that lie in the slice. */
  paintRange(start, n) {
    const px = this.image.data;
    const vals = this.data.values;
    const { scale, cmap } = this;
    const end = Math.min(start + n, this.data.total);
    let r0 = Infinity;
    let r1 = -1;
    if (this.direct) {
      for (let f = start; f < end; f++) cmap.put(px, f * 4, vals[f], scale);
      r0 = Math.floor(start / this.cols);
      r1 = Math.floor((end - 1) / this.cols);
    } else {
      const dim = this.sizes.length;
      for (let f = start; f < end; f++) {
        let r = 0;
        let c = 0;
        let inSlice = true;
        for (let k = 0; k < dim; k++) {
          const ik = Math.floor(f / this.strides[k]) % this.sizes[k];
          if (k === this.ra) r = ik;
          else if (k === this.ca) c = ik;
          else if (ik !== this.fixed[k]) {
            inSlice = false;
            break;
          }
        }
        if (!inSlice) continue;
        cmap.put(px, (r * this.cols + c) * 4, vals[f], scale);
        if (r < r0) r0 = r;
        if (r > r1) r1 = r;
      }
    }
    if (r1 >= r0) this.ctx.putImageData(this.image, 0, 0, 0, r0, this.cols, r1 - r0 + 1);
  }

  drawBar() {
    const ctx = this.bar.getContext("2d");
    const img = ctx.createImageData(1, this.cmap.size);
    for (let k = 0; k < this.cmap.size; k++) {
      const o = (this.cmap.size - 1 - k) * 4; // the top is the largest value
      img.data[o] = this.cmap.lut[k][0];
      img.data[o + 1] = this.cmap.lut[k][1];
      img.data[o + 2] = this.cmap.lut[k][2];
      img.data[o + 3] = 255;
    }
    this.bar.width = 1;
    this.bar.height = this.cmap.size;
    ctx.putImageData(img, 0, 0);
    const kind = this.study.value_type;
    const [lo, hi] = [this.lo, this.hi];
    const none = this.data.count === 0;
    for (const [id, v, word] of [["cb-hi", hi, "max"], ["cb-lo", lo, "min"]]) {
      const label = document.getElementById(id);
      const exact = showValue(v, kind);
      label.textContent = none ? `${word} –` : `${word} ${kind === "float" ? shortNumber(v) : exact}`;
      label.title = none ? "" : `${word} = ${exact}`;
      label.dataset.value = String(v); // exact: what the colours are computed with
    }
    document.getElementById("cb-scale").textContent = this.log ? "log scale" : "linear";
    this.bar.dataset.log = String(this.log);
  }

  /** The point under a mouse position, as lines of text (or null outside). */
  describe(clientX, clientY) {
    const rect = this.canvas.getBoundingClientRect();
    const c = Math.floor(((clientX - rect.left) / rect.width) * this.cols);
    const r = Math.floor(((clientY - rect.top) / rect.height) * this.rows);
    if (r < 0 || c < 0 || r >= this.rows || c >= this.cols) return null;
    const f = this.base + r * this.rs + c * this.cs;
    return describePoint(this.study, this.data, f, `row ${r}, column ${c}`);
  }
}

export function describePoint(study, data, f, where) {
  const lines = [];
  const strides = [];
  let s = 1;
  for (let k = study.axes.length - 1; k >= 0; k--) {
    strides[k] = s;
    s *= study.axes[k].size;
  }
  study.axes.forEach((axis, k) => {
    const i = Math.floor(f / strides[k]) % axis.size;
    lines.push(`${axis.name} = ${axisValue(axis, i)}`);
  });
  let value;
  if (!data.have[f]) value = "not computed yet";
  else {
    value = showValue(data.values[f], study.value_type);
    if (study.result_type === "vector") value = `${value} (first component)`;
  }
  lines.push(`value: ${value}`);
  lines.push(`flat index ${f}${where ? `, ${where}` : ""}`);
  return lines.join("\n");
}

// -- the line plot of a 1-D study ----------------------------------------------------------

export class LinePlot {
  constructor(study, data) {
    this.study = study;
    this.data = data;
    this.axis = study.axes[0];
    this.canvas = document.getElementById("lineplot");
    this.margin = { l: 64, r: 12, t: 12, b: 28 };
  }

  repaint() {
    const dpr = window.devicePixelRatio || 1;
    const cssW = this.canvas.clientWidth || 800;
    const cssH = this.canvas.clientHeight || 260;
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const { l, r, t, b } = this.margin;
    const w = cssW - l - r;
    const h = cssH - t - b;
    const n = this.data.total;
    let [lo, hi] = this.data.range();
    if (lo === hi) [lo, hi] = [lo - 0.5, hi + 0.5];
    const x = (i) => l + (n > 1 ? (i / (n - 1)) * w : w / 2);
    const y = (v) => t + h - ((Math.min(Math.max(v, lo), hi) - lo) / (hi - lo)) * h;
    this.frame = { l, t, w, h, n, lo, hi };
    // axes and labels
    ctx.strokeStyle = "#dde1e8";
    ctx.strokeRect(l, t, w, h);
    ctx.fillStyle = "#687083";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [lo, (lo + hi) / 2, hi]) ctx.fillText(shortNumber(v), l - 6, y(v));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const i of tickIndices(n)) ctx.fillText(shortNumber(axisNumber(this.axis, i)), x(i), t + h + 6);
    // values: a polyline when points are wider than a pixel, else min-max columns
    const vals = this.data.values;
    const have = this.data.have;
    ctx.strokeStyle = "#2a788e";
    ctx.fillStyle = "#2a788e";
    ctx.lineWidth = 1.5;
    if (n <= w) {
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < n; i++) {
        if (!have[i] || !Number.isFinite(vals[i])) {
          pen = false;
          continue;
        }
        if (pen) ctx.lineTo(x(i), y(vals[i]));
        else ctx.moveTo(x(i), y(vals[i]));
        pen = true;
      }
      ctx.stroke();
      if (n <= 200) {
        for (let i = 0; i < n; i++) {
          if (have[i] && Number.isFinite(vals[i])) ctx.fillRect(x(i) - 2, y(vals[i]) - 2, 4, 4);
        }
      }
    } else {
      const cols = Math.max(1, Math.floor(w));
      for (let c = 0; c < cols; c++) {
        const i0 = Math.floor((c / cols) * n);
        const i1 = Math.max(i0 + 1, Math.floor(((c + 1) / cols) * n));
        let mn = Infinity;
        let mx = -Infinity;
        for (let i = i0; i < i1; i++) {
          const v = vals[i];
          if (have[i] && Number.isFinite(v)) {
            if (v < mn) mn = v;
            if (v > mx) mx = v;
          }
        }
        if (mn <= mx) ctx.fillRect(l + c, y(mx), 1, Math.max(1, y(mn) - y(mx)));
      }
    }
  }

  paintRange() {
    this.dirty = true;
  }

  describe(clientX) {
    if (!this.frame) return null;
    const rect = this.canvas.getBoundingClientRect();
    const { l, w, n } = this.frame;
    const fx = (clientX - rect.left - l) / w;
    if (fx < -0.02 || fx > 1.02) return null;
    const i = Math.min(n - 1, Math.max(0, Math.round(fx * (n - 1))));
    return describePoint(this.study, this.data, i, "");
  }
}

// -- progress over time --------------------------------------------------------------------

export class ProgressChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.samples = [];
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height); // another study's
  }

  add(done, failed, total) {
    this.total = total;
    this.samples.push({ t: Date.now(), done, failed });
    if (this.samples.length > 7200) this.samples.splice(0, this.samples.length - 3600);
  }

  repaint() {
    const dpr = window.devicePixelRatio || 1;
    const cssW = this.canvas.clientWidth || 800;
    const cssH = this.canvas.clientHeight || 140;
    this.canvas.width = Math.round(cssW * dpr);
    this.canvas.height = Math.round(cssH * dpr);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const l = 64;
    const r = 12;
    const t = 8;
    const b = 22;
    const w = cssW - l - r;
    const h = cssH - t - b;
    const s = this.samples;
    if (!s.length) return;
    const t0 = s[0].t;
    const t1 = Math.max(s[s.length - 1].t, t0 + 10_000);
    const top = this.total ?? Math.max(1, ...s.map((p) => p.done + p.failed));
    const X = (tt) => l + ((tt - t0) / (t1 - t0)) * w;
    const Y = (v) => t + h - (v / top) * h;
    ctx.strokeStyle = "#dde1e8";
    ctx.strokeRect(l, t, w, h);
    ctx.fillStyle = "#687083";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(top.toLocaleString("en-US"), l - 6, t);
    ctx.fillText("0", l - 6, t + h);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(new Date(t0).toLocaleTimeString("en-GB"), l, t + h + 5);
    ctx.textAlign = "right";
    ctx.fillText(new Date(t1).toLocaleTimeString("en-GB"), l + w, t + h + 5);
    // done, filled
    ctx.beginPath();
    ctx.moveTo(X(s[0].t), Y(0));
    for (const p of s) ctx.lineTo(X(p.t), Y(p.done));
    ctx.lineTo(X(s[s.length - 1].t), Y(0));
    ctx.closePath();
    ctx.fillStyle = "rgba(42, 120, 142, 0.18)";
    ctx.fill();
    ctx.beginPath();
    s.forEach((p, k) => (k ? ctx.lineTo(X(p.t), Y(p.done)) : ctx.moveTo(X(p.t), Y(p.done))));
    ctx.strokeStyle = "#2a788e";
    ctx.lineWidth = 2;
    ctx.stroke();
    if (s.some((p) => p.failed > 0)) {
      ctx.beginPath();
      s.forEach((p, k) => (k ? ctx.lineTo(X(p.t), Y(p.failed)) : ctx.moveTo(X(p.t), Y(p.failed))));
      ctx.strokeStyle = "#b3261e";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
  }
}

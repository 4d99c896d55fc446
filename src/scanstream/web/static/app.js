// scanstream web: the scan list and the scan page. Plain browser JavaScript, no build step;
// curves are drawn by the vendored uPlot. Everything is read from the server's /api routes.
"use strict";

const app = document.getElementById("app");
const crumb = document.getElementById("crumb");
const statusLine = document.getElementById("status");
// Figures the page exposes for people (status line) and for its tests.
const stats = { renders: 0, messages: 0, rows: 0, points: 0, rate: 0, drawMs: 0, messageMs: 0 };
window.scanstreamStats = stats;

let teardown = [];  // what the current view must stop when another one is shown
function onLeave(fn) { teardown.push(fn); }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function api(path) {
  const response = await fetch(path, { cache: "no-store" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    // fn returns false when there is nothing more to follow.
    try { if (await fn() === false) stopped = true; } catch (e) { statusLine.textContent = String(e.message || e); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  let timer = setTimeout(tick, 0);
  onLeave(() => { stopped = true; clearTimeout(timer); });
}

const short = (name) => String(name).split(":").pop();
// Display names for the channels of one scan: the short name, or the full one where two
// channels share it (the elapsed_time and epoch of each timer of a scan with two masters).
function labeller(names) {
  const seen = new Map();
  for (const n of names) seen.set(short(n), (seen.get(short(n)) || 0) + 1);
  return (n) => seen.get(short(n)) > 1 ? String(n) : short(n);
}
const fmt = (v) => v === null || v === undefined || Number.isNaN(v) ? "-" :
  (Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(4) : +v.toPrecision(6));
// Axis tick labels with as many digits as the tick spacing needs, so that neighbouring ticks
// never read the same (uPlot's default keeps 3 decimals: ticks 0.0001 apart all read "0";
// fmt's 5 significant digits make epoch seconds 0.1 apart all read "1.7648e+9").
function tickLabels(ticks, log) {
  const values = ticks.filter((v) => v !== null && Number.isFinite(v));
  let step = Infinity;
  for (let i = 1; i < values.length; i++) step = Math.min(step, Math.abs(values[i] - values[i - 1]));
  if (log || !(step > 0 && step < Infinity)) return ticks.map((v) => v === null ? "" : String(fmt(v)));
  const largest = Math.max(...values.map(Math.abs));
  step = +step.toPrecision(3);  // ticks 1, 2, 2.5 or 5 x 10^k apart; 0.0999999 is 0.1
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  const integerDigits = largest >= 1 ? Math.floor(Math.log10(largest)) + 1 : 1;
  const plain = decimals <= 6 && integerDigits + decimals <= 15;
  const digits = Math.min(15, Math.max(1, Math.ceil(Math.log10(largest / step) - 1e-9)));
  return ticks.map((v) => {
    if (v === null) return "";
    const w = Math.abs(v) < step * 1e-6 ? 0 : v;  // no "-0.00" for a rounding error of zero
    return plain ? w.toFixed(decimals) : w.toExponential(digits);
  });
}
const FINAL = new Set(["DONE", "USER_ABORTED", "KILLED", "FAILED"]);

// ------------------------------------------------------------------------------ the scan list

function listView() {
  crumb.textContent = "scans";
  const search = el("input", { type: "search", id: "search",
    placeholder: "search title, type, motor, date, session (words: all must match)" });
  search.value = sessionStorage.getItem("search") || "";
  const overlay = el("button", { id: "overlay", disabled: true }, "overlay selected");
  const body = el("tbody");
  const table = el("table", { class: "scans", id: "scans" },
    el("thead", {}, el("tr", {}, ...["", "session", "#", "title", "type", "motors", "state",
      "points", "started", "saving"].map((h) => el("th", {}, h)))), body);
  const summary = el("div", { class: "meta", id: "summary" });
  app.replaceChildren(el("div", { class: "controls" }, search, overlay, summary), table);
  const selected = new Set();
  let scans = [];
  overlay.addEventListener("click", () => {
    const [first, ...rest] = [...selected];
    const [s, n] = first.split(":");
    location.hash = `#/scan/${encodeURIComponent(s)}/${n}` + (rest.length ? `?with=${rest.join(",")}` : "");
  });
  const render = () => {
    sessionStorage.setItem("search", search.value);
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = scans.filter((s) => {
      const text = [s.title, s.type, s.motors.join(" "), s.start || "", s.session, s.name]
        .join(" ").toLowerCase();
      return words.every((w) => text.includes(w));
    });
    body.replaceChildren(...shown.map((s) => {
      const key = `${s.session}:${s.number}`;
      const box = el("input", { type: "checkbox", checked: selected.has(key) });
      box.addEventListener("change", () => {
        box.checked ? selected.add(key) : selected.delete(key);
        overlay.disabled = selected.size < 1;
      });
      const href = `#/scan/${encodeURIComponent(s.session)}/${s.number}`;
      return el("tr", { class: s.running ? "running" : "", "data-scan": key },
        el("td", {}, box), el("td", {}, s.session), el("td", { class: "num" }, s.number),
        el("td", {}, el("a", { href }, s.title)), el("td", {}, s.type || ""),
        el("td", {}, s.motors.join(" ")), el("td", { class: `state-${s.state}` }, s.state),
        el("td", { class: "num points" }, s.npoints ? `${s.points}/${s.npoints}` : s.points),
        el("td", {}, (s.start || "").replace("T", " ")),
        el("td", { class: `saving-${s.saving}`, title: s.file || "" }, s.saving));
    }));
    summary.textContent = `${shown.length} of ${scans.length} scans`;
  };
  search.addEventListener("input", render);
  every(1000, async () => {
    const data = await api("api/scans");
    scans = data.scans;
    statusLine.textContent = `sessions: ${data.sessions.join(", ") || "none yet"}`;
    render();
  });
}

// ------------------------------------------------------------------------------ live columns

// The decimated 0D columns of one scan, kept up to date by the server's event stream.
class LiveScan {
  constructor(session, number, onChange) {
    this.key = `${session}:${number}`;
    this.names = []; this.index = []; this.columns = []; this.tailIndex = []; this.tail = [];
    this.count = 0; this.state = "?"; this.ended = false; this.bucketSize = 1;
    this.source = new EventSource(`api/scan/${encodeURIComponent(session)}/${number}/live`);
    this.source.onmessage = (event) => {
      const t0 = performance.now();
      const m = JSON.parse(event.data);
      stats.messages += 1;
      this.names = m.names; this.state = m.state; this.count = m.count;
      this.bucketSize = m.bucket_size; this.error = m.error;
      if (m.reset) { this.index = m.index; this.columns = m.columns; }
      else if (m.index.length) {
        this.index = this.index.concat(m.index);
        this.columns = this.columns.map((c, k) => c.concat(m.columns[k]));
      }
      this.tailIndex = m.tail_index; this.tail = m.tail;
      if (m.ended) {
        this.ended = true; this.source.close();
        window.dispatchEvent(new CustomEvent("scan-ended", { detail: this.key }));
      }
      onChange(this);
      stats.messageMs += performance.now() - t0;
    };
    this.source.onerror = () => { if (this.ended) this.source.close(); };
  }
  close() { this.source.close(); }
  // Column `name` (or "#": the point index) over the rows and the tail.
  column(name) {
    if (name === "#") return this.index.concat(this.tailIndex);
    const k = this.names.indexOf(name);
    return k < 0 ? [] : this.columns[k].concat(this.tail[k] || []);
  }
}

// [x, y1, y2...] sorted by x, for uPlot (which needs ascending x).
function table(live, x, ys) {
  const xs = live.column(x);
  const cols = ys.map((y) => live.column(y));
  let sorted = true;
  for (let i = 1; i < xs.length; i++) if (!(xs[i] >= xs[i - 1])) { sorted = false; break; }
  if (sorted) return [xs, ...cols];
  const order = xs.map((_, i) => i).filter((i) => xs[i] !== null).sort((a, b) => xs[a] - xs[b]);
  return [order.map((i) => xs[i]), ...cols.map((c) => order.map((i) => c[i]))];
}

const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf4d9f", "#57606a"];

// ------------------------------------------------------------------------------ curve plot

function curvePanel(desc, overlays) {
  const scalars = desc.nodes.filter((n) => n.kind === "scalar").map((n) => n.name);
  const label = labeller(scalars);
  const plot = (desc.plots || []).flatMap((p) => p.items || []).find((i) => i.kind === "curve");
  // A mesh is best read against the point index (its map shows it against both motors).
  let x = plot && scalars.includes(plot.x) ? plot.x :
    (desc.mesh ? "#" : (scalars.find((n) => desc.motors.includes(short(n))) ||
      scalars.find((n) => short(n) === "elapsed_time") || "#"));
  const defaultY = plot && scalars.includes(plot.y) ? plot.y :
    (scalars.find((n) => n !== x && !desc.motors.includes(short(n)) && !/elapsed_time|epoch/.test(n)) ||
     scalars.find((n) => n !== x));
  const ys = new Set(defaultY ? [defaultY] : []);
  let log = false, zoomed = false, dirty = true, uplot = null, signature = "";
  const xSelect = el("select", { id: "x-select" }, el("option", { value: "#" }, "point index"),
    ...scalars.map((n) => el("option", { value: n }, label(n))));
  xSelect.value = x;
  const ysBox = el("div", { class: "ys", id: "y-select" });
  const renderYs = () => ysBox.replaceChildren(...scalars.filter((n) => n !== x).map((n) => {
    const box = el("input", { type: "checkbox", value: n, checked: ys.has(n) });
    box.addEventListener("change", () => { box.checked ? ys.add(n) : ys.delete(n); dirty = true; analyse(); });
    return el("label", {}, box, " ", label(n));
  }));
  renderYs();
  xSelect.addEventListener("change", () => { x = xSelect.value; ys.delete(x); renderYs(); dirty = true; analyse(); });
  const logBox = el("input", { type: "checkbox", id: "log-y" });
  logBox.addEventListener("change", () => { log = logBox.checked; signature = ""; dirty = true; });
  const pointsLabel = el("span", { id: "curve-points", class: "meta" });
  const holder = el("div", { id: "curve" });
  const statsTable = el("table", { class: "stats", id: "analysis" });
  const panel = el("div", { class: "panel" }, el("h2", {}, "Curves"),
    el("div", { class: "controls" }, el("label", {}, "x ", xSelect),
      el("label", {}, logBox, " log y"), pointsLabel),
    ysBox, holder,
    el("div", { class: "legend-note" }, "drag to zoom, double-click to reset; lines: " +
      "peak (dashed), cen (solid), com (dotted) of the first curve; bar: fwhm"),
    statsTable);

  const main = new LiveScan(desc.session, desc.number, (l) => { dirty = true; if (l.ended) analyse(); });
  const others = overlays.map(([s, n]) => new LiveScan(s, n, () => { dirty = true; }));
  const lives = [main, ...others];
  onLeave(() => lives.forEach((l) => l.close()));

  let analysis = null;
  async function analyse() {
    const chosen = [...ys];
    if (!chosen.length) { analysis = null; statsTable.replaceChildren(); return; }
    const q = `x=${encodeURIComponent(x)}&y=${chosen.map(encodeURIComponent).join(",")}`;
    try {
      analysis = await api(`api/scan/${encodeURIComponent(desc.session)}/${desc.number}/analysis?${q}`);
    } catch (e) { return; }
    statsTable.dataset.count = analysis.count;  // the points the numbers are of
    statsTable.replaceChildren(el("tr", {}, ...["curve", "peak", "at max", "cen", "fwhm", "com"].map((h) => el("th", {}, h))),
      ...Object.entries(analysis.curves).map(([name, c]) => el("tr", { "data-curve": name },
        el("td", {}, label(name)), el("td", { class: "peak" }, fmt(c.peak)), el("td", {}, fmt(c.peak_value)),
        el("td", { class: "cen" }, fmt(c.cen)), el("td", { class: "fwhm" }, fmt(c.fwhm)), el("td", { class: "com" }, fmt(c.com)))));
    dirty = true;
  }
  analyse();
  // The numbers change while points come: again every second until the scan has ended (less
  // often for long scans: the server reads the whole curves for them).
  let analysedAt = 0;
  every(1000, async () => {
    if (main.ended) return false;
    if (performance.now() - analysedAt < 1000 * Math.max(1, main.count / 200000)) return;
    analysedAt = performance.now();
    await analyse();
  });

  function markers(u) {
    if (!analysis || !ys.size) return;
    const first = analysis.curves[[...ys][0]];
    if (!first) return;
    const ctx = u.ctx, top = u.bbox.top, bottom = top + u.bbox.height;
    ctx.save();
    ctx.beginPath(); ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height); ctx.clip();
    ctx.strokeStyle = "#444"; ctx.lineWidth = devicePixelRatio;
    for (const [value, dash] of [[first.peak, [6, 4]], [first.cen, []], [first.com, [2, 3]]]) {
      if (value === null) continue;
      const px = u.valToPos(value, "x", true);
      ctx.setLineDash(dash.map((d) => d * devicePixelRatio));
      ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, bottom); ctx.stroke();
    }
    if (first.cen !== null && first.fwhm !== null && first.peak_value !== null) {
      const a = u.valToPos(first.cen - first.fwhm / 2, "x", true);
      const b = u.valToPos(first.cen + first.fwhm / 2, "x", true);
      const y = top + 8 * devicePixelRatio;
      ctx.setLineDash([]); ctx.lineWidth = 3 * devicePixelRatio; ctx.strokeStyle = "#1a7f37";
      ctx.beginPath(); ctx.moveTo(a, y); ctx.lineTo(b, y); ctx.stroke();
    }
    ctx.restore();
  }

  function build(data, names) {
    if (uplot) uplot.destroy();
    const series = [{ label: x === "#" ? "point" : label(x) }, ...names.map((n, i) => ({
      // Width 1: canvas engines draw such lines as hairlines, several times faster than
      // wider ones (what keeps a dense curve at 10+ draws per second without a GPU).
      label: n, stroke: COLORS[i % COLORS.length], width: 1, spanGaps: true,
      // Markers only while they can be told apart (the data changes after this build).
      points: { show: (u, si, i0, i1) => i1 - i0 < 200 },
    }))];
    uplot = new uPlot({
      width: Math.max(400, holder.clientWidth || 900), height: 380, series,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      // The y axis as wide as its longest label (epoch seconds, counts in the millions).
      // Tick labels in the page's number format (1e-4 on a log axis, not "0").
      axes: [{ values: (u, ticks) => tickLabels(ticks, false) }, {
        size: (u, values) => values && values.length ?
          Math.min(140, 16 + 7 * Math.max(...values.map((v) => String(v).length))) : 50,
        values: (u, ticks) => tickLabels(ticks, log),
      }],
      cursor: { drag: { x: true, y: false } },
      hooks: {
        draw: [markers],
        setSelect: [(u) => { if (u.select.width > 0) zoomed = true; }],
        // The x range shown, readable from outside the canvas (tests, scripts).
        setScale: [(u, key) => {
          if (key === "x") { holder.dataset.xmin = u.scales.x.min; holder.dataset.xmax = u.scales.x.max; }
        }],
      },
    }, data, holder);
    uplot.over.addEventListener("dblclick", () => { zoomed = false; dirty = true; });
  }

  // Drawn when new rows came, at most every MIN_DRAW ms: a little more than 10 times a
  // second with a margin, however often the server sends (up to 20 times).
  const MIN_DRAW = 66;
  let last = performance.now(), frames = 0, drawnAt = 0;
  function frame(now) {
    if (!panel.isConnected) return;
    if (dirty && now - drawnAt >= MIN_DRAW) {
      drawnAt = now;
      dirty = false;
      const t0 = performance.now();
      const chosen = [...ys];
      let data, names;
      if (others.length) {
        const tables = lives.map((l) => table(l, x, chosen));
        data = uPlot.join(tables);
        names = lives.flatMap((l) => chosen.map((y) => `${label(y)} #${l.key.split(":")[1]}`));
      } else {
        data = table(main, x, chosen);
        names = chosen.map(label);
      }
      if (log) data = data.map((c, i) => i === 0 ? c : c.map((v) => v > 0 ? v : null));
      const sig = names.join("|") + x + log;
      if (sig !== signature || !uplot) { signature = sig; build(data, names); }
      else uplot.setData(data, !zoomed);
      stats.renders += 1; frames += 1;
      stats.rows = data[0].length; stats.points = main.count;
      pointsLabel.textContent = `${main.count} points` + (main.bucketSize > 1 ?
        ` (drawn as ${data[0].length} rows, min/max of ${main.bucketSize})` : "") +
        ` · ${main.state}` + (main.error ? ` · ${main.error}` : "");
      pointsLabel.dataset.points = main.count;
      pointsLabel.dataset.state = main.state;
      stats.drawMs += performance.now() - t0;
    }
    if (now - last >= 1000) {
      stats.rate = frames * 1000 / (now - last); frames = 0; last = now;
      statusLine.textContent = `${stats.rate.toFixed(0)} draws/s · ${stats.rows} rows`;
    }
    requestAnimationFrame(frame);
  }
  requestAnimationFrame(frame);
  return panel;
}

// ------------------------------------------------------------------------------ colour maps

// A perceptual ramp (dark blue to yellow), 5 anchors interpolated.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(t) {
  const p = Math.min(0.9999, Math.max(0, t)) * (RAMP.length - 1), i = Math.floor(p), f = p - i;
  return RAMP[i].map((c, k) => c + (RAMP[i + 1][k] - c) * f);
}

function paint(canvas, width, height, valueAt, lo, hi) {
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(width, height);
  const span = hi > lo ? hi - lo : 1;
  for (let r = 0; r < height; r++) for (let c = 0; c < width; c++) {
    const v = valueAt(r, c), o = 4 * (r * width + c);
    if (v === null || v === undefined) { img.data[o + 3] = 0; continue; }
    const [R, G, B] = colour((v - lo) / span);
    img.data[o] = R; img.data[o + 1] = G; img.data[o + 2] = B; img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function selector(id, names, onChange) {
  const label = labeller(names);
  const select = el("select", { id }, ...names.map((n) => el("option", { value: n }, label(n))));
  select.addEventListener("change", () => onChange(select.value));
  return select;
}

// ------------------------------------------------------------------------------ mesh map

function meshPanel(desc, running) {
  const { npoints1: n1, npoints2: n2, backnforth } = desc.mesh;
  const counters = desc.nodes.filter((n) => n.kind === "scalar" &&
    !desc.motors.includes(short(n.name)) && !/elapsed_time|epoch/.test(n.name)).map((n) => n.name);
  const plot = (desc.plots || []).flatMap((p) => p.items || []).find((i) => i.kind === "scatter");
  let name = plot && counters.includes(plot.value) ? plot.value : counters[0];
  const canvas = el("canvas", { class: "map", id: "map" });
  const label = el("span", { class: "meta", id: "map-label" });
  const scale = Math.max(1, Math.floor(360 / Math.max(n1, n2)));
  canvas.style.width = `${n1 * scale}px`; canvas.style.height = `${n2 * scale}px`;
  const select = selector("map-select", counters, (v) => { name = v; load(); });
  if (name) select.value = name;
  async function load() {
    if (!name) return;
    const m = await api(`api/scan/${encodeURIComponent(desc.session)}/${desc.number}/map?name=${encodeURIComponent(name)}`);
    // Point i is column i % n1 of line i / n1 (reversed on odd lines of a back-and-forth
    // mesh); line 0 is drawn at the bottom, as the motor's axis goes up.
    paint(canvas, n1, n2, (r, c) => {
      const line = n2 - 1 - r, col = backnforth && line % 2 ? n1 - 1 - c : c;
      const i = line * n1 + col;
      return i < m.count ? m.values[i] : null;
    }, m.min, m.max);
    canvas.dataset.shape = `${n1}x${n2}`; canvas.dataset.count = m.count;
    label.textContent = `${short(desc.mesh.motors[0] || "motor 1")} × ${short(desc.mesh.motors[1] || "motor 2")}: ` +
      `${n1} × ${n2}, ${m.count}/${n1 * n2} points, ${fmt(m.min)} to ${fmt(m.max)}`;
    return m.count;
  }
  every(500, async () => { const more = running(); await load(); return more; });
  return el("div", { class: "panel" }, el("h2", {}, "Mesh map"),
    el("div", { class: "controls" }, el("label", {}, "value ", select), label), canvas);
}

// ------------------------------------------------------------------------------ spectra

function spectrumPanel(desc, running) {
  const names = desc.nodes.filter((n) => n.kind === "spectrum").map((n) => n.name);
  let name = names[0], uplot = null;
  const holder = el("div", { id: "spectrum" });
  const label = el("span", { class: "meta", id: "spectrum-label" });
  const water = el("canvas", { class: "waterfall", id: "waterfall" });
  const select = selector("spectrum-select", names, (v) => { name = v; load(); });
  async function load() {
    const base = `api/scan/${encodeURIComponent(desc.session)}/${desc.number}`;
    const q = `name=${encodeURIComponent(name)}`;
    let s;
    try { s = await api(`${base}/spectrum?${q}&index=-1`); } catch (e) { label.textContent = e.message; return; }
    const xs = s.values.map((_, i) => i * s.bins / s.values.length);
    const data = [xs, s.values];
    if (!uplot) uplot = new uPlot({ width: 560, height: 260, series: [{ label: "bin" },
      { label: short(name), stroke: COLORS[0], width: 1 }], scales: { x: { time: false } } }, data, holder);
    else uplot.setData(data);
    label.textContent = `spectrum ${s.index + 1} of ${s.count} (${s.bins} bins)`;
    label.dataset.count = s.count;
    const w = await api(`${base}/waterfall?${q}`);
    const rows = w.rows, width = rows.length ? rows[0].length : 1;
    let lo = Infinity, hi = -Infinity;
    for (const r of rows) for (const v of r) if (v !== null && v > 0) { lo = Math.min(lo, Math.log10(v)); hi = Math.max(hi, Math.log10(v)); }
    // The latest spectrum at the top; colour on a log scale (peaks and background both show).
    paint(water, width, Math.max(1, rows.length), (r, c) => {
      const v = rows[rows.length - 1 - r] ? rows[rows.length - 1 - r][c] : null;
      return v === null || v <= 0 ? (v === null ? null : lo) : Math.log10(v);
    }, lo, hi);
    water.style.width = "560px"; water.style.height = `${Math.min(300, Math.max(60, rows.length * 3))}px`;
  }
  onLeave(() => uplot && uplot.destroy());
  every(1000, async () => { const more = running(); await load(); return more; });
  return el("div", { class: "panel" }, el("h2", {}, "Spectra"),
    el("div", { class: "controls" }, el("label", {}, "channel ", select), label),
    el("div", { class: "row" }, holder, el("div", {}, el("div", { class: "meta" }, "waterfall (latest at the top)"), water)));
}

// ------------------------------------------------------------------------------ images

function imagePanel(desc, running) {
  const names = desc.nodes.filter((n) => n.kind === "lima" || n.kind === "image").map((n) => n.name);
  let name = names[0], follow = true, busy = false, wanted = -1, count = 0;
  const canvas = el("canvas", { class: "frame", id: "frame" });
  const slider = el("input", { type: "range", id: "frame-slider", min: 0, max: 0, value: 0 });
  const label = el("span", { class: "meta", id: "frame-label" });
  const followBox = el("input", { type: "checkbox", checked: true });
  followBox.addEventListener("change", () => { follow = followBox.checked; });
  const select = selector("image-select", names, (v) => { name = v; wanted = -1; show(); });
  slider.addEventListener("input", () => {
    wanted = +slider.value; follow = wanted === count - 1; followBox.checked = follow; show();
  });
  async function show() {
    if (busy) return;  // one frame at a time; the latest wish is fetched after it
    busy = true;
    try {
      const index = follow ? -1 : wanted;
      const f = await api(`api/scan/${encodeURIComponent(desc.session)}/${desc.number}/image?name=${encodeURIComponent(name)}&index=${index}`);
      count = f.count;
      slider.max = f.count - 1; slider.value = f.index;
      const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
      canvas.width = f.width; canvas.height = f.height;
      const ctx = canvas.getContext("2d"), img = ctx.createImageData(f.width, f.height);
      for (let i = 0; i < bytes.length; i++) {
        const [R, G, B] = colour(bytes[i] / 255);
        img.data[4 * i] = R; img.data[4 * i + 1] = G; img.data[4 * i + 2] = B; img.data[4 * i + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      const zoom = Math.max(1, Math.floor(400 / Math.max(f.width, f.height)));
      canvas.style.width = `${f.width * zoom}px`;
      label.textContent = `frame ${f.index + 1} of ${f.count} · ${f.shape.join(" × ")} · ${fmt(f.min)} to ${fmt(f.max)}`;
      label.dataset.index = f.index; label.dataset.count = f.count;
    } catch (e) { label.textContent = e.message; }
    finally { busy = false; }
    if (!follow && wanted !== +slider.value) show();
  }
  every(1000, async () => { const more = running(); await show(); return more; });
  return el("div", { class: "panel" }, el("h2", {}, "Images"),
    el("div", { class: "controls" }, el("label", {}, "detector ", select),
      el("label", {}, followBox, " follow the last frame"), label),
    el("div", {}, slider), canvas);
}

// ------------------------------------------------------------------------------ the scan page

function savingText(s) {
  if (s.state === "SAVED") return `saved in ${s.file} :: ${s.entries.join(", ")}`;
  if (s.state === "WRITING") return `being written into ${s.file}`;
  return s.reason ? `${s.state}: ${s.reason}` : s.state;
}

async function scanView(session, number, overlays) {
  crumb.textContent = `${session} #${number}`;
  let desc;
  try { desc = await api(`api/scan/${encodeURIComponent(session)}/${number}`); }
  catch (e) { app.replaceChildren(el("p", { class: "error" }, e.message)); return; }
  let state = desc.state;
  const running = () => !FINAL.has(state);
  const stateEl = el("span", { id: "scan-state", class: `state-${desc.state}` }, desc.state);
  const savingEl = el("span", { id: "scan-saving", class: `saving-${desc.saving.state}` }, savingText(desc.saving));
  const nodesBody = el("tbody");
  const renderNodes = (nodes) => nodesBody.replaceChildren(...nodes.map((n) => el("tr", {},
    el("td", {}, n.name), el("td", {}, n.kind), el("td", {}, n.dtype),
    el("td", {}, n.shape.length ? n.shape.join(" × ").replace("-1", "n") : "scalar"),
    el("td", {}, n.unit || ""), el("td", { class: "num" }, n.points))));
  renderNodes(desc.nodes);
  const head = el("div", { class: "panel" },
    el("h1", { id: "scan-title" }, `${desc.title}`),
    el("div", {}, `scan ${desc.number} of ${desc.session} · ${desc.type || ""} · `, stateEl),
    el("div", { class: "meta" }, `started ${(desc.start || "-").replace("T", " ")} · ended `,
      el("span", { id: "scan-end" }, (desc.end || "-").replace("T", " "))),
    el("div", {}, "saving: ", savingEl));
  const parts = [head];
  const kinds = new Set(desc.nodes.map((n) => n.kind));
  const nodeNames = desc.nodes.map((n) => n.name).join();
  if (kinds.has("scalar")) parts.push(curvePanel(desc, overlays));
  if (desc.mesh) parts.push(meshPanel(desc, running));
  if (kinds.has("spectrum")) parts.push(spectrumPanel(desc, running));
  if (kinds.has("lima") || kinds.has("image")) parts.push(imagePanel(desc, running));
  parts.push(el("div", { class: "panel" }, el("h2", {}, "Data"),
    el("table", { class: "scans" }, el("thead", {}, el("tr", {}, ...["name", "kind", "dtype", "shape", "unit", "points"]
      .map((h) => el("th", {}, h)))), nodesBody)));
  const info = el("pre", { class: "info", id: "scan-info" }, JSON.stringify(desc.scan_info, null, 2));
  parts.push(el("div", { class: "panel" }, el("details", {}, el("summary", {}, "scan_info"), info)));
  app.replaceChildren(...parts);
  // State, saving verdict and point counts, until the saving has a final verdict; at once
  // when the live stream says the scan has ended.
  let refreshNow = null;
  const ended = (e) => { if (e.detail === `${session}:${number}` && refreshNow) refreshNow(); };
  window.addEventListener("scan-ended", ended);
  onLeave(() => window.removeEventListener("scan-ended", ended));
  const refresh = async () => {
    if (!running() && ["SAVED", "FAILED", "NOT_SAVED"].includes(desc.saving.state)) return false;
    desc = await api(`api/scan/${encodeURIComponent(session)}/${number}`);
    // Channels announced after the page was built (it was opened at the very start of the
    // scan): build it again, with their panels.
    if (desc.nodes.map((n) => n.name).join() !== nodeNames) { route(); return false; }
    state = desc.state;
    stateEl.textContent = desc.state; stateEl.className = `state-${desc.state}`;
    savingEl.textContent = savingText(desc.saving); savingEl.className = `saving-${desc.saving.state}`;
    document.getElementById("scan-end").textContent = (desc.end || "-").replace("T", " ");
    renderNodes(desc.nodes);
    info.textContent = JSON.stringify(desc.scan_info, null, 2);
  };
  refreshNow = () => refresh().catch(() => {});
  every(1000, refresh);
}

// ------------------------------------------------------------------------------ routing

function route() {
  teardown.forEach((fn) => fn()); teardown = [];
  const hash = decodeURIComponent(location.hash.slice(1) || "/");
  const match = hash.match(/^\/scan\/(.+)\/(\d+)(?:\?with=(.*))?$/);
  if (match) {
    const overlays = (match[3] || "").split(",").filter(Boolean).map((k) => {
      const i = k.lastIndexOf(":"); return [k.slice(0, i), +k.slice(i + 1)];
    });
    scanView(match[1], +match[2], overlays);
  } else listView();
}
window.addEventListener("hashchange", route);
route();

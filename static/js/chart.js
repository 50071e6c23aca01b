/* Patient chart: Plotly.js, live over WS /ws/patients/{pseudonym}/live, history over REST.
 *
 * Live mode shows the last `width` ms and follows new data. Panning or zooming switches to
 * history mode, which loads the visible span from the series API at the resolution the server
 * picks (raw, or 1-minute / 1-hour buckets drawn with their min/max envelope so a short
 * desaturation stays visible). "Back to live" or a preset returns to live mode.
 *
 * One panel per metric (cfg.metrics: tissue O2 first, then SpO2, skin temperature, battery), each
 * with its own y axis on one shared time axis, so zoom, live mode and history move all of them
 * together. Each metric is a track with its own live points, live buckets and history, at the
 * resolution the server picks for it (a battery read once a minute stays raw where tissue O2 at
 * 1 Hz is bucketed).
 */
(function () {
  "use strict";
  const L = window.PerfuseLive;
  const cfg = JSON.parse(document.getElementById("chart-config").textContent);
  const P = encodeURIComponent(cfg.pseudonym);
  const chart = document.getElementById("chart");
  const goLiveButton = document.getElementById("go-live");
  const resolutionEl = document.getElementById("resolution");
  const smoothedBox = document.getElementById("show-smoothed");
  const rawBox = document.getElementById("show-raw");
  const marksEl = document.getElementById("annotation-list");
  const PRIORITY_COLOR = { high: "rgba(214,39,40,0.18)", medium: "rgba(255,160,0,0.18)", low: "rgba(0,150,200,0.12)" };
  // Threshold bands stay faint: they are context, alarm periods (PRIORITY_COLOR) are events.
  const BAND_COLOR = { high: "rgba(214,39,40,0.07)", medium: "rgba(255,160,0,0.09)", low: "rgba(0,150,200,0.06)" };
  const KIND_COLOR = { calibration: "#7b3fb5", firmware: "#1f77b4", alarm: "#d62728", acknowledgement: "#2ca02c", note: "#555" };
  const RESOLUTION_TEXT = { raw: "raw samples", "1m": "1-min buckets (min–max band)", "1h": "1-h buckets (min–max band)" };
  // Panels top to bottom (older page configurations name the primary metric only).
  const METRICS = cfg.metrics || [{ metric: cfg.metric, label: "Tissue O₂", unit: cfg.unit }];
  const RGB = { tissue_o2: "42,111,219", spo2: "23,140,120", skin_temp: "209,122,0", battery: "110,110,140" };
  const PRIMARY_WEIGHT = 3; // the primary panel is three times as tall as each other one
  const PANEL_GAP = 0.04;

  const state = {
    mode: "live",
    width: 300000,
    clockOffset: 0,
    tracks: new Map(METRICS.map((m, i) => [m.metric, newTrack(m, i)])),
    annotations: new Map(), // id -> {id, kind, t, text}
    periods: [],
    thresholds: [],
    bands: {}, // metric -> [{label, low, high, priority}] (the alarm rule's value bands)
    loads: 0,
  };
  const primary = state.tracks.get(cfg.metric);
  // The primary metric's track under the names the page has always exposed.
  Object.defineProperties(state, {
    live: { get: () => primary.live }, // sample time (ms) -> {t, value, quality, seq}: raw points of the live window
    liveBuckets: { get: () => primary.liveBuckets }, // {resolution, points} when the live window is too wide for raw points
    hist: { get: () => primary.hist }, // {resolution, points, start, end}
    lastT: { get: lastSeen },
  });
  const tracker = new L.SeqTracker();
  let rendering = false;
  let renderQueued = false;
  let relayoutTimer = null;

  const now = () => Date.now() + state.clockOffset;
  const iso = (ms) => new Date(ms).toISOString();

  /* A metric's data: raw points of the live window, the live window's buckets when it is too wide
   * for raw points, and the loaded history span. The first panel keeps y axis "y" ("y2" overlays
   * it with the marks); the others are y3, y4, … */
  function newTrack(m, i) {
    return { metric: m.metric, label: m.label, unit: m.unit, axis: i === 0 ? "y" : "y" + (i + 2), live: new Map(), liveBuckets: null, hist: null, lastT: null };
  }

  /* The oldest "newest point" among tracks with data: refetching from it misses nothing. */
  function lastSeen() {
    const times = [...state.tracks.values()].map((tr) => tr.lastT).filter((t) => t !== null);
    return times.length ? Math.min(...times) : null;
  }

  async function fetchSeries(metric, start, end, background) {
    const q = new URLSearchParams({ metric, start: iso(start), end: iso(end) });
    const body = await L.fetchJSON("/api/v1/patients/" + P + "/series?" + q, { background });
    const points = body.points.map((p) => Object.assign({}, p, { t: Date.parse(p.t) }));
    return { resolution: body.resolution, points, start, end };
  }

  /* Every track's series over [start, end], as [track, series] pairs. */
  async function fetchTracks(start, end, background) {
    const tracks = [...state.tracks.values()];
    const series = await Promise.all(tracks.map((tr) => fetchSeries(tr.metric, start, end, background)));
    return tracks.map((tr, i) => [tr, series[i]]);
  }

  async function fetchMarks(start, end, background) {
    const q = new URLSearchParams({ start: iso(start), end: iso(end) });
    const body = await L.fetchJSON("/api/v1/patients/" + P + "/annotations?" + q, { background });
    body.annotations.forEach(addAnnotation);
    state.periods = body.alarm_periods;
    state.thresholds = body.thresholds;
    state.bands = body.bands || { [cfg.metric]: body.thresholds };
  }

  function addAnnotation(a) {
    state.annotations.set(a.id, { id: a.id, kind: a.kind, t: Date.parse(a.t), text: a.text });
  }

  /* Points of a frame or snapshot (each names its metric) into their tracks' live windows. */
  function addLivePoints(points) {
    for (const p of points) {
      const tr = state.tracks.get(p.metric || cfg.metric);
      if (tr) addTrackPoints(tr, [p]);
    }
  }

  function addTrackPoints(tr, points) {
    for (const p of points) {
      const t = typeof p.t === "number" ? p.t : Date.parse(p.t);
      // Keyed by sample time: REST points carry no seq, and a patient has one device at a time.
      tr.live.set(t, { t, value: p.value, quality: p.quality, seq: p.seq });
      if (tr.lastT === null || t > tr.lastT) tr.lastT = t;
    }
    const keep = Math.max(state.width, 600000) + 60000;
    const cutoff = now() - keep;
    for (const [key, p] of tr.live) if (p.t < cutoff) tr.live.delete(key);
  }

  /* A track's live window from the series API: raw points go into its live map, buckets beside it. */
  function setLive(tr, series) {
    if (series.resolution === "raw") {
      tr.liveBuckets = null;
      addTrackPoints(tr, series.points);
    } else {
      tr.liveBuckets = series;
    }
  }

  /* Load the live window of every track. */
  async function loadLive(background) {
    const end = now() + 5000;
    const start = end - state.width - 5000;
    const [series] = await Promise.all([fetchTracks(start, end, background), fetchMarks(start, end, background)]);
    state.loads += 1;
    for (const [tr, s] of series) setLive(tr, s);
    queueRender();
  }

  /* Refetch what a gap, a resync or a reconnect may have cost us. */
  async function refetchSince(sinceMs) {
    const end = now() + 5000;
    const start = Math.max(sinceMs - 1000, end - state.width - 5000);
    if ([...state.tracks.values()].some((tr) => tr.liveBuckets)) return loadLive(true);
    const series = await fetchTracks(start, end, true);
    if (series.some(([, s]) => s.resolution !== "raw")) return loadLive(true);
    for (const [tr, s] of series) addTrackPoints(tr, s.points);
    queueRender();
  }

  async function goLive(widthMs) {
    state.mode = "live";
    state.width = widthMs || state.width;
    for (const tr of state.tracks.values()) tr.hist = null;
    goLiveButton.hidden = true;
    highlightPreset();
    await loadLive();
  }

  async function goHistory(start, end) {
    state.mode = "history";
    goLiveButton.hidden = false;
    highlightPreset();
    const [series] = await Promise.all([fetchTracks(start, end), fetchMarks(start, end)]);
    state.loads += 1;
    for (const [tr, s] of series) tr.hist = s;
    queueRender();
  }

  function highlightPreset() {
    document.querySelectorAll(".preset").forEach((b) => {
      b.classList.toggle("active", state.mode === "live" && Number(b.dataset.seconds) * 1000 === state.width);
    });
  }

  function smooth(xs, ys, k) {
    const out = [];
    let sum = 0;
    for (let i = 0; i < ys.length; i++) {
      sum += ys[i];
      if (i >= k) sum -= ys[i - k];
      out.push(sum / Math.min(i + 1, k));
    }
    return { x: xs, y: out };
  }

  function lowQualityShapes(points, axis) {
    const shapes = [];
    let start = null;
    let prev = null;
    for (const p of points) {
      const low = p.quality !== null && p.quality !== undefined && p.quality < cfg.lowQuality;
      if (low && start === null) start = p.t;
      if (!low && start !== null) {
        shapes.push(band(start, prev.t, "rgba(128,128,128,0.22)", axis));
        start = null;
      }
      prev = p;
    }
    if (start !== null) shapes.push(band(start, prev.t, "rgba(128,128,128,0.22)", axis));
    return shapes;
  }

  /* A time span shaded over one panel (`axis`) or, without one, over every panel. */
  function band(x0, x1, color, axis) {
    const yref = axis ? axis + " domain" : "paper";
    return { type: "rect", xref: "x", yref, x0: iso(x0), x1: iso(Math.max(x1, x0 + 1000)), y0: 0, y1: 1, fillcolor: color, line: { width: 0 }, layer: "below" };
  }

  /* The traces of one track: the bucket envelope, average and smoothed line, and raw points. */
  function trackTraces(tr, view, range) {
    const out = [];
    const rgb = RGB[tr.metric] || RGB.tissue_o2;
    const line = "rgb(" + rgb + ")";
    const first = tr === primary; // the legend explains the first panel; the others share its meaning
    // Smoothing is for tissue O2's noisy 1 Hz trace; a vital sign is shown as measured.
    const smoothed = smoothedBox.checked && first;
    const common = { yaxis: tr.axis, legendgroup: tr.metric, meta: tr.metric };
    const raw = view.raw.filter((p) => p.t >= range[0] - 60000 && p.t <= range[1] + 60000);
    if (view.buckets) {
      const b = view.buckets.points;
      const x = b.map((p) => iso(p.t));
      // The envelope is drawn with visible edges: a one-bucket dip is too thin to see as a fill alone.
      out.push({ ...common, x, y: b.map((p) => p.max), name: "max", mode: "lines", line: { width: 1, color: "rgba(" + rgb + ",0.55)" }, hovertemplate: "max %{y:.1f}<extra></extra>", showlegend: false });
      out.push({ ...common, x, y: b.map((p) => p.min), name: "min–max", mode: "lines", line: { width: 1, color: "rgba(" + rgb + ",0.55)" }, fill: "tonexty", fillcolor: "rgba(" + rgb + ",0.25)", hovertemplate: "min %{y:.1f}<extra></extra>", showlegend: first });
      out.push({ ...common, x, y: b.map((p) => p.avg), name: "average", mode: "lines", line: { width: 1.5, color: line }, visible: rawBox.checked, showlegend: first });
      if (smoothed) {
        const s = smooth(x, b.map((p) => p.avg), 5);
        out.push({ ...common, x: s.x, y: s.y, name: "smoothed", mode: "lines", line: { width: 2.5, color: "#e4572e" }, showlegend: first });
      }
    }
    if (raw.length) {
      const x = raw.map((p) => iso(p.t));
      const y = raw.map((p) => p.value);
      // Sparse metrics (a battery read once a minute) get markers, so a lone reading is visible.
      const mode = raw.length < 60 ? "lines+markers" : "lines";
      out.push({ ...common, x, y, name: view.buckets ? "live" : "raw", mode, marker: { size: 4, color: line }, line: { width: 1, color: line }, visible: rawBox.checked || Boolean(view.buckets), showlegend: first });
      if (smoothed && !view.buckets) {
        const s = smooth(x, y, 10);
        out.push({ ...common, x: s.x, y: s.y, name: "smoothed", mode: "lines", line: { width: 2.5, color: "#e4572e" }, showlegend: first });
      }
    }
    return { data: out, raw };
  }

  /* The y range of a vital sign's panel: its values in view, and its least urgent alarm threshold
   * (so the limit is in sight), with a margin. Left to Plotly's autorange the alarm bands, which
   * start at zero, would flatten the trace. Null when there is nothing to show. */
  function valueRange(tr, view, raw) {
    const values = raw.map((p) => p.value);
    if (view.buckets) for (const p of view.buckets.points) values.push(p.min, p.max);
    if (!values.length) return null;
    const bands = state.bands[tr.metric] || [];
    const limits = bands.length ? [Math.max(...bands.map((b) => b.high))] : [];
    let lo = Math.min(...values, ...limits);
    let hi = Math.max(...values, ...limits);
    const pad = Math.max((hi - lo) * 0.08, Math.abs(hi) * 0.01, 0.5);
    return [lo - pad, hi + pad];
  }

  function marksTrace(range) {
    const marks = [...state.annotations.values()].filter((a) => a.t >= range[0] && a.t <= range[1]);
    const trace = {
      x: marks.map((a) => iso(a.t)),
      y: marks.map(() => 0.96),
      yaxis: "y2",
      mode: "markers",
      name: "marks",
      marker: { symbol: "triangle-down", size: 12, color: marks.map((a) => KIND_COLOR[a.kind] || "#555") },
      text: marks.map((a) => a.kind + ": " + a.text),
      hovertemplate: "%{text}<br>%{x}<extra></extra>",
      showlegend: false,
    };
    return { trace, marks };
  }

  /* What a track shows now: its live window (raw points, or buckets when too wide) or its history. */
  function trackView(tr) {
    if (state.mode === "history" && tr.hist) {
      const raw = tr.hist.resolution === "raw" ? tr.hist.points : [];
      const buckets = tr.hist.resolution === "raw" ? null : tr.hist;
      return { raw, buckets, resolution: tr.hist.resolution };
    }
    const raw = [...tr.live.values()].sort((a, b) => a.t - b.t);
    return { raw, buckets: tr.liveBuckets, resolution: tr.liveBuckets ? tr.liveBuckets.resolution : "raw" };
  }

  function viewRange() {
    if (state.mode === "history" && primary.hist) return [primary.hist.start, primary.hist.end];
    const end = now();
    return [end - state.width, end + 2000];
  }

  /* Stacked y axes, the primary panel tallest, each titled with its metric and unit. A vital
   * sign's axis has the range `ranges` gives it and does not zoom on its own: a zoom on any panel
   * moves the shared time axis. An empty panel says so. */
  function panelAxes(ranges) {
    const tracks = [...state.tracks.values()];
    const weights = tracks.map((tr) => (tr === primary ? PRIMARY_WEIGHT : 1));
    const total = weights.reduce((a, b) => a + b, 0);
    const usable = 1 - PANEL_GAP * (tracks.length - 1);
    const axes = {};
    const notes = [];
    let top = 1;
    tracks.forEach((tr, i) => {
      const bottom = Math.max(0, top - (usable * weights[i]) / total);
      const axis = { domain: [bottom, top], anchor: "x", title: { text: tr.label + " (" + tr.unit + ")", font: { size: tr === primary ? 13 : 11 } } };
      if (tr === primary) axis.rangemode = "tozero";
      else Object.assign(axis, { fixedrange: true, range: ranges.get(tr.metric) || [0, 1], showticklabels: ranges.has(tr.metric) });
      axes["yaxis" + tr.axis.slice(1)] = axis;
      if (tr !== primary && !ranges.has(tr.metric)) {
        notes.push({ xref: "paper", yref: tr.axis + " domain", x: 0.5, y: 0.5, showarrow: false, text: tr.label + ": no readings in this span", font: { size: 11, color: "#5b6570" } });
      }
      top = bottom - PANEL_GAP;
    });
    return { axes, notes, bottomAxis: tracks[tracks.length - 1].axis };
  }

  /* The alarm rule's value bands of each panel, as horizontal shading on its own axis. */
  function thresholdShapes() {
    const shapes = [];
    for (const tr of state.tracks.values()) {
      for (const t of state.bands[tr.metric] || []) {
        shapes.push({ type: "rect", xref: "paper", yref: tr.axis, x0: 0, x1: 1, y0: t.low ?? 0, y1: t.high ?? 100, fillcolor: BAND_COLOR[t.priority] || BAND_COLOR.medium, line: { width: 0 }, layer: "below" });
      }
    }
    return shapes;
  }

  /* Alarm periods over the panel of the metric they are about (no-data: over every panel). */
  function periodShapes() {
    return state.periods.map((p) => {
      const tr = p.metric ? state.tracks.get(p.metric) : null;
      return band(Date.parse(p.start), p.end ? Date.parse(p.end) : now(), PRIORITY_COLOR[p.priority] || PRIORITY_COLOR.medium, tr ? tr.axis : null);
    });
  }

  async function render() {
    renderQueued = false;
    const range = viewRange();
    const data = [];
    const shapes = [...thresholdShapes(), ...periodShapes()];
    const ranges = new Map(); // metric -> y range of a vital sign's panel with data in view
    let primaryView = null;
    for (const tr of state.tracks.values()) {
      const view = trackView(tr);
      const { data: traces, raw } = trackTraces(tr, view, range);
      data.push(...traces);
      shapes.push(...lowQualityShapes(view.buckets ? view.buckets.points : raw, tr.axis));
      const span = tr === primary ? null : valueRange(tr, view, raw);
      if (span) ranges.set(tr.metric, span);
      // Plotly lays out only the axes that carry a trace: an empty panel gets an empty one.
      if (!traces.length) data.push({ x: [], y: [], yaxis: tr.axis, meta: tr.metric, showlegend: false, hoverinfo: "skip" });
      if (tr === primary) primaryView = view;
    }
    const { trace, marks } = marksTrace(range);
    data.push(trace);
    for (const a of marks) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: iso(a.t), x1: iso(a.t), y0: 0, y1: 1, line: { color: KIND_COLOR[a.kind] || "#555", width: 1.5, dash: "dot" } });
    }
    const { axes, notes, bottomAxis } = panelAxes(ranges);
    const layout = {
      margin: { l: 48, r: 12, t: 8, b: 36 },
      xaxis: { type: "date", range: [iso(range[0]), iso(range[1])], anchor: bottomAxis },
      ...axes,
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      legend: { orientation: "h", y: 1.08 },
      shapes,
      annotations: notes,
      dragmode: window.matchMedia("(max-width: 700px)").matches ? "pan" : "zoom",
      uirevision: state.mode + ":" + state.width,
    };
    resolutionEl.textContent = (state.mode === "live" ? "live · " : "history · ") + RESOLUTION_TEXT[primaryView.resolution];
    chart.dataset.mode = state.mode;
    chart.dataset.resolution = primaryView.resolution;
    rendering = true;
    try {
      await Plotly.react(chart, data, layout, { responsive: true, displaylogo: false });
    } finally {
      rendering = false;
    }
    renderMarks();
  }

  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(render, 200);
  }

  function renderMarks() {
    const items = [...state.annotations.values()].sort((a, b) => b.t - a.t).slice(0, 50);
    marksEl.replaceChildren(
      ...items.map((a) => {
        const li = document.createElement("li");
        li.className = "mark mark-" + a.kind;
        li.textContent = new Date(a.t).toLocaleString() + " · " + a.kind + " · " + a.text;
        li.addEventListener("click", () => goHistory(a.t - 900000, a.t + 900000));
        return li;
      })
    );
  }

  // The alarm indicator, title and favicon follow the same frames (alerts/static/alerts/alarm-signals.js).
  const alarmIndicator = window.PerfuseAlarmSignals.patientIndicator(document.getElementById("chart-alarm"));

  function onFrame(frame) {
    alarmIndicator.onFrame(frame);
    switch (frame.type) {
      case "snapshot":
        state.clockOffset = Date.parse(frame.server_time) - Date.now();
        tracker.reset(frame.ranges);
        addLivePoints(frame.points);
        frame.annotations.forEach(addAnnotation);
        queueRender();
        break;
      case "reading.batch": {
        const before = state.lastT;
        if (tracker.observe(frame.ranges) && before !== null) refetchSince(before);
        addLivePoints(frame.points);
        if (state.mode === "live") queueRender();
        break;
      }
      case "annotation.added":
        addAnnotation(frame.annotation);
        queueRender();
        break;
      case "alarm.transition": {
        const end = now();
        fetchMarks(end - state.width, end + 5000, true).then(queueRender);
        break;
      }
      case "resync":
        refetchSince(frame.since ? Date.parse(frame.since) : now() - state.width);
        break;
      default:
        break;
    }
  }

  function onRelayout(event) {
    if (rendering) return;
    if (event["xaxis.autorange"]) return void goLive(state.width);
    const x0 = event["xaxis.range[0]"] ?? (event["xaxis.range"] || [])[0];
    const x1 = event["xaxis.range[1]"] ?? (event["xaxis.range"] || [])[1];
    if (x0 === undefined || x1 === undefined) return;
    clearTimeout(relayoutTimer);
    relayoutTimer = setTimeout(() => goHistory(Date.parse(toIso(x0)), Date.parse(toIso(x1))), 250);
  }
  const toIso = (v) => (typeof v === "string" && !/[zZ]|[+-]\d\d:?\d\d$/.test(v) ? v.replace(" ", "T") + "Z" : v);

  document.querySelectorAll(".preset").forEach((b) => b.addEventListener("click", () => goLive(Number(b.dataset.seconds) * 1000)));
  goLiveButton.addEventListener("click", () => goLive(state.width));
  smoothedBox.addEventListener("change", queueRender);
  rawBox.addEventListener("change", queueRender);

  // A revealed name lives in this page's memory only: never in sessionStorage or localStorage,
  // which outlive the user (the next person to sign in at this browser would see it). Leaving or
  // reloading the page forgets it; each reveal is asked for, and audited, again.
  const reveal = document.getElementById("reveal-name");
  function showName(name) {
    document.getElementById("patient-name").textContent = name + " (" + cfg.pseudonym + ")";
  }
  if (reveal) {
    reveal.addEventListener("click", async () => {
      const purpose = window.prompt("Why do you need this patient's identity? (recorded in the audit trail)");
      if (!purpose) return;
      const token = (window.Perfuse && window.Perfuse.csrfToken) || document.querySelector("[name=csrfmiddlewaretoken]").value;
      try {
        const body = await L.fetchJSON(reveal.dataset.url, {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-CSRFToken": token },
          body: JSON.stringify({ purpose }),
        });
        showName(body.name);
      } catch (err) {
        window.alert("Identity not revealed: " + err.message);
      }
    });
  }

  window.perfuseChart = { state, goLive, goHistory, render };
  (async () => {
    if (cfg.historyEnd) {
      // A discharged patient, or one who left the viewer's ward: no present to watch (the live
      // feed would be refused); open the last day of what the viewer may see.
      const end = Date.parse(cfg.historyEnd);
      await goHistory(end - 24 * 3600000, end);
      await render();
      chart.on("plotly_relayout", onRelayout);
      goLiveButton.remove();
      const status = document.getElementById("live-status");
      status.dataset.state = cfg.historyReason === "discharged" ? "discharged" : "denied";
      status.textContent = cfg.historyReason === "discharged" ? "patient discharged" : "left your ward: history only";
      return;
    }
    await goLive(cfg.presets[0] * 1000);
    await render();
    chart.on("plotly_relayout", onRelayout);
    new L.LiveSocket("/ws/patients/" + P + "/live", {
      onFrame,
      onConnected: (reconnected) => {
        if (reconnected && state.lastT !== null) refetchSince(state.lastT);
      },
      statusEl: document.getElementById("live-status"),
    });
  })();
  // Live mode slides with the clock even when no data arrives (a gap must look like a gap).
  setInterval(() => {
    if (state.mode === "live") queueRender();
  }, 1000);
  // Bucketed live windows are reloaded now and then; raw ones are kept current by the socket.
  setInterval(() => {
    if (state.mode === "live" && [...state.tracks.values()].some((tr) => tr.liveBuckets)) loadLive(true);
  }, 60000);
})();

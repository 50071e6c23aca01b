/* Patient chart: Plotly.js, live over WS /ws/patients/{pseudonym}/live, history over REST.
 *
 * Live mode shows the last `width` ms and follows new data. Panning or zooming switches to
 * history mode, which loads the visible span from the series API at the resolution the server
 * picks (raw, or 1-minute / 1-hour buckets drawn with their min/max envelope so a short
 * desaturation stays visible). "Back to live" or a preset returns to live mode.
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

  const state = {
    mode: "live",
    width: 300000,
    clockOffset: 0,
    live: new Map(), // sample time (ms) -> {t, value, quality, seq}: raw points of the live window
    liveBuckets: null, // {resolution, points} when the live window is too wide for raw points
    hist: null, // {resolution, points, start, end}
    annotations: new Map(), // id -> {id, kind, t, text}
    periods: [],
    thresholds: [],
    lastT: null,
    loads: 0,
  };
  const tracker = new L.SeqTracker();
  let rendering = false;
  let renderQueued = false;
  let relayoutTimer = null;

  const now = () => Date.now() + state.clockOffset;
  const iso = (ms) => new Date(ms).toISOString();

  async function fetchSeries(start, end, background) {
    const q = new URLSearchParams({ metric: cfg.metric, start: iso(start), end: iso(end) });
    const body = await L.fetchJSON("/api/v1/patients/" + P + "/series?" + q, { background });
    const points = body.points.map((p) => Object.assign({}, p, { t: Date.parse(p.t) }));
    return { resolution: body.resolution, points, start, end };
  }

  async function fetchMarks(start, end, background) {
    const q = new URLSearchParams({ start: iso(start), end: iso(end) });
    const body = await L.fetchJSON("/api/v1/patients/" + P + "/annotations?" + q, { background });
    body.annotations.forEach(addAnnotation);
    state.periods = body.alarm_periods;
    state.thresholds = body.thresholds;
  }

  function addAnnotation(a) {
    state.annotations.set(a.id, { id: a.id, kind: a.kind, t: Date.parse(a.t), text: a.text });
  }

  function addLivePoints(points) {
    for (const p of points) {
      if (p.metric && p.metric !== cfg.metric) continue;
      const t = typeof p.t === "number" ? p.t : Date.parse(p.t);
      // Keyed by sample time: REST points carry no seq, and a patient has one device at a time.
      state.live.set(t, { t, value: p.value, quality: p.quality, seq: p.seq });
      if (state.lastT === null || t > state.lastT) state.lastT = t;
    }
    const keep = Math.max(state.width, 600000) + 60000;
    const cutoff = now() - keep;
    for (const [key, p] of state.live) if (p.t < cutoff) state.live.delete(key);
  }

  /* Load the live window: raw points go into the live map, buckets are kept beside it. */
  async function loadLive(background) {
    const end = now() + 5000;
    const start = end - state.width - 5000;
    const [series] = await Promise.all([fetchSeries(start, end, background), fetchMarks(start, end, background)]);
    state.loads += 1;
    if (series.resolution === "raw") {
      state.liveBuckets = null;
      addLivePoints(series.points);
    } else {
      state.liveBuckets = series;
    }
    queueRender();
  }

  /* Refetch what a gap, a resync or a reconnect may have cost us. */
  async function refetchSince(sinceMs) {
    const end = now() + 5000;
    const start = Math.max(sinceMs - 1000, end - state.width - 5000);
    if (state.liveBuckets) return loadLive(true);
    const series = await fetchSeries(start, end, true);
    if (series.resolution === "raw") addLivePoints(series.points);
    else return loadLive(true);
    queueRender();
  }

  async function goLive(widthMs) {
    state.mode = "live";
    state.width = widthMs || state.width;
    state.hist = null;
    goLiveButton.hidden = true;
    highlightPreset();
    await loadLive();
  }

  async function goHistory(start, end) {
    state.mode = "history";
    goLiveButton.hidden = false;
    highlightPreset();
    const [series] = await Promise.all([fetchSeries(start, end), fetchMarks(start, end)]);
    state.loads += 1;
    state.hist = series;
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

  function lowQualityShapes(points) {
    const shapes = [];
    let start = null;
    let prev = null;
    for (const p of points) {
      const low = p.quality !== null && p.quality !== undefined && p.quality < cfg.lowQuality;
      if (low && start === null) start = p.t;
      if (!low && start !== null) {
        shapes.push(band(start, prev.t, "rgba(128,128,128,0.22)"));
        start = null;
      }
      prev = p;
    }
    if (start !== null) shapes.push(band(start, prev.t, "rgba(128,128,128,0.22)"));
    return shapes;
  }

  function band(x0, x1, color) {
    return { type: "rect", xref: "x", yref: "paper", x0: iso(x0), x1: iso(Math.max(x1, x0 + 1000)), y0: 0, y1: 1, fillcolor: color, line: { width: 0 }, layer: "below" };
  }

  function traces(view, range) {
    const out = [];
    const raw = view.raw.filter((p) => p.t >= range[0] - 60000 && p.t <= range[1] + 60000);
    if (view.buckets) {
      const b = view.buckets.points;
      const x = b.map((p) => iso(p.t));
      // The envelope is drawn with visible edges: a one-bucket dip is too thin to see as a fill alone.
      out.push({ x, y: b.map((p) => p.max), name: "max", mode: "lines", line: { width: 1, color: "rgba(42,111,219,0.55)" }, hovertemplate: "max %{y:.1f}<extra></extra>", showlegend: false });
      out.push({ x, y: b.map((p) => p.min), name: "min–max", mode: "lines", line: { width: 1, color: "rgba(42,111,219,0.55)" }, fill: "tonexty", fillcolor: "rgba(42,111,219,0.25)", hovertemplate: "min %{y:.1f}<extra></extra>" });
      out.push({ x, y: b.map((p) => p.avg), name: "average", mode: "lines", line: { width: 1.5, color: "#2a6fdb" }, visible: rawBox.checked });
      if (smoothedBox.checked) {
        const s = smooth(x, b.map((p) => p.avg), 5);
        out.push({ x: s.x, y: s.y, name: "smoothed", mode: "lines", line: { width: 2.5, color: "#e4572e" } });
      }
    }
    if (raw.length) {
      const x = raw.map((p) => iso(p.t));
      const y = raw.map((p) => p.value);
      out.push({ x, y, name: view.buckets ? "live" : "raw", mode: "lines", line: { width: 1, color: "#2a6fdb" }, visible: rawBox.checked || Boolean(view.buckets) });
      if (smoothedBox.checked && !view.buckets) {
        const s = smooth(x, y, 10);
        out.push({ x: s.x, y: s.y, name: "smoothed", mode: "lines", line: { width: 2.5, color: "#e4572e" } });
      }
    }
    const marks = [...state.annotations.values()].filter((a) => a.t >= range[0] && a.t <= range[1]);
    out.push({
      x: marks.map((a) => iso(a.t)),
      y: marks.map(() => 0.96),
      yaxis: "y2",
      mode: "markers",
      name: "marks",
      marker: { symbol: "triangle-down", size: 12, color: marks.map((a) => KIND_COLOR[a.kind] || "#555") },
      text: marks.map((a) => a.kind + ": " + a.text),
      hovertemplate: "%{text}<br>%{x}<extra></extra>",
      showlegend: false,
    });
    return { data: out, raw, marks };
  }

  function currentView() {
    if (state.mode === "history" && state.hist) {
      const raw = state.hist.resolution === "raw" ? state.hist.points : [];
      const buckets = state.hist.resolution === "raw" ? null : state.hist;
      return { raw, buckets, range: [state.hist.start, state.hist.end], resolution: state.hist.resolution };
    }
    const raw = [...state.live.values()].sort((a, b) => a.t - b.t);
    const end = now();
    return { raw, buckets: state.liveBuckets, range: [end - state.width, end + 2000], resolution: state.liveBuckets ? state.liveBuckets.resolution : "raw" };
  }

  async function render() {
    renderQueued = false;
    const view = currentView();
    const { data, raw, marks } = traces(view, view.range);
    const shapes = [];
    for (const t of state.thresholds) {
      shapes.push({ type: "rect", xref: "paper", yref: "y", x0: 0, x1: 1, y0: t.low ?? 0, y1: t.high ?? 100, fillcolor: BAND_COLOR[t.priority] || BAND_COLOR.medium, line: { width: 0 }, layer: "below" });
    }
    for (const p of state.periods) {
      shapes.push(band(Date.parse(p.start), p.end ? Date.parse(p.end) : now(), PRIORITY_COLOR[p.priority] || PRIORITY_COLOR.medium));
    }
    shapes.push(...lowQualityShapes(view.buckets ? view.buckets.points : raw));
    for (const a of marks) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: iso(a.t), x1: iso(a.t), y0: 0, y1: 1, line: { color: KIND_COLOR[a.kind] || "#555", width: 1.5, dash: "dot" } });
    }
    const layout = {
      margin: { l: 48, r: 12, t: 8, b: 36 },
      xaxis: { type: "date", range: [iso(view.range[0]), iso(view.range[1])] },
      yaxis: { title: { text: "Tissue O₂ (" + cfg.unit + ")" }, rangemode: "tozero" },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      legend: { orientation: "h", y: 1.08 },
      shapes,
      dragmode: window.matchMedia("(max-width: 700px)").matches ? "pan" : "zoom",
      uirevision: state.mode + ":" + state.width,
    };
    resolutionEl.textContent = (state.mode === "live" ? "live · " : "history · ") + RESOLUTION_TEXT[view.resolution];
    chart.dataset.mode = state.mode;
    chart.dataset.resolution = view.resolution;
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
    if (state.mode === "live" && state.liveBuckets) loadLive(true);
  }, 60000);
})();

/* Ward overview: one card per visible patient, live over WS /ws/ward/live.
 * Cards are sorted by alarm severity, then pseudonym. Alarm changes, resync markers and seq gaps
 * refetch GET /api/v1/patients/ (debounced), which carries the authoritative state.
 * Tissue O2 is a card's value, trend and sparkline; the vital signs the deployment shows on cards
 * (PERFUSE_CARD_METRICS, e.g. SpO2) are listed beside it with their latest value.
 */
(function () {
  "use strict";
  const L = window.PerfuseLive;
  const S = window.PerfuseAlarmSignals; // visual alarm signals: the badge, title and favicon
  const RANK = { high: 0, medium: 1, low: 2 };
  const BUCKET_MS = 30000;
  const SPARK_MS = 30 * 60000;
  const FLAT = 0.5; // %/min, as dashboard/selectors.py TREND_FLAT_PER_MINUTE
  const PRIMARY = "tissue_o2"; // dashboard/selectors.py METRIC
  const staleAfter = JSON.parse(document.getElementById("stale-after").textContent);
  const container = document.getElementById("cards");
  const empty = document.getElementById("empty-ward");
  const cards = new Map(); // pseudonym -> state
  const tracker = new L.SeqTracker();
  let clockOffset = 0; // server time - browser time, ms
  let refetchTimer = null;

  function fromServer(card) {
    return {
      pseudonym: card.pseudonym,
      ward: card.ward,
      bed: card.bed || "",
      devices: card.devices || [],
      unit: card.unit,
      value: card.value,
      quality: card.quality,
      lastSeen: card.last_seen ? Date.parse(card.last_seen) : null,
      // [bucket start ms, avg, count]; server buckets count as one sample each.
      spark: card.sparkline.map(([t, v]) => [Date.parse(t), v, 1]),
      alarm: card.alarm,
      vitals: vitalsFromServer(card.vitals || []),
      el: null,
    };
  }

  /* metric -> {label, unit, value, lastSeen}, in the server's order. */
  function vitalsFromServer(list) {
    return new Map(list.map((v) => [v.metric, { label: v.label, unit: v.unit, value: v.value, lastSeen: Date.parse(v.last_seen) }]));
  }

  function replaceAll(list) {
    const seen = new Set();
    for (const card of list) {
      const next = fromServer(card);
      const current = cards.get(card.pseudonym);
      next.el = current ? current.el : null;
      cards.set(card.pseudonym, next);
      seen.add(card.pseudonym);
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        if (card.el) card.el.remove();
        cards.delete(name);
      }
    }
    render();
  }

  function dropCard(pseudonym) {
    const card = cards.get(pseudonym);
    if (!card) return;
    if (card.el) card.el.remove();
    cards.delete(pseudonym);
    render();
  }

  function scheduleRefetch() {
    if (refetchTimer) return;
    refetchTimer = setTimeout(async () => {
      try {
        const body = await L.fetchJSON("/api/v1/patients/", { background: true });
        replaceAll(body.patients);
      } catch (err) {
        console.warn("refetch failed", err);
      }
      refetchTimer = null;
    }, 2000);
  }

  function addPoints(card, points) {
    for (const p of points) {
      if (p.metric && p.metric !== PRIMARY) {
        addVital(card, p);
        continue;
      }
      const t = Date.parse(p.t);
      if (card.lastSeen === null || t >= card.lastSeen) {
        card.lastSeen = t;
        card.value = p.value;
        card.quality = p.quality;
      }
      const bucket = Math.floor(t / BUCKET_MS) * BUCKET_MS;
      const entry = card.spark.find((b) => b[0] === bucket);
      if (entry) {
        entry[1] = (entry[1] * entry[2] + p.value) / (entry[2] + 1);
        entry[2] += 1;
      } else {
        card.spark.push([bucket, p.value, 1]);
        card.spark.sort((a, b) => a[0] - b[0]);
      }
    }
    const cutoff = Date.now() + clockOffset - SPARK_MS;
    card.spark = card.spark.filter((b) => b[0] >= cutoff);
  }

  /* A card metric's reading: the newest one is shown. Its label and unit come with the card list,
   * so a metric the card does not list yet waits for the next refetch. */
  function addVital(card, p) {
    const vital = card.vitals.get(p.metric);
    if (!vital) return scheduleRefetch();
    const t = Date.parse(p.t);
    if (t >= vital.lastSeen) {
      vital.lastSeen = t;
      vital.value = p.value;
    }
  }

  function renderVitals(el, card, now) {
    const box = el.querySelector(".card-vitals");
    box.replaceChildren(
      ...[...card.vitals].map(([metric, v]) => {
        const item = document.createElement("span");
        item.className = "vital vital-" + metric;
        item.dataset.metric = metric;
        item.classList.toggle("stale", (now - v.lastSeen) / 1000 > staleAfter);
        item.textContent = v.label + " " + (Number.isInteger(v.value) ? v.value : v.value.toFixed(1)) + " " + v.unit;
        return item;
      })
    );
    box.hidden = card.vitals.size === 0;
  }

  function sparkPath(spark) {
    if (spark.length < 2) return "";
    const now = Date.now() + clockOffset;
    const values = spark.map((b) => b[1]);
    const lo = Math.min(...values);
    const hi = Math.max(...values);
    const span = hi - lo || 1;
    return spark
      .map(([t, v]) => {
        const x = (100 * (t - (now - SPARK_MS))) / SPARK_MS;
        const y = 28 - (26 * (v - lo)) / span;
        return x.toFixed(1) + "," + y.toFixed(1);
      })
      .join(" ");
  }

  function element(card) {
    if (card.el) return card.el;
    const a = document.createElement("a");
    a.className = "ward-card";
    a.href = "/patients/" + encodeURIComponent(card.pseudonym) + "/";
    a.dataset.pseudonym = card.pseudonym;
    a.innerHTML =
      '<div class="card-top"><span class="pseudo"></span><span class="bed"></span><span class="alarm-badge" hidden></span></div>' +
      '<div class="card-main"><span class="value"></span><span class="unit"></span><span class="trend"></span></div>' +
      '<div class="card-vitals" hidden></div>' +
      '<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none" aria-hidden="true"><polyline /></svg>' +
      '<div class="card-foot"><span class="quality"></span><span class="age"></span></div>';
    card.el = a;
    return a;
  }

  function update(card) {
    const el = element(card);
    const now = Date.now() + clockOffset;
    const age = card.lastSeen === null ? null : (now - card.lastSeen) / 1000;
    const stale = age === null || age > staleAfter;
    el.querySelector(".pseudo").textContent = card.pseudonym; // names are revealed on the chart only
    const bed = el.querySelector(".bed");
    bed.textContent = card.bed ? "Bed " + card.bed : "";
    bed.hidden = !card.bed;
    el.title = card.devices.length ? "Devices: " + card.devices.join(", ") : "No device associated";
    el.querySelector(".value").textContent = card.value === null ? "—" : card.value.toFixed(1);
    el.querySelector(".unit").textContent = card.value === null ? "" : card.unit;
    const slope = L.trendPerMinute(card.spark.map(([t, v]) => [t, v]), now);
    const direction = slope === null ? null : slope > FLAT ? "up" : slope < -FLAT ? "down" : "flat";
    const trend = el.querySelector(".trend");
    trend.textContent = L.trendArrow(direction);
    trend.title = slope === null ? "not enough data for a trend" : slope.toFixed(1) + " %/min over 5 min";
    el.querySelector(".spark polyline").setAttribute("points", sparkPath(card.spark));
    renderVitals(el, card, now);
    el.querySelector(".quality").textContent = card.quality === null ? "" : "SQ " + Math.round(card.quality * 100) + "%";
    el.querySelector(".age").textContent = (stale && age !== null ? "⚠ stale · " : "") + L.formatAge(age);
    el.classList.toggle("stale", stale);
    const badge = el.querySelector(".alarm-badge");
    el.dataset.alarm = card.alarm ? card.alarm.priority : "";
    badge.hidden = !card.alarm;
    S.mark(badge, card.alarm ? card.alarm.priority : null, card.alarm ? card.alarm.state : null);
    if (card.alarm) badge.textContent = card.alarm.priority.toUpperCase() + " · " + card.alarm.label;
  }

  function render() {
    const ordered = [...cards.values()].sort((a, b) => {
      const ra = a.alarm ? RANK[a.alarm.priority] ?? 9 : 9;
      const rb = b.alarm ? RANK[b.alarm.priority] ?? 9 : 9;
      return ra - rb || a.pseudonym.localeCompare(b.pseudonym);
    });
    ordered.forEach((card, i) => {
      update(card);
      if (container.children[i] !== card.el) container.insertBefore(card.el, container.children[i] || null);
    });
    empty.hidden = cards.size > 0;
    S.showHighest(S.highest(ordered.filter((c) => c.alarm).map((c) => c.alarm)));
  }

  function onFrame(frame) {
    switch (frame.type) {
      case "ward.snapshot":
        clockOffset = Date.parse(frame.server_time) - Date.now();
        tracker.reset([]);
        replaceAll(frame.patients);
        break;
      case "reading.batch": {
        if (tracker.observe(frame.ranges)) scheduleRefetch();
        const card = cards.get(frame.patient);
        if (!card) return scheduleRefetch();
        addPoints(card, frame.points);
        update(card);
        break;
      }
      case "patient.flow":
        // Discharged (or the admission cancelled): the card leaves at once; any other change
        // (admission, transfer, bed, devices) comes back with the refetched list.
        if (frame.event === "discharged" || frame.event === "admit_cancelled") dropCard(frame.patient);
        scheduleRefetch();
        break;
      case "alarm.transition":
      case "resync":
        scheduleRefetch();
        break;
      default:
        break;
    }
  }

  replaceAll(JSON.parse(document.getElementById("initial-cards").textContent));
  setInterval(() => cards.forEach(update), 1000);
  new L.LiveSocket("/ws/ward/live", { onFrame, statusEl: document.getElementById("live-status") });
})();

// Alarm console: render the open alarms, keep them live over WS /ws/alarms/live, act through the
// REST API. Frames are hints: after a reconnect the list is refetched over REST.
// Alarm signals (docs/alarms.md): the most urgent unacknowledged, unpaused alarm sounds
// (alarm-audio.js); until a user gesture arms the audio a banner says the console is silent;
// the audio pause silences its priority and lower for two minutes, recorded by the server; rows,
// title and favicon carry the visual signals (alarm-signals.js); keyboard shortcuts below.
(function () {
  "use strict";
  const root = document.getElementById("alarm-console");
  if (!root) return;
  const A = window.PerfuseAlarmAudio;
  const S = window.PerfuseAlarmSignals;
  const AUDIO_PAUSE_S = 120;
  const NOTIFY_CAUSES = new Set(["raised", "re_alert", "escalated"]);
  const canAccept = root.dataset.canAccept === "1";
  const canAcknowledge = root.dataset.canAcknowledge === "1";
  const rowsEl = document.getElementById("alarm-rows");
  const emptyEl = document.getElementById("alarm-empty");
  const statusEl = document.getElementById("live-status");
  const notesEl = document.getElementById("alarm-notes");
  const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const RANK = A.RANK;
  const alarms = new Map();
  const pauses = new Map();
  const sounder = new A.Sounder();
  const banner = document.getElementById("audio-banner");
  const pausedEl = document.getElementById("audio-paused");
  const pauseError = document.getElementById("audio-pause-error");
  const help = document.getElementById("shortcuts");
  let serverSkewMs = 0;
  let audioPause = null; // {until: ms on the server's clock, priority, seconds}
  let selected = null; // alarm id the shortcuts act on

  function setAlarms(list) {
    alarms.clear();
    for (const a of list) alarms.set(a.id, a);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function waited(iso) {
    const s = Math.max(0, Math.round((Date.now() + serverSkewMs - Date.parse(iso)) / 1000));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((data.error && (typeof data.error.detail === "string" ? data.error.detail : data.error.code)) || r.status);
    return data;
  }

  function act(cell, label, cls, fn) {
    const b = el("button", { type: "button", class: cls }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        const updated = await fn();
        if (updated && updated.id) { alarms.set(updated.id, updated); render(); }
      } catch (e) {
        cell.appendChild(el("div", { class: "err", role: "alert" }, String(e.message || e)));
        b.disabled = false;
      }
    });
    cell.appendChild(b);
    return b;
  }

  function row(a) {
    const tr = el("tr", { "data-alarm": a.id, tabindex: "-1", class: a.state === "active_unacknowledged" ? "unacked" : "acked" });
    if (a.id === selected) tr.classList.add("selected");
    const signal = tr.appendChild(el("td", { class: "signal" }));
    S.mark(signal, a.priority, a.state);
    signal.appendChild(el("span", { class: "prio prio-" + a.priority }, a.priority));
    const who = tr.appendChild(el("td"));
    who.appendChild(el("a", { href: a.chart_url }, a.patient));
    who.appendChild(el("div", { class: "ward" }, a.ward));
    const pause = pauses.get(a.patient);
    if (pause) {
      const left = Math.round((Date.parse(pause.until) - Date.now() - serverSkewMs) / 1000);
      if (left > 0) who.appendChild(el("div", { class: "paused", "data-until": pause.until, "data-priority": pause.priority }, "paused (" + pause.priority + ") " + left + " s"));
    }
    const what = tr.appendChild(el("td"));
    what.appendChild(el("a", { href: "/alarms/" + a.id + "/" }, a.kind_label));
    what.appendChild(el("div", { class: "cat" }, a.category + (a.recurrences ? " · recurred " + a.recurrences + "×" : "")));
    const st = tr.appendChild(el("td"));
    st.appendChild(el("div", { class: "state" }, a.state === "active_unacknowledged" ? "unacknowledged" : "acknowledged by " + a.acknowledged_by));
    if (a.note) st.appendChild(el("div", { class: "note" }, "“" + a.note + "”"));
    if (!a.condition_present) st.appendChild(el("div", { class: "cleared" }, a.latched && a.state === "active_unacknowledged" ? "condition cleared (latched)" : "condition cleared"));
    tr.appendChild(el("td", { class: "age", "data-since": a.activated_at }, waited(a.activated_at)));
    const esc = tr.appendChild(el("td"));
    esc.textContent = a.escalation_level ? "level " + a.escalation_level : "—";
    if (a.responsible) esc.appendChild(el("div", {}, "accepted by " + a.responsible));
    const cell = tr.appendChild(el("td", { class: "act" }));
    if (canAcknowledge && a.state === "active_unacknowledged") {
      const note = el("input", { type: "text", maxlength: "500", placeholder: "note", "aria-label": "acknowledgement note" });
      cell.appendChild(note);
      const ack = act(cell, "Acknowledge", "ack", () => post("/api/v1/alarms/" + a.id + "/acknowledge", { note: note.value }));
      note.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") ack.click();
        if (ev.key === "Escape") tr.focus();
      });
    }
    if (canAccept && !a.responsible) act(cell, "Accept", "accept", () => post("/api/v1/alarms/" + a.id + "/accept"));
    if (canAccept && a.escalation_level >= 1) act(cell, "Decline", "decline", () => post("/api/v1/alarms/" + a.id + "/decline", { reason: "" }));
    if (canAcknowledge) act(cell, "Pause 2 min", "pause", async () => {
      const p = await post("/api/v1/alarms/pauses", { patient: a.patient, seconds: 120, priority: a.priority === "high" ? "medium" : a.priority });
      pauses.set(p.patient, p);
      render();
    });
    return tr;
  }

  function render() {
    const list = [...alarms.values()].filter((a) => a.state !== "resolved");
    list.sort((x, y) => RANK[y.priority] - RANK[x.priority] || Date.parse(x.raised_at) - Date.parse(y.raised_at) || x.id - y.id);
    // Keep a half-typed note: do not re-render a row whose input has focus.
    const active = document.activeElement;
    const focused = active && active.matches && active.matches("tr[data-alarm] input") ? active.closest("tr") : null;
    const keep = focused ? Number(focused.dataset.alarm) : null;
    const rowFocused = active && active.matches && active.matches("tr[data-alarm]");
    const fresh = document.createDocumentFragment();
    for (const a of list) {
      if (keep === a.id && alarms.get(a.id).state === "active_unacknowledged" && focused) fresh.appendChild(focused);
      else fresh.appendChild(row(a));
    }
    rowsEl.replaceChildren(fresh);
    emptyEl.hidden = list.length > 0;
    // The selected row keeps the keyboard focus through a re-render.
    const again = rowFocused && rowsEl.querySelector("tr.selected");
    if (again) again.focus();
    signal();
  }

  // ---- signals ----------------------------------------------------------------------------

  function serverNow() {
    return Date.now() + serverSkewMs;
  }

  /* What sounds, the audio-pause countdown, title and favicon; a higher priority than the
   * audio pause covers breaks through it (and ends it). */
  function signal() {
    const list = [...alarms.values()];
    const now = serverNow();
    if (audioPause && audioPause.until <= now) audioPause = null;
    const loudest = A.choose(list, { patients: pauses, audio: null }, now);
    if (audioPause && loudest && RANK[loudest.priority] > RANK[audioPause.priority]) audioPause = null;
    const sounding = A.choose(list, { patients: pauses, audio: audioPause }, now);
    sounder.play(sounding);
    root.dataset.sounding = sounding ? sounding.priority + ":" + sounding.category : "";
    pausedEl.hidden = !audioPause;
    if (audioPause) {
      // Capped at the length asked: the clock skew measured at the snapshot is not exact.
      const left = Math.min(audioPause.seconds, Math.max(0, Math.ceil((audioPause.until - now) / 1000)));
      document.getElementById("audio-paused-priority").textContent = audioPause.priority;
      document.getElementById("audio-paused-left").textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
    }
    S.showHighest(S.highest(list));
  }

  /* Silence the console's audio for the priority sounding now and lower (low when nothing
   * sounds, so any medium or high alarm still breaks through). */
  async function pauseAudio() {
    const sounding = A.choose([...alarms.values()], { patients: pauses, audio: null }, serverNow());
    try {
      const p = await post("/api/v1/alarms/audio-pause", { seconds: AUDIO_PAUSE_S, priority: sounding ? sounding.priority : "low" });
      audioPause = { until: Date.parse(p.until), priority: p.priority, seconds: p.seconds };
    } catch (e) {
      pauseError.hidden = false;
      pauseError.textContent = "Audio not paused: " + (e.message || e);
      return;
    }
    pauseError.hidden = true;
    signal();
  }

  function showArming() {
    banner.hidden = sounder.armed;
    root.dataset.audio = sounder.armed ? "armed" : "not-armed";
  }

  // Hiding the banner moves the page up; done while a pointer is pressed it would move the button
  // under the pointer, and the click (down and up on the same element) would be lost. So the
  // banner leaves once the pointer is released, after the click went where the user aimed.
  let pressing = false;
  let armingChanged = false;
  function showArmingSoon() {
    if (pressing) armingChanged = true;
    else showArming();
  }

  function arm() {
    if (!sounder.armed) sounder.arm().then(showArmingSoon);
  }

  function released() {
    pressing = false;
    if (armingChanged) {
      armingChanged = false;
      setTimeout(showArming, 0); // after the click event of this press
    }
  }

  // ---- keyboard shortcuts -------------------------------------------------------------------

  function visibleRows() {
    return [...rowsEl.querySelectorAll("tr[data-alarm]")];
  }

  function select(tr) {
    if (!tr) return;
    selected = Number(tr.dataset.alarm);
    for (const r of visibleRows()) r.classList.toggle("selected", r === tr);
    tr.focus();
    tr.scrollIntoView({ block: "nearest" });
  }

  function step(by) {
    const rows = visibleRows();
    const at = rows.findIndex((r) => Number(r.dataset.alarm) === selected);
    select(rows[at === -1 ? (by > 0 ? 0 : rows.length - 1) : Math.min(Math.max(at + by, 0), rows.length - 1)]);
  }

  function selectedRow() {
    const rows = visibleRows();
    const tr = rows.find((r) => Number(r.dataset.alarm) === selected) || rows.find((r) => r.classList.contains("unacked"));
    if (tr && Number(tr.dataset.alarm) !== selected) select(tr);
    return tr;
  }

  function toggleHelp(open) {
    help.hidden = !open;
    if (open) document.getElementById("shortcuts-close").focus();
  }

  const SHORTCUTS = {
    j: () => step(1),
    ArrowDown: () => step(1),
    k: () => step(-1),
    ArrowUp: () => step(-1),
    a: () => {
      const tr = selectedRow();
      const note = tr && tr.querySelector("input[aria-label='acknowledgement note']");
      if (note) note.focus();
    },
    o: () => {
      const tr = selectedRow();
      if (tr) location.href = tr.querySelector("td a").href;
    },
    p: pauseAudio,
    "?": () => toggleHelp(help.hidden),
    Escape: () => toggleHelp(false),
  };

  function onKey(ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const typing = ev.target.closest && ev.target.closest("input, textarea, select, [contenteditable]");
    if (typing && ev.key !== "Escape") return;
    const action = SHORTCUTS[ev.key];
    if (!action || (typing && ev.key === "Escape")) return;
    ev.preventDefault();
    action();
  }

  function addNote(n) {
    const none = notesEl.querySelector(".none");
    if (none) none.remove();
    const li = el("li", { "data-note": n.id }, new Date(n.created_at).toLocaleTimeString() + " — " + n.text);
    notesEl.prepend(li);
  }

  async function refetch() {
    const r = await fetch("/api/v1/alarms/?state=active", { credentials: "same-origin" });
    if (r.ok) { setAlarms((await r.json()).alarms); render(); }
  }

  let retry = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/alarms/live");
    ws.onopen = () => { statusEl.dataset.state = "live"; statusEl.textContent = "live"; retry = 500; };
    ws.onmessage = (msg) => {
      const f = JSON.parse(msg.data);
      if (f.type === "alarm.snapshot") {
        serverSkewMs = Date.parse(f.server_time) - Date.now();
        setAlarms(f.alarms);
        const overflow = document.getElementById("alarm-overflow");
        overflow.hidden = f.alarms_total <= f.alarms.length;
        overflow.textContent = overflow.hidden ? "" :
          `Showing the ${f.alarms.length} most urgent of ${f.alarms_total} open alarms; new ones arrive as they happen.`;
        pauses.clear();
        for (const p of f.pauses) pauses.set(p.patient, p);
        render();
      } else if (f.type === "alarm.transition") {
        if (f.alarm.state === "resolved") alarms.delete(f.alarm.id); else alarms.set(f.alarm.id, f.alarm);
        if (f.alarm.state === "active_unacknowledged" && NOTIFY_CAUSES.has(f.transition.cause)) S.notifyBackground(f.alarm);
        render();
      } else if (f.type === "alarm.pause") {
        pauses.set(f.patient, f);
        render();
      } else if (f.type === "alarm.notification") {
        addNote(f);
      }
    };
    ws.onclose = (ev) => {
      statusEl.dataset.state = "offline";
      statusEl.textContent = ev.code === 4403 ? "not allowed" : ev.code === 4401 ? "signed out" : "offline — reconnecting";
      if (ev.code === 4403 || ev.code === 4401) return;
      setTimeout(() => { refetch().catch(() => {}); connect(); }, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  // Any gesture arms the audio (the browser's condition for sound); the button also asks to show
  // system notifications. The banner stays until the context runs, and returns if it stops.
  sounder.onchange = showArmingSoon;
  document.addEventListener("pointerdown", () => { pressing = true; arm(); }, true);
  document.addEventListener("pointerup", released, true);
  document.addEventListener("pointercancel", released, true);
  document.addEventListener("keydown", arm, true);
  document.getElementById("audio-arm").addEventListener("click", () => {
    arm();
    S.askNotifications();
  });
  document.getElementById("audio-pause").addEventListener("click", pauseAudio);
  document.getElementById("audio-resume").addEventListener("click", () => {
    audioPause = null;
    signal();
  });
  document.getElementById("shortcuts-open").addEventListener("click", () => toggleHelp(true));
  document.getElementById("shortcuts-close").addEventListener("click", () => toggleHelp(false));
  rowsEl.addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-alarm]");
    if (tr && !ev.target.closest("a, button, input")) select(tr);
  });
  document.addEventListener("keydown", onKey);
  window.perfuseConsole = { sounder };

  setAlarms(JSON.parse(document.getElementById("alarm-initial").textContent));
  showArming();
  render();
  connect();
  setInterval(() => {
    showArming();
    signal();
    for (const td of rowsEl.querySelectorAll("td.age")) td.textContent = waited(td.dataset.since);
    for (const d of rowsEl.querySelectorAll(".paused[data-until]")) {
      const left = Math.round((Date.parse(d.dataset.until) - Date.now() - serverSkewMs) / 1000);
      d.textContent = "paused (" + d.dataset.priority + ") " + Math.max(left, 0) + " s";
    }
    for (const [k, p] of pauses) if (Date.parse(p.until) < Date.now() + serverSkewMs) { pauses.delete(k); render(); }
  }, 1000);
})();

// Alarm console: render the open alarms, keep them live over WS /ws/alarms/live, act through the
// REST API. Frames are hints: after a reconnect the list is refetched over REST.
(function () {
  "use strict";
  const root = document.getElementById("alarm-console");
  if (!root) return;
  const canAccept = root.dataset.canAccept === "1";
  const canAcknowledge = root.dataset.canAcknowledge === "1";
  const rowsEl = document.getElementById("alarm-rows");
  const emptyEl = document.getElementById("alarm-empty");
  const statusEl = document.getElementById("live-status");
  const notesEl = document.getElementById("alarm-notes");
  const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const RANK = { high: 3, medium: 2, low: 1 };
  const alarms = new Map();
  const pauses = new Map();
  let serverSkewMs = 0;

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
    const tr = el("tr", { "data-alarm": a.id, class: a.state === "active_unacknowledged" ? "unacked" : "acked" });
    tr.appendChild(el("td")).appendChild(el("span", { class: "prio prio-" + a.priority }, a.priority));
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
      act(cell, "Acknowledge", "ack", () => post("/api/v1/alarms/" + a.id + "/acknowledge", { note: note.value }));
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
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("tr[data-alarm]");
    const keep = focused ? Number(focused.dataset.alarm) : null;
    const fresh = document.createDocumentFragment();
    for (const a of list) {
      if (keep === a.id && alarms.get(a.id).state === "active_unacknowledged" && focused) fresh.appendChild(focused);
      else fresh.appendChild(row(a));
    }
    rowsEl.replaceChildren(fresh);
    emptyEl.hidden = list.length > 0;
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
        pauses.clear();
        for (const p of f.pauses) pauses.set(p.patient, p);
        render();
      } else if (f.type === "alarm.transition") {
        if (f.alarm.state === "resolved") alarms.delete(f.alarm.id); else alarms.set(f.alarm.id, f.alarm);
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

  setAlarms(JSON.parse(document.getElementById("alarm-initial").textContent));
  render();
  connect();
  setInterval(() => {
    for (const td of rowsEl.querySelectorAll("td.age")) td.textContent = waited(td.dataset.since);
    for (const d of rowsEl.querySelectorAll(".paused[data-until]")) {
      const left = Math.round((Date.parse(d.dataset.until) - Date.now() - serverSkewMs) / 1000);
      d.textContent = "paused (" + d.dataset.priority + ") " + Math.max(left, 0) + " s";
    }
    for (const [k, p] of pauses) if (Date.parse(p.until) < Date.now() + serverSkewMs) { pauses.delete(k); render(); }
  }, 1000);
})();

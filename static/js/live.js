/* Perfuse live socket client shared by the ward overview and the patient chart.
 *
 * Protocol: docs/live-protocol.md. The socket sends a snapshot, then typed frames; several
 * frames coalesced into one message arrive as {"type": "frames", "frames": [...]}. Frames are
 * hints: a gap in a device's seq ranges, a `resync` frame or a reconnect makes the page refetch
 * over REST, so nothing is silently missed. Reconnects back off exponentially (with jitter).
 */
(function () {
  "use strict";

  const STATUS_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting",
    denied: "access refused",
    ended: "signed out",
    discharged: "patient discharged",
  };

  class LiveSocket {
    constructor(path, { onFrame, onConnected, statusEl }) {
      this.path = path;
      this.onFrame = onFrame;
      this.onConnected = onConnected || (() => {});
      this.statusEl = statusEl;
      this.attempt = 0;
      this.connections = 0;
      this.stopped = false;
      this.connect();
    }

    setStatus(state, extra) {
      if (!this.statusEl) return;
      this.statusEl.dataset.state = state;
      this.statusEl.textContent = STATUS_TEXT[state] + (extra ? " " + extra : "");
    }

    connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      this.setStatus(this.connections ? "reconnecting" : "connecting");
      const ws = new WebSocket(scheme + location.host + this.path);
      this.ws = ws;
      ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        if (message.type === "snapshot" || message.type === "ward.snapshot") {
          this.attempt = 0;
          this.connections += 1;
          this.setStatus("live");
          this.onConnected(this.connections > 1);
        }
        const frames = message.type === "frames" ? message.frames : [message];
        for (const frame of frames) this.onFrame(frame);
      };
      ws.onclose = (event) => {
        if (this.stopped) return;
        if (event.code === 4403) return this.setStatus("denied");
        if (event.code === 4401) return this.setStatus("ended");
        if (event.code === 4410) return this.setStatus("discharged"); // the patient left: history only
        const delay = Math.min(30000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
        this.attempt += 1;
        this.setStatus("reconnecting", "in " + Math.round(delay / 1000) + " s");
        setTimeout(() => this.connect(), delay);
      };
    }

    close() {
      this.stopped = true;
      if (this.ws) this.ws.close();
    }
  }

  /* Last seq seen per device; `gap` is true when a frame skips seqs after the last one seen. */
  class SeqTracker {
    constructor() {
      this.last = new Map();
    }
    reset(ranges) {
      this.last = new Map();
      this.observe(ranges);
    }
    observe(ranges) {
      let gap = false;
      for (const r of ranges || []) {
        const last = this.last.get(r.device);
        if (last !== undefined && r.first > last + 1) gap = true;
        if (last === undefined || r.last > last) this.last.set(r.device, r.last);
      }
      return gap;
    }
  }

  /* `background: true` for fetches nobody asked for (refetches, periodic reloads): they must not
   * keep a forgotten session alive (audit/access/middleware.py). Other fetches count as activity. */
  async function fetchJSON(url, options) {
    const opts = Object.assign({ credentials: "same-origin" }, options || {});
    const perfuse = window.Perfuse || {};
    if (opts.background) {
      opts.headers = Object.assign({}, opts.headers || {}, perfuse.backgroundHeaders || { "X-Perfuse-Background": "1" });
    } else if (perfuse.sessionActivity) {
      perfuse.sessionActivity();
    }
    delete opts.background;
    const response = await fetch(url, opts);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = body && body.error ? body.error.detail : response.statusText;
      throw new Error(detail);
    }
    return body;
  }

  function formatAge(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "no data";
    if (seconds < 1) return "now";
    if (seconds < 90) return Math.round(seconds) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  /* Least-squares slope in units per minute of [tMs, value] pairs within the last 5 minutes. */
  function trendPerMinute(pairs, nowMs) {
    const recent = pairs.filter(([t]) => t >= nowMs - 300000);
    if (recent.length < 3) return null;
    const xs = recent.map(([t]) => (t - nowMs) / 60000);
    const ys = recent.map(([, v]) => v);
    const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
    const my = ys.reduce((a, b) => a + b, 0) / ys.length;
    let num = 0;
    let den = 0;
    for (let i = 0; i < xs.length; i++) {
      num += (xs[i] - mx) * (ys[i] - my);
      den += (xs[i] - mx) ** 2;
    }
    return den ? num / den : null;
  }

  function trendArrow(direction) {
    return { up: "↑", down: "↓", flat: "→" }[direction] || "·";
  }

  window.PerfuseLive = { LiveSocket, SeqTracker, fetchJSON, formatAge, trendPerMinute, trendArrow };
})();

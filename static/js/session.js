// Inactivity warning: counts down the server's idle limit, warns before it ends, and lets the
// user stay signed in (a ping the server counts as activity). Other scripts' background fetches
// send X-Perfuse-Background: 1 so they do not keep a forgotten session alive.
(function () {
  "use strict";
  var body = document.body;
  var idle = parseInt(body.dataset.idleSeconds || "0", 10);
  var warnAt = parseInt(body.dataset.warningSeconds || "120", 10);
  if (!idle) return;
  var banner = document.getElementById("session-warning");
  var countdown = document.getElementById("session-countdown");
  var stay = document.getElementById("session-stay");
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var deadline = Date.now() + idle * 1000;

  window.Perfuse = window.Perfuse || {};
  window.Perfuse.csrfToken = csrf;
  window.Perfuse.backgroundHeaders = { "X-Perfuse-Background": "1" };
  window.Perfuse.sessionActivity = function () { deadline = Date.now() + idle * 1000; };

  function fmt(s) { var m = Math.floor(s / 60); s = s % 60; return m + ":" + (s < 10 ? "0" : "") + s; }
  function tick() {
    var left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    if (left <= 0) {
      window.location.href = "/accounts/login/?next=" + encodeURIComponent(window.location.pathname);
      return;
    }
    banner.hidden = left > warnAt;
    countdown.textContent = fmt(left);
  }
  stay.addEventListener("click", function () {
    fetch("/accounts/session/ping", { method: "POST", headers: { "X-CSRFToken": csrf, Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) {
        if (r.ok) { window.Perfuse.sessionActivity(); tick(); }
        else { window.location.href = "/accounts/login/"; }
      });
  });
  setInterval(tick, 1000);
  tick();

  // The server closes this socket when the session ends anywhere (logout everywhere, expiry).
  var retry = 2000;
  function watch() {
    var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/session");
    ws.onopen = function () { retry = 2000; };
    ws.onclose = function (ev) {
      if (ev.code === 4401) { window.location.href = "/accounts/login/"; return; }
      setTimeout(watch, retry);
      retry = Math.min(retry * 2, 60000);
    };
  }
  if ("WebSocket" in window) watch();
})();

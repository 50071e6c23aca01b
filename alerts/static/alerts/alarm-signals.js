/* Visual alarm signals the alarm console, the ward overview and the patient chart share
 * (docs/alarms.md, "Alarm signals"): an element's indicator (`mark`, drawn by static/css/signals.css:
 * high red flashing, medium yellow flashing, low cyan steady), the page title and favicon showing
 * the most urgent priority still awaiting acknowledgement (`showHighest`), a system notification
 * when the tab is in the background (`notifyBackground`), and the chart's indicator of the
 * patient's open alarms (`patientIndicator`, fed the chart socket's frames).
 */
(function () {
  "use strict";
  const RANK = { high: 3, medium: 2, low: 1 };
  const COLOR = { high: "#c1121f", medium: "#ffd000", low: "#00b8d9" };
  const GLYPH = { high: "!!!", medium: "!!", low: "!" };
  const baseTitle = document.title;
  const icon = document.getElementById("favicon");
  const baseIcon = icon ? icon.getAttribute("href") : null;
  const drawn = {};
  let shown = null;

  function unacknowledged(alarm) {
    return alarm.state === "active_unacknowledged";
  }

  /* The most urgent priority among `alarms` ({priority, state}) awaiting acknowledgement. */
  function highest(alarms) {
    let best = null;
    for (const a of alarms) if (unacknowledged(a) && (!best || RANK[a.priority] > RANK[best])) best = a.priority;
    return best;
  }

  /* Make `el` an indicator of an alarm of `priority` in `state` (none: not an indicator). */
  function mark(el, priority, state) {
    el.classList.toggle("sig", Boolean(priority));
    if (priority) {
      el.dataset.priority = priority;
      el.dataset.state = state;
    } else {
      delete el.dataset.priority;
      delete el.dataset.state;
    }
  }

  function faviconFor(priority) {
    if (drawn[priority]) return drawn[priority];
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 64;
    const g = canvas.getContext("2d");
    g.fillStyle = COLOR[priority];
    g.beginPath();
    g.arc(32, 32, 30, 0, 2 * Math.PI);
    g.fill();
    g.fillStyle = priority === "high" ? "#fff" : "#111";
    g.font = "bold 30px sans-serif";
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText(GLYPH[priority], 32, 34);
    drawn[priority] = canvas.toDataURL("image/png");
    return drawn[priority];
  }

  /* Title and favicon show `priority` (or the page's own when null). */
  function showHighest(priority) {
    if (priority === shown) return; // browsers may fetch the icon again on every assignment
    shown = priority;
    document.title = priority ? priority.toUpperCase() + " alarm · " + baseTitle : baseTitle;
    if (!icon) return;
    icon.setAttribute("href", priority ? faviconFor(priority) : baseIcon);
    if (priority) icon.dataset.priority = priority;
    else delete icon.dataset.priority;
  }

  /* Asked from a user gesture (browsers ignore the request otherwise). */
  function askNotifications() {
    if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
  }

  /* A system notification for `alarm` (pseudonym, ward, condition: no more than the console
   * shows) when this tab is not being looked at; clicking it brings the tab forward. */
  function notifyBackground(alarm) {
    if (document.visibilityState !== "hidden" || !("Notification" in window) || Notification.permission !== "granted") return;
    const n = new Notification(alarm.priority.toUpperCase() + " alarm · " + alarm.patient, {
      body: alarm.kind_label + " · " + alarm.ward,
      tag: "perfuse-alarm-" + alarm.id,
      requireInteraction: alarm.priority === "high",
    });
    n.addEventListener("click", () => {
      window.focus();
      n.close();
    });
  }

  /* The chart's indicator: the patient's most urgent open alarm, flashing until acknowledged. */
  function patientIndicator(el) {
    const open = new Map(); // id -> {priority, state, label}
    function render() {
      const list = [...open.values()].sort((x, y) => unacknowledged(y) - unacknowledged(x) || RANK[y.priority] - RANK[x.priority]);
      const top = list[0];
      el.hidden = !top;
      mark(el, top ? top.priority : null, top ? top.state : null);
      el.textContent = top ? top.priority.toUpperCase() + " · " + top.label + (unacknowledged(top) ? "" : " (acknowledged)") : "";
      showHighest(highest(list));
    }
    return {
      onFrame(frame) {
        if (frame.type === "snapshot") {
          open.clear();
          for (const a of frame.alarms || []) open.set(a.id, { priority: a.priority, state: a.state, label: a.label });
        } else if (frame.type === "alarm.transition") {
          const a = frame.alarm;
          if (a.state === "resolved") open.delete(a.id);
          else open.set(a.id, { priority: a.priority, state: a.state, label: a.kind_label });
        } else {
          return;
        }
        render();
      },
    };
  }

  window.PerfuseAlarmSignals = { RANK, highest, mark, showHighest, askNotifications, notifyBackground, patientIndicator };
})();

/* Auditory alarm signals after IEC 60601-1-8, synthesized with Web Audio (design and sources:
 * docs/alarms.md, "Alarm signals").
 *
 * `pattern(priority, category)` is pure: the pulses of one burst (start offset, fundamental,
 * envelope) and the interburst interval, from the standard's Table 3 (burst) and Table 4 (pulse).
 * `choose(alarms, pauses)` picks the one alarm that sounds: the most urgent one still awaiting
 * acknowledgement that no pause silences. `Sounder` plays it. Its AudioContext is made at page
 * load and, under the browsers' autoplay rules, stays suspended until a user gesture resumes it
 * (`arm`); `onchange` tells the page, which must show that state. Bursts are scheduled on the
 * audio clock up to LOOKAHEAD_S ahead, because timers of a background tab may wake only once a
 * minute, and every pulse not yet played is cancelled when the sounding signal changes or ends.
 */
(function () {
  "use strict";
  const RANK = { high: 3, medium: 2, low: 1 };
  const NOTE = { C4: 261.63, F4: 349.23, G4: 392.0, A4: 440.0, B4: 493.88, C5: 523.25 };
  // Annex F melodies (informative): "oxygen" for the tissue-O2 conditions, "equipment or supply
  // failure" for technical ones, so a nurse hears which kind it is before looking.
  const MELODY = { physiological: ["C5", "B4", "A4", "G4", "F4"], technical: ["C5", "C4", "C4", "C5", "C4"] };
  // Fundamental and harmonics 2-5 (sine terms of the periodic wave), each within 15 dB of the
  // fundamental (0.3 is -10.5 dB): at least four components in 300-4000 Hz for every note.
  const HARMONICS = [1, 0.7, 0.5, 0.4, 0.3];
  // Seconds. A pulse rises (linearly), holds and falls; `gap` runs from the end of one pulse's
  // envelope to the start of the next. High: x = gap, 2x + td after pulses 3 and 8, the
  // half-burst pause after pulse 5. Medium and low: y = gap. Interval: end of burst to next burst.
  const TIMING = {
    high: { pulses: 10, rise: 0.02, hold: 0.12, gap: 0.06, pause: 0.6, interval: 5 },
    medium: { pulses: 3, rise: 0.03, hold: 0.15, gap: 0.15, interval: 10 },
    low: { pulses: 2, rise: 0.03, hold: 0.15, gap: 0.15, interval: 20 },
  };
  const LOOKAHEAD_S = 75;
  const LEVEL = 0.25;

  function gapAfter(t, index) {
    if (t.pulses !== 10) return t.gap;
    const envelope = 2 * t.rise + t.hold;
    if (index === 4) return t.pause;
    return index === 2 || index === 7 ? 2 * t.gap + envelope : t.gap;
  }

  /* One burst: {priority, category, pulses: [{at, frequency, rise, hold, fall}], length, interval}. */
  function pattern(priority, category) {
    const t = TIMING[priority];
    const melody = MELODY[category] || MELODY.physiological;
    const pulses = [];
    let at = 0;
    for (let i = 0; i < t.pulses; i++) {
      pulses.push({ at, frequency: NOTE[melody[i % melody.length]], rise: t.rise, hold: t.hold, fall: t.rise });
      at += 2 * t.rise + t.hold + (i < t.pulses - 1 ? gapAfter(t, i) : 0);
    }
    return { priority, category, pulses, length: at, interval: t.interval, harmonics: HARMONICS.slice() };
  }

  function paused(alarm, pauses, now) {
    const pause = pauses.patients.get(alarm.patient);
    if (pause && Date.parse(pause.until) > now && RANK[pause.priority] >= RANK[alarm.priority]) return true;
    const audio = pauses.audio;
    return Boolean(audio && audio.until > now && RANK[audio.priority] >= RANK[alarm.priority]);
  }

  /* The alarm that sounds: unacknowledged, not silenced by a patient pause or the console's
   * audio pause, most urgent first; a physiological condition before a technical one of the
   * same priority, then the longest waiting. */
  function choose(alarms, pauses, now) {
    const candidates = alarms.filter((a) => a.state === "active_unacknowledged" && !paused(a, pauses, now));
    candidates.sort(
      (x, y) =>
        RANK[y.priority] - RANK[x.priority] ||
        (x.category === "technical") - (y.category === "technical") ||
        Date.parse(x.activated_at) - Date.parse(y.activated_at)
    );
    return candidates[0] || null;
  }

  class Sounder {
    constructor() {
      const Context = window.AudioContext || window.webkitAudioContext;
      this.ctx = Context ? new Context() : null;
      this.onchange = () => {};
      this.key = null;
      this.burst = null;
      this.nextAt = null;
      this.scheduled = []; // {osc, gain, start, end}
      if (!this.ctx) return;
      this.out = this.ctx.createGain();
      this.out.gain.value = LEVEL;
      this.out.connect(this.ctx.destination);
      this.wave = this.ctx.createPeriodicWave(new Float32Array(HARMONICS.length + 1), Float32Array.from([0, ...HARMONICS]));
      this.ctx.addEventListener("statechange", () => {
        this.refill();
        this.onchange();
      });
      setInterval(() => this.refill(), 1000);
    }

    get armed() {
      return Boolean(this.ctx) && this.ctx.state === "running";
    }

    /* From a user gesture: resume the context (the browser refuses without one). */
    arm() {
      if (!this.ctx) return Promise.resolve(false);
      return this.ctx.resume().then(
        () => this.armed,
        () => false
      );
    }

    /* Sound `alarm`'s signal (priority and category decide it), or silence for null. */
    play(alarm) {
      const key = alarm ? alarm.priority + ":" + alarm.category : null;
      if (key === this.key) return;
      this.cancel();
      this.key = key;
      this.burst = alarm ? pattern(alarm.priority, alarm.category) : null;
      this.nextAt = null;
      this.refill();
    }

    refill() {
      if (!this.burst || !this.armed) return;
      const now = this.ctx.currentTime;
      this.scheduled = this.scheduled.filter((p) => p.end > now);
      if (this.nextAt === null || this.nextAt < now) this.nextAt = now + 0.05;
      while (this.nextAt < now + LOOKAHEAD_S) {
        for (const pulse of this.burst.pulses) this.schedule(this.nextAt + pulse.at, pulse);
        this.nextAt += this.burst.length + this.burst.interval;
      }
    }

    schedule(start, pulse) {
      const osc = this.ctx.createOscillator();
      const gain = this.ctx.createGain();
      osc.setPeriodicWave(this.wave);
      osc.frequency.value = pulse.frequency;
      const full = start + pulse.rise;
      const end = full + pulse.hold + pulse.fall;
      gain.gain.setValueAtTime(0, start);
      gain.gain.linearRampToValueAtTime(1, full);
      gain.gain.setValueAtTime(1, full + pulse.hold);
      gain.gain.linearRampToValueAtTime(0, end);
      osc.connect(gain).connect(this.out);
      osc.start(start);
      osc.stop(end);
      this.scheduled.push({ osc, gain, start, end });
    }

    /* Pulses not yet begun never play; one that is playing fades out within 20 ms. */
    cancel() {
      if (!this.ctx) return;
      const now = this.ctx.currentTime;
      for (const p of this.scheduled) {
        if (p.end <= now) continue;
        if (p.start >= now) {
          p.osc.stop(now);
        } else {
          p.gain.gain.cancelScheduledValues(now);
          p.gain.gain.setTargetAtTime(0, now, 0.005);
          p.osc.stop(now + 0.02);
        }
      }
      this.scheduled = [];
    }
  }

  window.PerfuseAlarmAudio = { RANK, TIMING, pattern, choose, Sounder };
})();

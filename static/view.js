// What the page shows: the connection state, the stream picker, the latest window's bar chart
// and totals, the last windows' history, and the swarm. Every value from data goes into the DOM as text (textContent) or a data attribute,
// never as HTML.

const REMEMBERED_WINDOWS = 64;
const MAX_PARTICLES = 400;       // on screen at once; more would only slow the page down
const MAX_PER_UPDATE = 150;      // copies of one emoji started by one update
const HISTORY_WINDOWS = 30;      // windows in the history chart
const TIMELINE_WINDOWS = 150;    // windows in the timeline: 5 minutes of 2-second windows

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function byTestId(id) {
  return document.querySelector(`[data-testid="${id}"]`);
}

export function showState(state, detail) {
  const node = byTestId("connection-state");
  node.dataset.state = state;
  node.textContent = state;
  node.title = detail || "";
  byTestId("message").textContent = detail && state !== "live" ? detail : "";
}

export function showCluster(clusterId) {
  byTestId("cluster").textContent = clusterId || "–";
}

export function showViewersOnline(count) {
  byTestId("viewers-online").textContent = count === null ? "–" : String(count);
}

/** Presence: the chosen stream's viewers, as the latest update says (null: not known). */
export function showWatching(count) {
  byTestId("watching").textContent = count === null ? "–" : String(count);
}

export function showSent(total, error) {
  byTestId("sent-count").textContent = String(total);
  byTestId("send-error").textContent = error ? ` · ${error}` : "";
}

/** The stream picker's options: the known streams (GET /streams: [{stream_id, viewers}, ...]),
 * the chosen one always among them. */
export function showStreams(streams, chosen) {
  const picker = byTestId("stream-picker");
  const known = new Map(streams.map((s) => [s.stream_id, s]));
  if (!known.has(chosen)) {
    known.set(chosen, {stream_id: chosen, viewers: null});
  }
  const options = [...known.values()].map((stream) => {
    // The chosen stream's count is the live one of its updates (showWatching), not this one.
    const viewers = Number.isFinite(stream.viewers) && stream.stream_id !== chosen
      ? ` · ${stream.viewers} watching` : "";
    const option = element("option", "", `${stream.stream_id}${viewers}`);
    option.value = stream.stream_id;
    return option;
  });
  picker.replaceChildren(...options);
  picker.value = chosen;
}

/** The row of emoji buttons; onButton(button, emoji) wires each. */
export function buildButtons(emojis, onButton) {
  const row = byTestId("emoji-buttons");
  row.replaceChildren();
  for (const emoji of emojis) {
    const button = element("button", "emoji-button", emoji);
    button.type = "button";
    button.dataset.testid = "emoji-button";
    button.dataset.emoji = emoji;
    button.setAttribute("aria-label", `send ${emoji}`);
    row.append(button);
    onButton(button, emoji);
  }
}

/** The latest window's counts as a column chart, one column per emoji. */
export class Chart {
  constructor(emojis) {
    this.section = byTestId("window");
    this.list = byTestId("chart");
    this.columns = new Map();
    this.list.replaceChildren();
    this.section.dataset.windowStart = "";
    this.section.dataset.windowEnd = "";
    byTestId("window-time").textContent = "waiting for the first update…";
    byTestId("total-events").textContent = "0";
    for (const emoji of emojis) {
      this.column(emoji);
    }
  }

  column(emoji) {
    let column = this.columns.get(emoji);
    if (!column) {
      const item = element("li", "column");
      item.dataset.testid = "bar";
      item.dataset.emoji = emoji;
      const count = element("span", "count", "0");
      count.dataset.testid = "bar-count";
      const track = element("span", "track");
      const fill = element("span", "fill");
      track.append(fill);
      const label = element("span", "emoji", emoji);
      const normalized = element("span", "normalized", "");
      normalized.dataset.testid = "bar-normalized";
      item.append(count, track, label, normalized);
      this.list.append(item);
      column = {item, count, fill, normalized};
      this.columns.set(emoji, column);
    }
    return column;
  }

  show(update) {
    const byEmoji = new Map(update.aggregates.map((a) => [a.emoji_type, a]));
    for (const emoji of byEmoji.keys()) {
      this.column(emoji); // an emoji the configuration did not list still gets a column
    }
    const highest = Math.max(1, ...update.aggregates.map((a) => a.count));
    let total = 0;
    for (const [emoji, column] of this.columns) {
      const aggregate = byEmoji.get(emoji);
      const count = aggregate ? aggregate.count : 0;
      const normalized = aggregate ? aggregate.normalized_count : 0;
      total += count;
      column.item.dataset.count = String(count);
      column.item.dataset.normalized = String(normalized);
      column.item.dataset.users = aggregate && aggregate.unique_users !== null
        ? String(aggregate.unique_users) : "0";
      column.item.classList.toggle("empty", count === 0);
      column.item.title = `${emoji}: ${count} in this window` +
        (aggregate && aggregate.unique_users !== null ? ` from ${aggregate.unique_users} viewer(s)` : "") +
        `, ${normalized} floating`;
      column.count.textContent = String(count);
      column.normalized.textContent = normalized > 0 ? `×${normalized}` : "";
      column.fill.style.setProperty("--level", String(count / highest));
    }
    this.section.dataset.windowStart = update.window_start;
    this.section.dataset.windowEnd = update.window_end;
    byTestId("window-time").textContent = `${clock(update.window_start)}–${clock(update.window_end)}`;
    byTestId("total-events").textContent = String(total);
  }
}

/** The last HISTORY_WINDOWS windows' count of each emoji, one sparkline row per emoji; each
 * row's data-counts lists them oldest first. */
export class History {
  constructor(emojis) {
    this.list = byTestId("history");
    this.emojis = [...emojis];
    this.windows = new Map(); // window_start -> Map(emoji -> count), newest last when drawn
    this.list.replaceChildren();
  }

  show(update) {
    this.windows.set(update.window_start,
                     new Map(update.aggregates.map((a) => [a.emoji_type, a.count])));
    for (const aggregate of update.aggregates) {
      if (!this.emojis.includes(aggregate.emoji_type)) {
        this.emojis.push(aggregate.emoji_type);
      }
    }
    const starts = [...this.windows.keys()].sort((a, b) => Date.parse(a) - Date.parse(b));
    for (const start of starts.slice(0, -HISTORY_WINDOWS)) {
      this.windows.delete(start);
    }
    this.draw(starts.slice(-HISTORY_WINDOWS));
  }

  draw(starts) {
    const series = this.emojis.map((emoji) =>
      [emoji, starts.map((start) => this.windows.get(start).get(emoji) || 0)]);
    const highest = Math.max(1, ...series.flatMap(([, counts]) => counts));
    this.list.replaceChildren(...series.map(([emoji, counts]) => row(emoji, counts, highest)));
    this.list.dataset.windows = String(starts.length);
  }
}

/** The stream's last minutes, a bar per window (its total), the moments marked: a moment is a
 *  button that shows its window's emoji counts. */
export class Timeline {
  constructor() {
    this.strip = byTestId("timeline");
    this.detail = byTestId("moment-detail");
    this.windows = new Map(); // window_start -> {total, moment, aggregates}
    this.strip.replaceChildren();
    this.strip.dataset.windows = "0";
    this.strip.dataset.moments = "0";
    this.detail.textContent = "";
    delete this.detail.dataset.windowStart;
  }

  /** A live (or recovered) update: it replaces its window's earlier version. */
  show(update) {
    this.keep(update);
    this.draw();
  }

  /** Windows from the history (GET /streams/ID/windows), older than or as old as the live
   *  ones: a window already shown keeps its live version. */
  load(updates) {
    for (const update of updates) {
      if (!this.windows.has(update.window_start)) {
        this.keep(update);
      }
    }
    this.draw();
  }

  keep(update) {
    this.windows.set(update.window_start, {
      total: update.aggregates.reduce((sum, a) => sum + a.count, 0),
      moment: update.moment,
      aggregates: update.aggregates,
    });
  }

  draw() {
    const starts = [...this.windows.keys()].sort((a, b) => Date.parse(a) - Date.parse(b));
    for (const start of starts.slice(0, -TIMELINE_WINDOWS)) {
      this.windows.delete(start);
    }
    const shown = starts.slice(-TIMELINE_WINDOWS);
    const highest = Math.max(1, ...shown.map((start) => this.windows.get(start).total));
    let moments = 0;
    this.strip.replaceChildren(...shown.map((start) => {
      const window = this.windows.get(start);
      const tick = element(window.moment ? "button" : "span",
                           window.moment ? "tick moment" : "tick");
      tick.style.setProperty("--level", String(window.total / highest));
      tick.dataset.windowStart = start;
      tick.dataset.total = String(window.total);
      tick.title = `${clock(start)}: ${window.total} reactions` +
        (window.moment ? " — a moment: click for its emojis" : "");
      if (window.moment) {
        moments += 1;
        tick.type = "button";
        tick.dataset.testid = "moment";
        tick.addEventListener("click", () => this.select(start));
      }
      return tick;
    }));
    this.strip.dataset.windows = String(shown.length);
    this.strip.dataset.moments = String(moments);
  }

  /** The window's emojis, most first, in the detail line. */
  select(start) {
    const window = this.windows.get(start);
    if (!window) {
      return;
    }
    const counts = [...window.aggregates].sort((a, b) => b.count - a.count)
      .map((a) => `${a.emoji_type} ${a.count}`);
    this.detail.textContent = `${clock(start)} · ${window.total} reactions: ${counts.join(" · ")}`;
    this.detail.dataset.windowStart = start;
  }
}

function row(emoji, counts, highest) {
  const item = element("li", "history-row");
  item.dataset.testid = "history-row";
  item.dataset.emoji = emoji;
  item.dataset.counts = counts.join(",");
  const latest = counts.length ? counts[counts.length - 1] : 0;
  item.title = `${emoji}: ${counts.join(", ")} (last ${counts.length} windows, oldest first)`;
  item.append(element("span", "emoji", emoji), sparkline(counts, highest),
              element("span", "latest", String(latest)));
  return item;
}

/** A bar per window, scaled so that ``highest`` fills the height; the newest at the right. */
function sparkline(counts, highest) {
  const bars = element("span", "sparkline");
  for (let i = counts.length; i < HISTORY_WINDOWS; i += 1) {
    bars.append(element("span", "spark empty"));
  }
  for (const count of counts) {
    const bar = element("span", count ? "spark" : "spark empty");
    bar.style.setProperty("--level", String(count / highest));
    bars.append(bar);
  }
  return bars;
}

function clock(timestamp) {
  const moment = new Date(timestamp);
  if (Number.isNaN(moment.getTime())) {
    return "?";
  }
  return moment.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
}

/** Floating emojis: each window's normalized_count copies of each emoji, once per window. */
export class Swarm {
  constructor(windowSeconds) {
    this.node = byTestId("swarm");
    this.windowMs = windowSeconds * 1000;
    this.spawned = new Map(); // window_start -> Map(emoji -> copies started)
    this.total = 0;
    this.reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  }

  /** Forget the windows seen (another stream's windows start at the same times). */
  forgetWindows() {
    this.spawned.clear();
  }

  /** Start the copies this update asks for beyond those already started for its window (an
   * update for a window repeats the earlier ones with higher counts). */
  show(update) {
    let started = this.spawned.get(update.window_start);
    if (!started) {
      started = new Map();
      this.spawned.set(update.window_start, started);
      while (this.spawned.size > REMEMBERED_WINDOWS) {
        this.spawned.delete(this.spawned.keys().next().value);
      }
    }
    for (const aggregate of update.aggregates) {
      const already = started.get(aggregate.emoji_type) || 0;
      const wanted = aggregate.normalized_count;
      if (wanted <= already) {
        continue;
      }
      started.set(aggregate.emoji_type, wanted);
      const copies = Math.min(wanted - already, MAX_PER_UPDATE);
      for (let i = 0; i < copies; i += 1) {
        this.launch(aggregate.emoji_type);
      }
    }
  }

  launch(emoji) {
    this.total += 1;
    this.node.dataset.spawned = String(this.total);
    if (this.node.childElementCount >= MAX_PARTICLES) {
      return;
    }
    const particle = element("span", "particle", emoji);
    particle.dataset.emoji = emoji;
    const rand = (low, high) => low + Math.random() * (high - low);
    particle.style.setProperty("--x", `${rand(3, 94).toFixed(1)}%`);
    particle.style.setProperty("--drift", `${rand(-12, 12).toFixed(1)}vw`);
    particle.style.setProperty("--size", `${rand(26, 48).toFixed(0)}px`);
    particle.style.setProperty("--spin", `${rand(-25, 25).toFixed(0)}deg`);
    particle.style.setProperty("--duration", `${rand(3.2, 5.5).toFixed(2)}s`);
    // Spread a window's copies over about a window's time, so they stream rather than pop.
    particle.style.setProperty("--delay", `${(Math.random() * this.windowMs * 0.8).toFixed(0)}ms`);
    particle.addEventListener("animationend", () => particle.remove());
    // Should animations not run at all (a hidden tab), do not let the particles pile up.
    setTimeout(() => particle.remove(), this.windowMs + 6000);
    this.node.append(particle);
  }
}

// The viewers' page: registers for a live stream, watches that stream's window updates, sends
// reactions to it. The stream is the one in the address (?stream=ID), else main; the picker
// switches it (registering again) and lists the streams GET /streams knows.
// It knows no host or port: config.json (served beside this page by the registration API) says
// where the ingest API and the registration API are, and POST /register where to connect.

import {Sender} from "./sender.js";
import {Chart, History, Swarm, Timeline, buildButtons, showCluster, showSent, showState,
  showStreams, showViewersOnline, showWatching} from "./view.js";
import {DEFAULT_STREAM, Viewer, checkedUpdate, register} from "./viewer.js";

const CLIENT_ID_KEY = "emojiswarm.client_id";
const MAX_CLIENT_ID_LENGTH = 64;
const STREAM_ID = /^[A-Za-z0-9._-]{1,64}$/; // the registration API's rule (emojistream/common/events.py)

function generatedClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return "viewer-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The rules the registration API applies to a client_id; a problem, or "". */
function clientIdProblem(id) {
  if (!id.trim()) {
    return "the id must not be empty";
  }
  if (id.length > MAX_CLIENT_ID_LENGTH) {
    return `the id must be at most ${MAX_CLIENT_ID_LENGTH} characters`;
  }
  if (/[\u0000-\u001f\u007f-\u009f]/.test(id)) {
    return "the id must not contain control characters";
  }
  return "";
}

function storedClientId() {
  try {
    return localStorage.getItem(CLIENT_ID_KEY);
  } catch {
    return null; // storage disabled
  }
}

function storeClientId(id) {
  try {
    localStorage.setItem(CLIENT_ID_KEY, id);
  } catch {
    // storage disabled: the id lasts as long as the page
  }
}

function initialClientId() {
  for (const candidate of [new URLSearchParams(location.search).get("client_id"),
                           storedClientId()]) {
    if (candidate && !clientIdProblem(candidate)) {
      return candidate;
    }
  }
  return generatedClientId();
}

function initialStreamId() {
  const wanted = new URLSearchParams(location.search).get("stream");
  return wanted && STREAM_ID.test(wanted) ? wanted : DEFAULT_STREAM;
}

/** Keep ?stream= in the address, so that a reload or a shared link shows the same stream. */
function rememberStreamInAddress(streamId) {
  const url = new URL(location.href);
  url.searchParams.set("stream", streamId);
  history.replaceState(null, "", url);
}

/** Polls GET /streams for the picker's options; returns a function that polls at once. */
function watchStreams(registrationUrl, intervalS, chosen) {
  async function poll() {
    let streams = [];
    try {
      const response = await fetch(`${registrationUrl}/streams`, {
        cache: "no-store", signal: AbortSignal.timeout(5000)});
      const body = response.ok ? await response.json() : null;
      streams = Array.isArray(body) ? body.filter((s) => s && typeof s.stream_id === "string")
                                    : [];
    } catch {
      // the picker keeps the chosen stream only
    }
    showStreams(streams, chosen());
  }
  poll();
  setInterval(poll, Math.max(1, intervalS) * 1000);
  return poll;
}

async function loadConfig() {
  const response = await fetch("config.json", {cache: "no-store"});
  if (!response.ok) {
    throw new Error(`config.json answered ${response.status}`);
  }
  return response.json();
}

/** Polls GET /clusters: viewers online are the servers' live connections. */
function watchViewersOnline(registrationUrl, intervalS) {
  async function poll() {
    try {
      const response = await fetch(`${registrationUrl}/clusters`, {
        cache: "no-store", signal: AbortSignal.timeout(5000)});
      const clusters = response.ok ? await response.json() : null;
      if (!Array.isArray(clusters)) {
        throw new Error("no cluster list");
      }
      let total = 0;
      for (const cluster of clusters) {
        const live = cluster && cluster.live_connections;
        total += Number.isFinite(live) ? live : 0;
      }
      showViewersOnline(total);
    } catch {
      showViewersOnline(null);
    }
  }
  poll();
  setInterval(poll, Math.max(1, intervalS) * 1000);
  return poll;
}

/** The stream's windows of the last minutes from the registration API's history (GET
 *  /streams/ID/windows), checked, oldest first; [] when it cannot answer (the timeline then
 *  fills from the live updates alone). */
async function recentWindows(registrationUrl, streamId) {
  try {
    const answer = await fetch(`${registrationUrl}/streams/${encodeURIComponent(streamId)}/windows`,
                               {cache: "no-store"});
    if (!answer.ok) {
      return [];
    }
    const body = await answer.json();
    return Array.isArray(body.windows) ? body.windows.map(checkedUpdate).filter(Boolean) : [];
  } catch {
    return [];
  }
}

async function main() {
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    showState("reconnecting", `cannot load the page's configuration (${err.message}); reload to retry`);
    return;
  }
  const emojis = Array.isArray(config.emojis) ? config.emojis.filter((e) => typeof e === "string")
                                              : [];
  const windowSeconds = Number(config.window_seconds) || 2;
  let chart = new Chart(emojis);
  let history = new History(emojis);
  let timeline = new Timeline();
  const swarm = new Swarm(windowSeconds);
  let latestWindowMs = -Infinity;
  let streamId = initialStreamId();

  let sentTotal = 0;
  const sender = new Sender(String(config.api_url), ({sent, error}) => {
    sentTotal += sent;
    showSent(sentTotal, error);
  });
  buildButtons(emojis, (button, emoji) => sender.attach(button, emoji));

  const pollViewers = watchViewersOnline(String(config.registration_url),
                                         Number(config.stats_interval_s) || 5);
  const pollStreams = watchStreams(String(config.registration_url),
                                   Number(config.stats_interval_s) || 5, () => streamId);

  function onUpdate(update, recovered) {
    if (update.watching !== null) {
      showWatching(update.watching);
    }
    if (!recovered) { // missed windows fill the chart and history; only live ones swarm
      swarm.show(update);
    }
    history.show(update);
    timeline.show(update);
    const windowMs = Date.parse(update.window_start);
    // The chart shows the newest window; an update for an older one (late events) only swarms.
    if (windowMs >= latestWindowMs) {
      latestWindowMs = windowMs;
      chart.show(update);
    }
  }

  sender.renewToken = async () => {
    // Presenting the viewer's token keeps its session when that token is still valid.
    const answer = await register(String(config.registration_url), sender.userId,
                                  sender.streamId, viewer ? viewer.token : null);
    sender.token = tokenOf(answer);
  };

  let viewer = null;
  function connect(clientId) {
    sender.token = "";  // until this registration's answer
    if (viewer) {
      viewer.stop();
    }
    sender.userId = clientId;
    sender.streamId = streamId;
    const current = new Viewer({
      registrationUrl: String(config.registration_url),
      clientId,
      streamId,
      retryInitialS: Number(config.retry_initial_s) || 0.5,
      retryMaxS: Number(config.retry_max_s) || 8,
      onState: (state, detail) => {
        if (viewer === current) {
          showState(state, detail);
          if (state === "live") {
            pollViewers();
          }
        }
      },
      onAssignment: (answer) => {
        if (viewer === current) {
          sender.token = tokenOf(answer);
          showCluster(typeof answer.cluster_id === "string" ? answer.cluster_id : "?");
        }
      },
      onUpdate: (update, {recovered}) => {
        if (viewer === current) {
          onUpdate(update, recovered);
        }
      },
    });
    viewer = current;
    viewer.start();
    const shown = timeline;
    recentWindows(String(config.registration_url), streamId).then((windows) => {
      if (timeline === shown) {
        timeline.load(windows);
      }
    });
  }

  let clientId = initialClientId();
  storeClientId(clientId);
  const input = document.querySelector('[data-testid="client-id"]');
  input.value = clientId;
  document.querySelector('[data-testid="client-form"]').addEventListener("submit", (event) => {
    event.preventDefault();
    const wanted = input.value.trim();
    const problem = clientIdProblem(wanted);
    input.setCustomValidity(problem);
    if (problem) {
      input.reportValidity();
      return;
    }
    if (wanted !== clientId) {
      clientId = wanted;
      storeClientId(clientId);
      showCluster(null);
      connect(clientId);
    }
  });
  input.addEventListener("input", () => input.setCustomValidity(""));

  document.querySelector('[data-testid="stream-picker"]').addEventListener("change", (event) => {
    if (event.target.value === streamId) {
      return;
    }
    streamId = event.target.value;
    rememberStreamInAddress(streamId);
    chart = new Chart(emojis);
    history = new History(emojis);
    timeline = new Timeline();
    swarm.forgetWindows();
    latestWindowMs = -Infinity;
    connect(clientId); // registering again switches the stream
    pollStreams();
  });

  window.addEventListener("online", () => viewer && viewer.retryNow());
  connect(clientId);
}

main();

/** The viewer token of a registration's answer (its endpoint's token parameter), or "". */
function tokenOf(answer) {
  try {
    return new URL(answer.subscriber_endpoint).searchParams.get("token") || "";
  } catch {
    return "";
  }
}

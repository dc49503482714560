// The viewer's side of the delivery tier: register with the registration API, keep a WebSocket
// to the endpoint it answers, and register again and reconnect (exponential backoff with
// jitter) whenever the connection drops, as client_simulator.py does. Registering again
// presents the last token, kept in this tab's sessionStorage (a reload keeps it too): the
// viewer keeps its session, which only its own connections can replace (docs/delivery.md).

const REGISTER_TIMEOUT_MS = 10000;
const CONNECT_TIMEOUT_MS = 10000;
// The close code of a connection replaced by a newer one of the same session (a duplicated tab
// shares this tab's token): that one watches now, so this one stops instead of taking it back
// (emojistream/common/closecodes.py).
const REPLACED = 4409;
// The stream of an update or a viewer that names none (emojistream/common/events.py).
export const DEFAULT_STREAM = "main";

/** Delays that double from initialS up to maxS, each varied by up to ±jitter. */
export class Backoff {
  constructor(initialS, maxS, jitter = 0.3) {
    this.initialS = initialS;
    this.maxS = Math.max(maxS, initialS);
    this.jitter = jitter;
    this.attempts = 0;
  }

  nextDelayS() {
    const base = Math.min(this.initialS * 2 ** Math.min(this.attempts, 32), this.maxS);
    this.attempts += 1;
    return base * (1 + this.jitter * (2 * Math.random() - 1));
  }

  reset() {
    this.attempts = 0;
  }
}

export class RegistrationError extends Error {}

/** Why a fetch() failed, in words. */
export function failure(err) {
  return err.name === "TimeoutError" || err.name === "AbortError" ? "did not answer in time"
                                                                  : "unreachable";
}

/** POST /register for a viewer of streamId, presenting its previous token if it has one:
 *  {cluster_id, subscriber_endpoint, stream_id, token, session}. */
export async function register(registrationUrl, clientId, streamId, token = null) {
  let response;
  const request = {client_id: clientId, stream_id: streamId};
  if (token) {
    request.token = token;
  }
  try {
    response = await fetch(`${registrationUrl}/register`, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(request),
      signal: AbortSignal.timeout(REGISTER_TIMEOUT_MS),
    });
  } catch (err) {
    throw new RegistrationError(`registration API ${failure(err)}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: reported below
  }
  if (!response.ok) {
    const reason = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new RegistrationError(`registration refused (${response.status}: ${reason})`);
  }
  if (!body || typeof body.subscriber_endpoint !== "string") {
    throw new RegistrationError("registration answer has no subscriber_endpoint");
  }
  return body;
}

const TOKEN_KEY = "emojiswarm.token.";

/** The token of clientId's last registration in this tab (null if none, or no storage). */
export function storedToken(clientId) {
  try {
    return sessionStorage.getItem(TOKEN_KEY + clientId);
  } catch {
    return null;
  }
}

/** Keep the token of a registration answer for this tab's next registration of clientId. */
export function storeToken(clientId, answer) {
  let token = typeof answer.token === "string" ? answer.token : null;
  if (!token) {
    try {
      token = new URL(answer.subscriber_endpoint).searchParams.get("token");
    } catch {
      token = null;
    }
  }
  if (!token) {
    return;
  }
  try {
    sessionStorage.setItem(TOKEN_KEY + clientId, token);
  } catch {
    // no storage: the token is kept in memory by the Viewer only
  }
}

/** A window update as the WebSocket servers send it, or null if the message is not one. */
export function parseUpdate(text) {
  let update;
  try {
    update = JSON.parse(text);
  } catch {
    return null;
  }
  return checkedUpdate(update);
}

/** A parsed window update (a message, or a window of GET /streams/ID/windows) with only what the
 *  page uses, checked; null if it is not one. */
export function checkedUpdate(update) {
  if (!update || typeof update !== "object" || typeof update.window_start !== "string"
      || Number.isNaN(Date.parse(update.window_start)) || !Array.isArray(update.aggregates)) {
    return null;
  }
  const aggregates = update.aggregates.filter((a) =>
    a && typeof a.emoji_type === "string" && Number.isFinite(a.count) && a.count >= 0
    && Number.isFinite(a.normalized_count) && a.normalized_count >= 0);
  return {
    // A moment: the servers mark a window far above the stream's previous minute.
    moment: update.moment === true,
    // Presence: the stream's live viewers on the viewer's server (null if not carried).
    watching: Number.isInteger(update.watching) && update.watching >= 0 ? update.watching : null,
    stream_id: typeof update.stream_id === "string" ? update.stream_id : DEFAULT_STREAM,
    window_start: update.window_start,
    window_end: typeof update.window_end === "string" ? update.window_end : "",
    aggregates: aggregates.map((a) => ({
      emoji_type: a.emoji_type,
      count: Math.floor(a.count),
      normalized_count: Math.floor(a.normalized_count),
      unique_users: Number.isFinite(a.unique_users) ? Math.floor(a.unique_users) : null,
    })),
  };
}

/** The WebSocket URL a viewer connects to: its endpoint (with its token) and, with since (the
 *  newest window_start received), asking for recovery: every window after it that the server
 *  holds, then live ones (docs/delivery.md). */
export function viewerEndpoint(endpoint, since = null) {
  const url = new URL(endpoint);
  if (since) {
    url.searchParams.set("since", since);
  }
  return url.toString();
}

/** The server's messages that are not window updates (they carry a "type"): null if none. */
function controlMessage(text) {
  try {
    const message = JSON.parse(text);
    return message && typeof message === "object" && typeof message.type === "string"
      ? message : null;
  } catch {
    return null;
  }
}

/**
 * Keeps one viewer of one stream connected. Callbacks:
 *   onState(state, detail)    "connecting" | "live" | "reconnecting" | "replaced" (stopped)
 *   onAssignment(answer)      each successful registration
 *   onUpdate(update, {recovered})
 *                             each window update of the stream received (parsed); recovered:
 *                             it is one of the windows missed while disconnected
 */
export class Viewer {
  constructor({registrationUrl, clientId, streamId, retryInitialS, retryMaxS, onState,
               onAssignment, onUpdate}) {
    this.registrationUrl = registrationUrl;
    this.clientId = clientId;
    this.streamId = streamId;
    this.backoff = new Backoff(retryInitialS, retryMaxS);
    this.onState = onState;
    this.onAssignment = onAssignment;
    this.onUpdate = onUpdate;
    this.stopped = false;
    this.token = storedToken(clientId);
    this.socket = null;
    this.wake = null; // ends the current wait between attempts early
    // The newest window received: each reconnection recovers the windows after it.
    this.newest = null;
    this.newestMs = -Infinity;
  }

  start() {
    this.run();
  }

  stop() {
    this.stopped = true;
    if (this.socket) {
      this.socket.close(1000, "viewer left");
    }
    this.retryNow();
  }

  /** Skip the rest of the current backoff delay (the browser came back online). */
  retryNow() {
    if (this.wake) {
      this.wake();
    }
  }

  async run() {
    this.onState("connecting", "registering");
    while (!this.stopped) {
      let reason;
      try {
        const assignment = await register(this.registrationUrl, this.clientId, this.streamId,
                                          this.token || storedToken(this.clientId));
        storeToken(this.clientId, assignment);
        this.token = storedToken(this.clientId) || assignment.token || this.token;
        if (this.stopped) {
          break;
        }
        this.onAssignment(assignment);
        reason = await this.watch(assignment);
      } catch (err) {
        reason = err.message;
      }
      if (this.stopped) {
        break;
      }
      if (reason === REPLACED) {
        this.stopped = true;
        this.onState("replaced", "this viewer's session is watching in another tab or window " +
                                 "now; reload the page to watch here");
        break;
      }
      const delayS = this.backoff.nextDelayS();
      this.onState("reconnecting",
                   `${reason}; registering again in ${delayS.toFixed(1)} s ` +
                   `(attempt ${this.backoff.attempts})`);
      await this.sleep(delayS * 1000);
    }
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  /** Receive until the connection ends; resolves with the reason it ended (REPLACED when a
   *  newer connection of this client took its place). */
  watch(assignment) {
    return new Promise((resolve) => {
      const where = typeof assignment.cluster_id === "string" ? assignment.cluster_id : "cluster";
      let socket;
      try {
        socket = new WebSocket(viewerEndpoint(assignment.subscriber_endpoint, this.newest));
      } catch (err) {
        resolve(`cannot connect to ${where} (${err.name})`);
        return;
      }
      this.socket = socket;
      let opened = false;
      let backlog = 0; // updates still to come of the recovery's backlog
      const timeout = setTimeout(() => socket.close(), CONNECT_TIMEOUT_MS);
      socket.addEventListener("open", () => {
        clearTimeout(timeout);
        opened = true;
        this.backoff.reset();
        this.onState("live", `connected to ${where}`);
      });
      socket.addEventListener("message", (event) => {
        if (typeof event.data !== "string") {
          return;
        }
        const control = controlMessage(event.data);
        if (control) { // {"type": "recovery", ...}; types this page does not know are skipped
          if (control.type === "recovery" && Number.isInteger(control.windows)) {
            backlog = control.windows; // the next updates are missed windows, oldest first
          }
          return;
        }
        const update = parseUpdate(event.data);
        if (update && update.stream_id === this.streamId) {
          const startMs = Date.parse(update.window_start);
          if (startMs > this.newestMs) {
            this.newestMs = startMs;
            this.newest = update.window_start;
          }
          this.onUpdate(update, {recovered: backlog > 0});
        }
        if (backlog > 0) {
          backlog -= 1;
        }
      });
      socket.addEventListener("close", (event) => {
        clearTimeout(timeout);
        this.socket = null;
        if (event.code === REPLACED) {
          resolve(REPLACED);
          return;
        }
        resolve(opened ? `${where} closed the connection (code ${event.code})`
                       : `cannot connect to ${where}`);
      });
    });
  }
}

// Sends the viewer's reactions to the ingest API: one POST /emoji per tap, and while a button is
// held, a burst of BURST_PER_TICK events every BURST_TICK_MS in POST /emojis batches.

import {failure} from "./viewer.js";

const HOLD_MS = 450;        // held this long, a button starts a burst
const BURST_TICK_MS = 100;
const BURST_PER_TICK = 10;  // 100 reactions a second while held
const REQUEST_TIMEOUT_MS = 10000;

export class Sender {
  /** onResult({sent, error}) after each request: the events it carried, and a problem or "". */
  constructor(apiUrl, onResult) {
    this.apiUrl = apiUrl;
    this.userId = "";
    this.streamId = "main";
    // The viewer's token from its registration: sent as Authorization: Bearer, which an ingest
    // API with API_REQUIRE_TOKEN requires ("" until registered).
    this.token = "";
    // Sets a fresh token (registering again) after the API refused this one (401: it expired
    // while the page stayed connected); the request is then sent once more.
    this.renewToken = null;
    this.onResult = onResult;
  }

  event(emoji) {
    return {user_id: this.userId, emoji_type: emoji, timestamp: new Date().toISOString(),
            stream_id: this.streamId};
  }

  sendOne(emoji) {
    return this.post("/emoji", this.event(emoji), 1);
  }

  sendMany(emoji, count) {
    const events = Array.from({length: count}, () => this.event(emoji));
    return this.post("/emojis", events, count);
  }

  send(path, body) {
    return fetch(this.apiUrl + path, {
      method: "POST",
      headers: this.token ? {"Content-Type": "application/json",
                             "Authorization": `Bearer ${this.token}`}
                          : {"Content-Type": "application/json"},
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  }

  async post(path, body, count) {
    let response;
    try {
      response = await this.send(path, body);
      if (response.status === 401 && this.renewToken) {
        await this.renewToken();
        response = await this.send(path, body);
      }
    } catch (err) {
      this.onResult({sent: 0, error: `ingest API ${failure(err)}`});
      return;
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // reported below
    }
    if (response.ok) {
      const accepted = answer && Number.isFinite(answer.accepted) ? answer.accepted : count;
      this.onResult({sent: accepted, error: ""});
    } else {
      const reason = answer && typeof answer.error === "string" ? answer.error
                                                                 : response.statusText;
      this.onResult({sent: 0, error: `ingest API answered ${response.status}: ${reason}`});
    }
  }

  /** Wire a button: a click sends one reaction, holding it sends a burst. */
  attach(button, emoji) {
    let holdTimer = null;
    let burstTimer = null;
    let suppressClick = false;

    const stopHold = () => {
      clearTimeout(holdTimer);
      holdTimer = null;
      if (burstTimer !== null) {
        clearInterval(burstTimer);
        burstTimer = null;
        button.classList.remove("bursting");
        // The click that ends a hold is not one more reaction; a click is dispatched in the
        // same task as the pointerup, so forget the suppression afterwards.
        setTimeout(() => { suppressClick = false; }, 0);
      }
    };

    button.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) {
        return;
      }
      stopHold();
      holdTimer = setTimeout(() => {
        holdTimer = null;
        suppressClick = true;
        button.classList.add("bursting");
        this.sendMany(emoji, BURST_PER_TICK);
        burstTimer = setInterval(() => this.sendMany(emoji, BURST_PER_TICK), BURST_TICK_MS);
      }, HOLD_MS);
    });
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      button.addEventListener(type, stopHold);
    }
    button.addEventListener("contextmenu", (event) => event.preventDefault());
    button.addEventListener("click", () => {
      if (suppressClick) {
        suppressClick = false;
        return;
      }
      this.sendOne(emoji);
    });
  }
}

"""The viewers' web page (static/, served by the registration API) in a real browser, Debian's
headless Chromium driven by Playwright, against the whole system started by
scripts/start_all.sh: the page goes live, 25 clicks on 🔥 show up as one window's count 25 and
normalized count 1, holding a button sends a burst, and killing the page's WebSocket server
makes it reconnect to another cluster. The page is opened under a host name other than
localhost (the browser maps it to this machine) and is told another one for the ingest API, so
every address it uses must come from config.json and POST /register.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from emojistream import config
from emojistream.common import secrets, tokens
from emojistream.common.events import format_timestamp
from tests.services import API_HOST, OTHER_STREAM, PAGE_HOST, REPO_ROOT, run_script

pytestmark = [pytest.mark.browser, pytest.mark.stack]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
MOMENTS_SCREENSHOT = REPO_ROOT / "docs" / "moments.png"
CLICKS = 25
CLICK_ATTEMPTS = 3
UPDATE_TIMEOUT_S = 90         # Kafka, Spark and the delivery tier, on a busy 2-core machine


# --- in a real browser, against the whole system --------------------------------------------

@pytest.fixture(scope="module")
def system(whole_system):
    return whole_system[1]


class Recorder:
    """What the page did on the network, and what went wrong in it."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.websockets: list[str] = []
        self.register_answers = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("websocket", lambda socket: self.websockets.append(socket.url))
        page.on("response", self._response)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _response(self, response):
        if urlsplit(response.url).path == "/register" and response.request.method == "POST":
            self.register_answers.append(response)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    playwright = sync_playwright().start()
    try:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            headless=True, viewport={"width": 1100, "height": 720},
            args=[*CHROMIUM_ARGS,
                  f"--host-resolver-rules=MAP {PAGE_HOST} localhost, MAP {API_HOST} localhost"])
        try:
            yield context
        finally:
            context.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="module")
def page(system, browser):
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.set_default_timeout(30_000)
    recorder = Recorder(page)
    page.goto(f"http://{PAGE_HOST}:{system.registration_port}/?client_id=browser-viewer")
    page.recorder = recorder
    return page


def by_testid(page, testid):
    return page.locator(f'[data-testid="{testid}"]')


def state(page) -> str:
    return by_testid(page, "connection-state").get_attribute("data-state")


def wait_live(page, timeout_s=60):
    page.wait_for_function(
        """() => document.querySelector('[data-testid="connection-state"]')
                   .dataset.state === "live" """, timeout=timeout_s * 1000)


def assert_connected_to(url: str, endpoint: str, recovering: bool = False) -> str | None:
    """The page's WebSocket URL is the endpoint /register answered, and, reconnecting, asking
    for recovery: its since, if any."""
    connected, answered = urlsplit(url), urlsplit(endpoint)
    assert (connected.scheme, connected.netloc, connected.path) == \
        (answered.scheme, answered.netloc, answered.path)
    query = parse_qs(connected.query)
    since = query.pop("since", [None])[0]
    assert query == parse_qs(answered.query)
    assert (since is not None) is recovering, url
    return since


def test_the_page_registers_and_goes_live(system, page):
    wait_live(page)
    assert by_testid(page, "connection-state").text_content() == "live"
    cluster = by_testid(page, "cluster").text_content()
    assert re.fullmatch(r"cluster\d+", cluster), cluster
    assert by_testid(page, "client-id").input_value() == "browser-viewer"

    buttons = by_testid(page, "emoji-button")
    assert [buttons.nth(i).text_content() for i in range(buttons.count())] == \
        list(system.allowed_emojis)
    bars = by_testid(page, "bar")
    assert [bars.nth(i).get_attribute("data-emoji") for i in range(bars.count())] == \
        list(system.allowed_emojis)
    page.wait_for_function(
        """() => /^[1-9][0-9]*$/.test(
               document.querySelector('[data-testid="viewers-online"]').textContent)""")

    # Every address came from config.json and POST /register: the page was loaded from
    # PAGE_HOST and was told nothing else for HTTP; it connected where /register said.
    recorder = page.recorder
    hosts = {urlsplit(url).hostname for url in recorder.requests}
    assert hosts == {PAGE_HOST}, recorder.requests
    assignment = recorder.register_answers[-1].json()
    assert assignment["cluster_id"] == cluster
    assert_connected_to(recorder.websockets[-1], assignment["subscriber_endpoint"])
    assert recorder.errors == []


def test_a_second_tab_with_the_same_client_id_evicts_nobody_and_a_reload_resumes(system, page,
                                                                                 browser):
    """Another tab (another party, as far as the servers know: its own sessionStorage) with the
    same client id gets a session of its own: both stay live. A reload keeps the tab's token
    and resumes its session."""
    wait_live(page)
    first_answers = len(page.recorder.register_answers)
    other = browser.new_page()
    try:
        other.set_default_timeout(30_000)
        recorder = Recorder(other)
        other.goto(f"http://{PAGE_HOST}:{system.registration_port}/?client_id=browser-viewer")
        wait_live(other)
        first = recorder.register_answers[-1].json()  # read before the reload discards it
        assert first["session"] == "new"
        time.sleep(2)  # a 4409 would have reached the first tab by now
        assert state(page) == "live"
        assert len(page.recorder.register_answers) == first_answers  # it never had to return
        other.reload()
        wait_live(other)
        assert recorder.register_answers[-1].json()["session"] == "resumed"
        assert recorder.register_answers[-1].request.post_data_json["token"] == first["token"]
        assert state(page) == "live"
        assert recorder.errors == []
    finally:
        other.close()


def window_start_ms(moment_ms: int, window_seconds: int) -> int:
    return moment_ms - moment_ms % (window_seconds * 1000)


def wait_for_window_boundary(window_seconds: int, margin_s: float = 0.05) -> None:
    now = time.time()
    time.sleep(math.floor(now / window_seconds + 1) * window_seconds - now + margin_s)


def sent_count(page) -> int:
    return int(by_testid(page, "sent-count").text_content())


def shown_window(page, emoji: str) -> dict:
    return page.evaluate(
        """(emoji) => {
             const section = document.querySelector('[data-testid="window"]');
             const bar = document.querySelector(
                 `[data-testid="bar"][data-emoji="${CSS.escape(emoji)}"]`);
             return {start: Date.parse(section.dataset.windowStart),
                     count: Number(bar.dataset.count),
                     normalized: Number(bar.dataset.normalized),
                     shownCount: bar.querySelector('[data-testid="bar-count"]').textContent,
                     total: document.querySelector('[data-testid="total-events"]').textContent};
           }""", emoji)


def wait_until(page, condition: str, timeout_s: float, arg=None) -> bool:
    """Whether the JavaScript function ``condition`` returns true within ``timeout_s``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout_s * 1000, polling=200)
        return True
    except PlaywrightTimeout:
        return False


def wait_for_window(page, start_ms: int, emoji: str, count: int, timeout_s: float) -> bool:
    """Whether the page shows, within ``timeout_s``, window ``start_ms`` with ``count``
    ``emoji``s."""
    return wait_until(page, """([start, emoji, count]) => {
                 const section = document.querySelector('[data-testid="window"]');
                 const bar = document.querySelector(
                     `[data-testid="bar"][data-emoji="${CSS.escape(emoji)}"]`);
                 return Date.parse(section.dataset.windowStart) === start
                        && bar !== null && Number(bar.dataset.count) === count;
               }""", timeout_s, arg=[start_ms, emoji, count])


def test_25_clicks_on_fire_show_count_25_and_normalized_1(system, page):
    wait_live(page)
    button = page.locator('[data-testid="emoji-button"][data-emoji="🔥"]')
    box = button.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    swarm_before = int(by_testid(page, "swarm").get_attribute("data-spawned"))
    attempts = []
    for _attempt in range(CLICK_ATTEMPTS):
        sent_before = sent_count(page)
        wait_for_window_boundary(system.window_seconds)
        first_ms = page.evaluate("Date.now()")
        for _ in range(CLICKS):
            page.mouse.click(x, y)
        last_ms = page.evaluate("Date.now()")
        window_ms = window_start_ms(first_ms, system.window_seconds)
        one_window = window_ms == window_start_ms(last_ms, system.window_seconds)
        all_sent = wait_until(page, f"""() => Number(document.querySelector(
            '[data-testid="sent-count"]').textContent) >= {sent_before + CLICKS}""", 30)
        attempts.append({"first_ms": first_ms, "last_ms": last_ms, "one_window": one_window,
                         "all_sent": all_sent})
        # The page stamps each reaction with the browser's clock when it is clicked: all of
        # them lie between first_ms and last_ms.
        if one_window and all_sent and wait_for_window(page, window_ms, "🔥", CLICKS,
                                                       UPDATE_TIMEOUT_S):
            break
    else:
        pytest.fail(f"no window showed {CLICKS} 🔥: attempts {attempts}, page shows "
                    f"{shown_window(page, '🔥')}")
    assert sent_count(page) == sent_before + CLICKS  # one POST /emoji per click
    shown = shown_window(page, "🔥")
    assert (shown["count"], shown["normalized"], shown["shownCount"], shown["total"]) == \
        (CLICKS, 1, str(CLICKS), str(CLICKS))
    # normalized_count 1: one 🔥 floats up the screen for this window.
    assert int(by_testid(page, "swarm").get_attribute("data-spawned")) >= swarm_before + 1
    # Presence: the stream's viewers on every server, as the servers count them (the
    # registration API sums the same GET /health answers).
    streams = requests.get(f"http://localhost:{system.registration_port}/streams",
                           timeout=5).json()
    assert by_testid(page, "watching").text_content() == \
        str(next(s["viewers"] for s in streams if s["stream_id"] == "main"))
    time.sleep(1.0)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert page.recorder.errors == []


def post_crowd(system, window_ms: int, counts: dict[str, int], stream_id: str = "main") -> None:
    """Other viewers' reactions, into the window that starts at ``window_ms``."""
    moment = datetime.fromtimestamp(window_ms / 1000, UTC) + timedelta(milliseconds=300)
    events = [{"user_id": f"crowd-{i % 500}", "emoji_type": emoji,
               "timestamp": format_timestamp(moment), "stream_id": stream_id}
              for emoji, count in counts.items() for i in range(count)]
    answer = requests.post(f"http://{system.api_host}:{system.api_port}/emojis", json=events,
                           timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == len(events)


def test_holding_a_button_sends_a_burst_and_the_crowd_floods_the_screen(system, page):
    wait_live(page)
    sent_before = sent_count(page)
    button = page.locator('[data-testid="emoji-button"][data-emoji="😂"]')
    box = button.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    time.sleep(2.0)
    page.mouse.up()
    page.wait_for_function(f"""() => Number(document.querySelector(
        '[data-testid="sent-count"]').textContent) >= {sent_before + 40}""")

    # A crowd reacts in the next window: its popular emojis flood the screen.
    wait_for_window_boundary(system.window_seconds, margin_s=0.2)
    window_ms = window_start_ms(int(time.time() * 1000), system.window_seconds)
    crowd = {"🔥": 2400, "🏏": 1300, "😂": 900, "🎉": 600, "👏": 350, "❤️": 180, "😮": 60}
    spawned_before = int(by_testid(page, "swarm").get_attribute("data-spawned"))
    post_crowd(system, window_ms, crowd)
    # A micro-batch may end inside the crowd's events: wait for every emoji's final count.
    for emoji, count in crowd.items():
        assert wait_for_window(page, window_ms, emoji, count, UPDATE_TIMEOUT_S), \
            (emoji, shown_window(page, emoji))
    shown = shown_window(page, "🔥")
    assert (shown["count"], shown["normalized"]) == (2400, 24)
    # normalized_count copies of each emoji, 59 in all, float up for this window.
    spawned = int(by_testid(page, "swarm").get_attribute("data-spawned")) - spawned_before
    assert spawned >= sum(math.ceil(count / 100) for count in crowd.values())
    # The copies start over about a window's time: a picture once most of them are up (when
    # Spark reported the window in several updates, the first ones may be gone already).
    wait_until(page, """() => document.querySelectorAll(
        '[data-testid="swarm"] .particle').length >= 40""", 3)
    time.sleep(1.0)
    page.screenshot(path=str(SCREENSHOT))
    assert page.recorder.errors == []


def pick_stream(page, stream_id: str) -> None:
    """Choose ``stream_id`` in the picker; the page registers again, for that stream."""
    page.wait_for_function(
        """(id) => [...document.querySelector('[data-testid="stream-picker"]').options]
                     .some((option) => option.value === id)""", arg=stream_id)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/register") as answer:
        by_testid(page, "stream-picker").select_option(stream_id)
    assert answer.value.json()["stream_id"] == stream_id
    wait_live(page)
    assert parse_qs(urlsplit(page.url).query)["stream"] == [stream_id]


def last_windows(system) -> dict[str, tuple[str, int]]:
    """Each stream's latest window and its total, from one answer of GET /streams (each
    registration worker polls the servers on its own, so two answers may differ in age)."""
    streams = requests.get(f"http://localhost:{system.registration_port}/streams",
                           timeout=5).json()
    return {s["stream_id"]: (s["last_window"], s["last_window_total"]) for s in streams}


def history_counts(page, emoji: str) -> list[int]:
    row = page.locator(f'[data-testid="history-row"][data-emoji="{emoji}"]')
    return [int(count) for count in row.get_attribute("data-counts").split(",")]


def test_picking_a_stream_shows_that_streams_reactions_only(system, page):
    wait_live(page)
    pick_stream(page, OTHER_STREAM)
    wait_for_window_boundary(system.window_seconds, margin_s=0.2)
    window_ms = window_start_ms(int(time.time() * 1000), system.window_seconds)
    post_crowd(system, window_ms, {"🎉": 70, "🏏": 30}, OTHER_STREAM)
    post_crowd(system, window_ms, {"🎉": 500, "😂": 200})  # main's viewers, the same window
    assert wait_for_window(page, window_ms, "🎉", 70, UPDATE_TIMEOUT_S), shown_window(page, "🎉")
    assert wait_for_window(page, window_ms, "🏏", 30, UPDATE_TIMEOUT_S), shown_window(page, "🏏")
    # main's update of that window has reached the servers too: the page never showed it.
    window = format_timestamp(datetime.fromtimestamp(window_ms / 1000, UTC))
    expected = {"main": (window, 700), OTHER_STREAM: (window, 100)}
    deadline = time.monotonic() + UPDATE_TIMEOUT_S
    while (seen := last_windows(system)) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert seen == expected
    for emoji, count in {"🎉": 70, "🏏": 30, "😂": 0}.items():
        assert shown_window(page, emoji)["count"] == count
    assert shown_window(page, "🎉")["total"] == "100"
    # The history: this stream's windows only, the newest last.
    assert history_counts(page, "🎉")[-1] == 70
    assert history_counts(page, "😂")[-1] == 0
    # The page's own reactions go to its stream.
    with page.expect_request(lambda r: urlsplit(r.url).path == "/emoji") as sent:
        page.locator('[data-testid="emoji-button"][data-emoji="👏"]').click()
    assert json.loads(sent.value.post_data)["stream_id"] == OTHER_STREAM
    # With its viewer token (an ingest API with API_REQUIRE_TOKEN requires it): the user it sends
    # as, for the stream it watches.
    scheme, token = sent.value.headers["authorization"].split(" ")
    secret = secrets.all_secrets(system)[secrets.TOKEN_SECRET]
    cluster = int(by_testid(page, "cluster").text_content().removeprefix("cluster"))
    admitted = tokens.verify(secret, token, cluster, time.time())
    assert scheme == "Bearer"
    assert (admitted.client_id, admitted.stream_id) == (
        json.loads(sent.value.post_data)["user_id"], OTHER_STREAM)

    pick_stream(page, "main")
    assert page.recorder.errors == []


HOSTILE_ID = '<img src=x onerror="window.pwned=1">'
def test_a_burst_is_a_moment_on_the_timeline_and_a_click_shows_its_emojis(system, browser):
    """Eight windows of 10 reactions, one of 100, two of 10: the timeline marks the burst's
    window only; clicking it shows its emojis; a reload shows it again, from the history."""
    stream_id = f"moments-{int(time.time())}"
    admin_key = secrets.all_secrets(system)[secrets.ADMIN_KEY]
    added = requests.post(f"http://localhost:{system.registration_port}/streams",
                          json={"stream_id": stream_id},
                          headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    assert added.status_code == 201, added.text
    page = browser.new_page()
    try:
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        url = (f"http://{PAGE_HOST}:{system.registration_port}/?client_id=moment-watcher"
               f"&stream={stream_id}")
        page.goto(url)
        wait_live(page)
        window_ms = system.window_seconds * 1000
        first_ms = window_start_ms(int(time.time() * 1000), system.window_seconds) + 2 * window_ms
        crowds = [{"🔥": 10}] * 8 + [{"🔥": 80, "😂": 20}] + [{"🔥": 10}] * 2
        for i, counts in enumerate(crowds):
            start_ms = first_ms + i * window_ms
            time.sleep(max(0.0, start_ms / 1000 - time.time()))
            post_crowd(system, start_ms, counts, stream_id)
        burst = format_timestamp(datetime.fromtimestamp((first_ms + 8 * window_ms) / 1000, UTC))
        last = format_timestamp(datetime.fromtimestamp((first_ms + 10 * window_ms) / 1000, UTC))
        timeline = by_testid(page, "timeline")
        assert wait_until(page, """(last) => {
            const ticks = document.querySelectorAll('[data-testid="timeline"] .tick');
            return [...ticks].some((t) => t.dataset.windowStart === last
                                          && t.dataset.total === "10"); }""",
                          UPDATE_TIMEOUT_S, arg=last), timeline.inner_html()[-2000:]
        assert (timeline.get_attribute("data-windows"), timeline.get_attribute("data-moments")) \
            == ("11", "1")
        moment = by_testid(page, "moment")
        assert (moment.get_attribute("data-window-start"), moment.get_attribute("data-total")) \
            == (burst, "100")
        moment.click()
        detail = by_testid(page, "moment-detail")
        assert detail.get_attribute("data-window-start") == burst
        assert detail.text_content().endswith(" · 100 reactions: 🔥 80 · 😂 20"), \
            detail.text_content()
        time.sleep(0.5)
        page.screenshot(path=str(MOMENTS_SCREENSHOT))
        # Reloaded: the windows before it connected come from GET /streams/ID/windows.
        with page.expect_response(lambda r: f"/streams/{stream_id}/windows" in r.url) as answer:
            page.goto(url)
        assert answer.value.status == 200
        wait_live(page)
        assert wait_until(page, """() => document.querySelector(
            '[data-testid="timeline"]').dataset.windows === "11" """, 30)
        assert by_testid(page, "moment").get_attribute("data-window-start") == burst
        assert errors == []
    finally:
        page.close()


HOSTILE_EMOJI = '<b onmouseover="window.pwned=2">🔥</b>'


def test_data_is_shown_as_text_never_as_html(system, browser):
    """Ids and emojis with markup in them (here from a WebSocket that the test plays) show up as
    the text they are."""
    page = browser.new_page()
    try:
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        update = {"window_start": "2030-01-01T00:00:00.000Z",
                  "window_end": "2030-01-01T00:00:02.000Z",
                  "aggregates": [{"emoji_type": HOSTILE_EMOJI, "count": 321,
                                  "normalized_count": 4, "unique_users": 3},
                                 {"emoji_type": "😂", "count": 20, "normalized_count": 1,
                                  "unique_users": 1}]}
        page.route_web_socket(re.compile(".*"), lambda socket: socket.send(json.dumps(update)))
        page.goto(f"http://{PAGE_HOST}:{system.registration_port}/?client_id="
                  + requests.utils.quote(HOSTILE_ID, safe=""))
        wait_live(page)
        assert by_testid(page, "client-id").input_value() == HOSTILE_ID
        assert wait_for_window(page, 1893456000000, HOSTILE_EMOJI, 321, 30)
        column = page.locator('[data-testid="bar"]').filter(has_text="321")
        assert column.get_attribute("data-emoji") == HOSTILE_EMOJI
        assert HOSTILE_EMOJI in column.text_content()
        assert by_testid(page, "total-events").text_content() == "341"
        assert page.locator("img, b").count() == 0
        assert page.evaluate("window.pwned") is None

        # An id entered in the page registers anew; without one, the page makes one up.
        with page.expect_request(lambda r: r.url.endswith("/register")
                                 and "entered-viewer" in (r.post_data or "")):
            by_testid(page, "client-id").fill("entered-viewer")
            page.get_by_role("button", name="switch").click()
        wait_live(page)
        page.evaluate("localStorage.clear()")
        page.goto(f"http://{PAGE_HOST}:{system.registration_port}/")
        wait_live(page)
        assert re.fullmatch(r"viewer-[0-9a-f]{8}", by_testid(page, "client-id").input_value())
        assert errors == []
    finally:
        page.close()


def test_losing_its_websocket_server_makes_it_reconnect_to_another_cluster(system, page):
    wait_live(page)
    before = by_testid(page, "cluster").text_content()
    cluster = int(before.removeprefix("cluster"))
    page.evaluate(
        """() => {
             const node = document.querySelector('[data-testid="connection-state"]');
             window.seenStates = [node.dataset.state];
             new MutationObserver(() => window.seenStates.push(node.dataset.state))
               .observe(node, {attributes: true, attributeFilter: ["data-state"]});
           }""")
    # Stopped through the supervisor, so that it stays down (killed, it would be back in
    # seconds, and the page could get the same cluster again).
    env = {**os.environ, **config.to_environment(system)}
    run_script("stop_all.sh", f"ws_server_{cluster}", env=env, timeout=60)
    try:
        page.wait_for_function("() => window.seenStates.includes('reconnecting')", timeout=30_000)
        page.wait_for_function(
            """(before) => {
                 const state = document.querySelector('[data-testid="connection-state"]');
                 const cluster = document.querySelector('[data-testid="cluster"]');
                 return state.dataset.state === "live" && cluster.textContent !== before;
               }""", arg=before, timeout=60_000)
        seen = page.evaluate("window.seenStates")
        assert seen[0] == "live" and "reconnecting" in seen and seen[-1] == "live", seen
        after = by_testid(page, "cluster").text_content()
        assert re.fullmatch(r"cluster\d+", after) and after != before
        # Where /register said, asking for the windows after the newest it had received.
        since = assert_connected_to(page.recorder.websockets[-1],
                                    page.recorder.register_answers[-1].json()[
                                        "subscriber_endpoint"], recovering=True)
        assert datetime.fromisoformat(since) <= datetime.now(UTC)
        # It presented its token: the same session, moved to another cluster.
        assert page.recorder.register_answers[-1].json()["session"] == "resumed"

        # Window updates flow again, on the new cluster.
        button = page.locator('[data-testid="emoji-button"][data-emoji="🎯"]')
        for _attempt in range(CLICK_ATTEMPTS):
            wait_for_window_boundary(system.window_seconds)
            first_ms = page.evaluate("Date.now()")
            button.click()
            last_ms = page.evaluate("Date.now()")
            window_ms = window_start_ms(first_ms, system.window_seconds)
            if window_ms == window_start_ms(last_ms, system.window_seconds) and \
                    wait_for_window(page, window_ms, "🎯", 1, UPDATE_TIMEOUT_S):
                break
        else:
            pytest.fail("no update reached the page after it reconnected: "
                        f"{shown_window(page, '🎯')}")
    finally:
        run_script("start_all.sh", f"ws_server_{cluster}", env=env, timeout=120)

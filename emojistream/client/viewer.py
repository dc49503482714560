"""What a viewer client needs: registering with the registration API (and again with its
token, keeping its session), and showing window updates as one readable line each."""

from __future__ import annotations

import threading
from urllib.parse import parse_qs, urlsplit

import requests

from emojistream.common.events import InvalidEvent, parse_timestamp

HTTP_TIMEOUT_S = (3.0, 5.0)  # connect, read


class RegistrationError(RuntimeError):
    """The registration API refused the request; the message is its answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class RegistrationUnavailable(RegistrationError):
    """The registration API could not be reached."""


class RegistrationClient:
    """POST /register of the registration API at ``base_url``, for a viewer of ``stream_id``;
    thread-safe.

    It keeps the token of each client id's last registration and presents it when that client
    registers again: the viewer keeps its session (nobody else can take over its connection:
    docs/delivery.md#viewer-identity-sessions) and, while it is healthy, its cluster."""

    def __init__(self, base_url: str, stream_id: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.stream_id = stream_id  # None: the API's default stream
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}  # client id -> the token of its last registration

    def register(self, client_id: str) -> dict:
        """The assignment: {"cluster_id": ..., "subscriber_endpoint": ..., "stream_id": ...,
        "token": ..., "session": "new" or "resumed"}."""
        body = {"client_id": client_id}
        if self.stream_id is not None:
            body["stream_id"] = self.stream_id
        with self._lock:
            previous = self._tokens.get(client_id)
        if previous is not None:
            body["token"] = previous
        assignment = self._post("/register", body)
        if not isinstance(assignment, dict) or not isinstance(
                assignment.get("subscriber_endpoint"), str):
            raise RegistrationError(f"/register answered without a subscriber_endpoint: "
                                    f"{str(assignment)[:200]}")
        token = assignment.get("token")
        if not isinstance(token, str):  # an older API: the token is in the endpoint only
            token = token_of(assignment["subscriber_endpoint"])
        if token:
            with self._lock:
                self._tokens[client_id] = token
        return assignment

    def token(self, client_id: str) -> str | None:
        """The token of the client's last registration (its session's credential)."""
        with self._lock:
            return self._tokens.get(client_id)

    def close(self) -> None:
        self._session.close()

    def _post(self, path: str, body: dict) -> dict:
        url = self.base_url + path
        try:
            answer = self._session.post(url, json=body, timeout=HTTP_TIMEOUT_S)
        except requests.RequestException as err:
            raise RegistrationUnavailable(
                f"the registration API at {self.base_url} is not reachable "
                f"({type(err).__name__}); is registration_api.py running?") from None
        if answer.status_code != 200:
            raise RegistrationError(f"{path} answered {answer.status_code}: "
                                    f"{_error_message(answer)}", answer.status_code)
        try:
            return answer.json()
        except ValueError:
            raise RegistrationError(f"{url} did not answer with JSON; is {self.base_url} the "
                                    "registration API?") from None


def token_of(endpoint: str) -> str | None:
    """The token in a subscriber endpoint's query string."""
    values = parse_qs(urlsplit(endpoint).query).get("token")
    return values[0] if values else None


def _error_message(answer: requests.Response) -> str:
    try:
        return answer.json()["error"]
    except (ValueError, KeyError, TypeError):
        return answer.text.strip()[:200] or answer.reason


def format_window(update: dict, replaces_earlier: bool = False) -> str:
    """One line for a window update, most frequent emoji first, e.g.

        07:15:56–07:15:58  🔥 ×1234 (13)  😂 ×5  [users: 🔥 57, 😂 3]

    "(13)" is the normalized count (shown when above 0); ``replaces_earlier`` marks an update
    for a window shown before ("↻")."""
    aggregates = sorted(update["aggregates"], key=lambda a: (-a["count"], a["emoji_type"]))
    counts = "  ".join(_count(a) for a in aggregates) or "(no reactions)"
    users = ", ".join(f"{a['emoji_type']} {a['unique_users']}" for a in aggregates
                      if "unique_users" in a)
    line = f"{_span(update)}  {counts}"
    if users:
        line += f"  [users: {users}]"
    return line + ("  ↻" if replaces_earlier else "")


def _count(aggregate: dict) -> str:
    text = f"{aggregate['emoji_type']} ×{aggregate['count']}"
    normalized = aggregate.get("normalized_count")
    return f"{text} ({normalized})" if normalized else text


def _span(update: dict) -> str:
    return f"{_clock(update['window_start'])}–{_clock(update['window_end'])}"


def _clock(timestamp: str) -> str:
    """Local wall-clock time of a UTC timestamp, or the timestamp itself if unreadable."""
    try:
        return parse_timestamp(timestamp).astimezone().strftime("%H:%M:%S")
    except InvalidEvent:
        return timestamp

"""Secrets shared by the processes of one installation, generated on first use: the token
secret, the subscriber key and the admin key (docs/operations.md#settings). They must differ: a
viewer's token never lets it publish or administer. ``python -m emojistream.common.secrets``
(run by setup) creates the files that are missing and prints where they are, not their values.

A secret comes from its setting when that is set (for example SUBSCRIBER_KEY), else from
``$VAR_DIR/secrets/<name>.key``. The first process that needs the file creates it with a random
value, readable by its owner only. Processes starting at the same moment agree on one value: each
writes its candidate to a temporary file and hard-links it to the final name, which succeeds for
exactly one of them; the others read the winner's file.

A process refuses to start (SecretError) on a secret shorter than MIN_BYTES, on a token secret
equal to the subscriber key, and on a secret file that another user owns or that its group or
others may read or write.
"""

from __future__ import annotations

import os
import secrets as random_tokens
import sys
import tempfile
from pathlib import Path

from emojistream.common.settings import ConfigError, SharedSettings, load_from

TOKEN_BYTES = 32
# HMAC-SHA256 keys shorter than its 32-byte output weaken it; a random one is 43 characters.
MIN_BYTES = 32
SUBSCRIBER_KEY = "subscriber"
TOKEN_SECRET = "token"
ADMIN_KEY = "admin"
SETTINGS = {SUBSCRIBER_KEY: "SUBSCRIBER_KEY", TOKEN_SECRET: "TOKEN_SECRET",
            ADMIN_KEY: "ADMIN_KEY"}


class SecretError(RuntimeError):
    """A secret file exists but cannot be used; the message says which and why."""


def secret_path(settings: SharedSettings, name: str) -> Path:
    return settings.var_path / "secrets" / f"{name}.key"


def shared_secret(settings: SharedSettings, name: str, configured_value: str) -> str:
    """``configured_value`` when set, else the installation's secret ``name`` (created if
    missing). Raises SecretError (too short, a file others may read) or OSError."""
    if configured_value:
        return _long_enough(configured_value, SETTINGS.get(name, name))
    path = secret_path(settings, name)
    if not path.exists():
        _create_once(path)
    return _long_enough(_read(path), str(path))


def subscriber_key(settings: SharedSettings) -> str:
    """The key subscribers present to the WebSocket servers' /publish endpoint."""
    return shared_secret(settings, SUBSCRIBER_KEY, settings.subscriber_key)


def token_secret(settings: SharedSettings) -> str:
    """The secret viewer tokens are signed with (registration API) and checked with (WebSocket
    servers)."""
    return shared_secret(settings, TOKEN_SECRET, settings.token_secret)


def all_secrets(settings: SharedSettings) -> dict[str, str]:
    """Every secret, checked, and checked to differ from the others: every process that holds
    one starts with this, so a configuration in which one secret opens another's door (a
    viewer's token secret that would let it publish) never runs."""
    values = {name: shared_secret(settings, name, getattr(settings, variable.lower()))
              for name, variable in SETTINGS.items()}
    names = list(values)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if values[first] == values[second]:
                raise SecretError(f"{SETTINGS[first]} and {SETTINGS[second]} are the same: "
                                  "give them different values (or leave them unset)")
    return values


def token_secret_and_subscriber_key(settings: SharedSettings) -> tuple[str, str]:
    """The token secret and the subscriber key (all_secrets checks them)."""
    values = all_secrets(settings)
    return values[TOKEN_SECRET], values[SUBSCRIBER_KEY]


def _long_enough(value: str, source: str) -> str:
    size = len(value.encode("utf-8"))
    if size < MIN_BYTES:
        raise SecretError(f"{source} is {size} bytes long; a secret needs at least {MIN_BYTES} "
                          "(a random one: python3 -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))'), or leave it unset to use one "
                          "generated in VAR_DIR/secrets")
    return value


def ensure_all(settings: SharedSettings) -> list[str]:
    """Create every secret that is neither configured nor on disk; one line per secret saying
    where it comes from."""
    lines = []
    for name, variable in SETTINGS.items():
        configured = getattr(settings, variable.lower())
        path = secret_path(settings, name)
        existed = path.exists()
        shared_secret(settings, name, configured)
        lines.append(f"{name}: from {variable}" if configured
                     else f"{name}: {path}{'' if existed else ' (new)'}")
    return lines


def _create_once(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w") as file:  # mkstemp creates it with mode 0600
            file.write(random_tokens.token_urlsafe(TOKEN_BYTES) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first; its value is the one
    finally:
        os.unlink(temporary)


def _read(path: Path) -> str:
    status = path.stat()
    if status.st_uid != os.geteuid():
        raise SecretError(f"secret file {path} belongs to uid {status.st_uid}, not to this "
                          f"user (uid {os.geteuid()}): chown it, or delete it to have a new one "
                          "generated")
    if status.st_mode & 0o077:
        raise SecretError(f"secret file {path} may be read or written by others (mode "
                          f"{status.st_mode & 0o777:04o}): chmod 600 {path}")
    value = path.read_text().strip()
    if not value:
        raise SecretError(f"secret file {path} is empty; delete it to have a new one generated")
    return value


def main() -> int:
    try:
        settings = load_from(SharedSettings)
        for line in ensure_all(settings):
            print(line)
        all_secrets(settings)
    except (ConfigError, OSError, SecretError) as err:
        print(f"secrets: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

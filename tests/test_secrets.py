"""The installation's secrets (emojistream/common/secrets.py): generated once, private, long
enough and distinct; and the components that hold them refuse to start otherwise (one line,
exit 1)."""

from __future__ import annotations

import os

import pytest

from emojistream import config
from emojistream.common import secrets
from emojistream.common.secrets import SecretError
from tests.services import run

LONG = "a-configured-secret-of-more-than-32-bytes"


def settings_for(tmp_path, **env):
    return config.load({"VAR_DIR": str(tmp_path / "var"), **env})


def test_generated_secrets_are_private_long_and_distinct(tmp_path):
    settings = settings_for(tmp_path)
    token, key = secrets.token_secret_and_subscriber_key(settings)
    assert len(token) == len(key) == 43 and token != key
    for name in ("token", "subscriber"):
        assert secrets.secret_path(settings, name).stat().st_mode & 0o777 == 0o600
    assert secrets.token_secret_and_subscriber_key(settings) == (token, key)


@pytest.mark.parametrize("variable", ["TOKEN_SECRET", "SUBSCRIBER_KEY"])
def test_a_configured_secret_shorter_than_32_bytes_is_refused(tmp_path, variable):
    with pytest.raises(SecretError, match=f"^{variable} is 31 bytes long; a secret needs at "
                                          "least 32"):
        secrets.token_secret_and_subscriber_key(settings_for(tmp_path, **{variable: "x" * 31}))
    settings = settings_for(tmp_path, **{variable: "é" * 16})  # 32 bytes in UTF-8
    assert len(secrets.token_secret_and_subscriber_key(settings)) == 2


def test_equal_token_secret_and_subscriber_key_are_refused(tmp_path):
    with pytest.raises(SecretError, match="SUBSCRIBER_KEY and TOKEN_SECRET are the same"):
        secrets.token_secret_and_subscriber_key(
            settings_for(tmp_path, TOKEN_SECRET=LONG, SUBSCRIBER_KEY=LONG))


def test_a_short_secret_file_is_refused(tmp_path):
    settings = settings_for(tmp_path)
    path = secrets.secret_path(settings, "token")
    path.parent.mkdir(parents=True)
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(SecretError, match=f"^{path} is 5 bytes long"):
        secrets.token_secret(settings)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o606])
def test_a_secret_file_others_may_read_or_write_is_refused(tmp_path, mode):
    settings = settings_for(tmp_path)
    secrets.token_secret(settings)
    path = secrets.secret_path(settings, "token")
    path.chmod(mode)
    with pytest.raises(SecretError, match=f"may be read or written by others "
                                          f"\\(mode {mode:04o}\\): chmod 600 {path}"):
        secrets.token_secret(settings)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away takes root")
def test_a_secret_file_of_another_user_is_refused(tmp_path):
    settings = settings_for(tmp_path)
    secrets.subscriber_key(settings)
    path = secrets.secret_path(settings, "subscriber")
    os.chown(path, 4242, -1)
    with pytest.raises(SecretError, match="belongs to uid 4242, not to this user"):
        secrets.subscriber_key(settings)


@pytest.mark.parametrize("script, args", [
    ("ws_server.py", ["--cluster", "1"]),
    ("registration_api.py", []),
    ("subscriber.py", ["--cluster", "1", "--id", "1"]),
])
def test_the_components_refuse_to_start_on_a_short_secret(tmp_path, script, args):
    env = dict(os.environ, VAR_DIR=str(tmp_path / "var"), TOKEN_SECRET="too-short",
               SUBSCRIBER_KEY=LONG, KAFKA_BOOTSTRAP_SERVERS="localhost:1")
    result = run(script, *args, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].endswith("TOKEN_SECRET is 9 bytes long; a secret needs at least 32 (a random "
                             "one: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'),"
                             " or leave it unset to use one generated in VAR_DIR/secrets")


def test_the_components_refuse_equal_secrets(tmp_path):
    env = dict(os.environ, VAR_DIR=str(tmp_path / "var"), TOKEN_SECRET=LONG, SUBSCRIBER_KEY=LONG)
    result = run("ws_server.py", "--cluster", "1", env=env)
    assert result.returncode == 1
    assert "SUBSCRIBER_KEY and TOKEN_SECRET are the same" in result.stderr

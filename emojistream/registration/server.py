"""registration_api.py: the registration API served by granian (one worker: the registry is in
its memory)."""

from __future__ import annotations

import logging
import os

from flask import Flask

from emojistream import topology
from emojistream.common import secrets, wsgi
from emojistream.common.lifecycle import server_settings
from emojistream.common.logs import setup_logging
from emojistream.common.settings import load_from, to_environment
from emojistream.registration.app import MONITOR, STREAMS, create_app
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

OPTIONS = {"host": "registration_host", "port": "registration_port",
           "threads": "registration_threads"}


def worker_app() -> Flask:
    """The app of the server's one worker, from the environment's settings."""
    return create_app(load_from(RegistrationSettings))


def stop_worker(app: Flask) -> None:
    """As the worker ends: stop its health polls and its stream catalog."""
    app.extensions[MONITOR].stop()
    app.extensions[STREAMS].stop()


def main(argv=None) -> int:
    setup_logging("registration_api")
    settings = server_settings(
        log, RegistrationSettings, argv, "registration_api.py",
        "Assigns viewers to clusters (POST /register, POST /deregister, GET /clusters, "
        "GET /health), manages the streams, serves the live page.", **OPTIONS)
    try:
        secrets.token_secret_and_subscriber_key(settings)  # checked (and created) now
    except (OSError, secrets.SecretError) as err:
        log.error("cannot use the secrets: %s", err)
        return 1
    try:
        wsgi.check_port_free(settings.registration_host, settings.registration_port)
        log.info("listening on %s:%d (1 worker with %d threads), %d cluster(s): %s",
                 settings.registration_host, settings.registration_port,
                 settings.registration_threads, settings.cluster_count,
                 ", ".join(topology.ws_public_url(settings, n) for n in settings.clusters))
        os.environ.update(to_environment(settings))  # the worker's settings
        wsgi.serve("emojistream.registration.server:worker_app",
                   host=settings.registration_host, port=settings.registration_port,
                   workers=1, threads=settings.registration_threads,
                   worker_exit="emojistream.registration.server:stop_worker")
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0

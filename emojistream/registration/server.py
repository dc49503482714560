"""registration_api.py: the registration API served by granian, REGISTRATION_WORKERS worker
processes on one port (stateless: any worker answers any request; each polls the WebSocket
servers' health itself)."""

from __future__ import annotations

import logging
import os

from flask import Flask

from emojistream import topology
from emojistream.common import metrics, secrets, wsgi
from emojistream.common.lifecycle import server_settings
from emojistream.common.logs import setup_logging
from emojistream.common.settings import load_from, to_environment
from emojistream.registration.app import MONITOR, STREAMS, create_app
from emojistream.registration.settings import RegistrationSettings

log = logging.getLogger("registration_api")

OPTIONS = {"host": "registration_host", "port": "registration_port",
           "workers": "registration_workers", "threads": "registration_threads"}


def worker_app() -> Flask:
    """The app of one server worker, from the environment's settings (after the fork: each
    worker polls the servers and follows the streams itself)."""
    metrics.use_multiprocess_values()
    return create_app(load_from(RegistrationSettings))


def stop_worker(app: Flask) -> None:
    """As a worker ends: stop its health polls and its stream catalog."""
    app.extensions[MONITOR].stop()
    app.extensions[STREAMS].stop()
    metrics.forget_process(os.getpid())


def main(argv=None) -> int:
    setup_logging("registration_api")
    settings = server_settings(
        log, RegistrationSettings, argv, "registration_api.py",
        "Assigns viewers to clusters and signs their tokens (POST /register, GET /clusters, "
        "GET /health), manages the streams, serves the live page. Stateless: run any number.",
        **OPTIONS)
    try:
        secrets.token_secret_and_subscriber_key(settings)  # checked (and created) now
    except (OSError, secrets.SecretError) as err:
        log.error("cannot use the secrets: %s", err)
        return 1
    try:
        wsgi.check_port_free(settings.registration_host, settings.registration_port)
        log.info("listening on %s:%d (%d worker(s) with %d threads), %d cluster(s): %s",
                 settings.registration_host, settings.registration_port,
                 settings.registration_workers, settings.registration_threads,
                 settings.cluster_count,
                 ", ".join(topology.ws_public_url(settings, n) for n in settings.clusters))
        os.environ.update(to_environment(settings))  # the workers' settings
        metrics.prepare_multiprocess_dir(
            settings.var_path / "metrics" / f"registration_api-{settings.registration_port}")
        wsgi.serve("emojistream.registration.server:worker_app",
                   host=settings.registration_host, port=settings.registration_port,
                   workers=settings.registration_workers, threads=settings.registration_threads,
                   worker_exit="emojistream.registration.server:stop_worker")
    except wsgi.PortInUse as err:
        log.error("%s", err)
        return 1
    return 0

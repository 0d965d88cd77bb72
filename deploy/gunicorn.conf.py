"""Gunicorn settings for the web app (deploy/newsletter-web.service runs `gunicorn -c` this file).

Command-line options override these. With PROMETHEUS_MULTIPROC_DIR set, every worker (and the
scheduler, for its feed polls) writes its counters there and /metrics adds them up
(prometheus_client's multiprocess mode). The folder is shared by those services, so it is not
emptied here: it lives on /run (a tmpfs, empty after a reboot; deploy/newsletter.tmpfiles).
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
timeout = 60
graceful_timeout = 30
forwarded_allow_ips = "127.0.0.1,::1"  # nginx on the same machine (see PROXY_FIX)
accesslog = None  # nginx logs the requests; the app logs with the request id (X-Request-ID)
errorlog = "-"
control_socket_disable = True  # `gunicornc` is not used; and no socket in the service user's home


def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

# LOG_FORMAT=json: Gunicorn's own lines (start, workers, errors) as JSON objects like the app's.
if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "newsletter.engine.logformat.JsonFormatter"}},
        "handlers": {"error_console": {"class": "logging.StreamHandler", "formatter": "json",
                                       "stream": "ext://sys.stderr"}},
        "root": {"level": "INFO", "handlers": []},  # the app adds its own handler (LOG_LEVEL)
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False,
                                       "qualname": "gunicorn.error"}},
    }

"""Entry point: `python -m llmops_runners.serve --config /etc/llmops/serve.json` (or LLMOPS_CONFIG=...).

The port answers at once (/health: 503) and the model loads on a thread; /health turns 200 when
it serves. Exit codes, as the other runners': 2 when the config or the model is unusable (a bad
path, not a causal LM, an adapter that does not fit: restarting cannot help), 1 for any other
failure to start; the reason is the last line on stderr (what `terminationMessagePolicy:
FallbackToLogsOnError` puts in the pod's status). SIGTERM stops accepting connections, lets
running requests finish for up to GRACEFUL_SHUTDOWN_SECONDS, stops the engine, and then the process
ends by the signal it got (uvicorn re-raises it: exit status 143, as the other runners' `Terminated`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import load_config
from ..errors import EXIT_BAD_INPUT, EXIT_OK, BadInputError
from ..logs import setup_logging
from .config import ServeConfig

GRACEFUL_SHUTDOWN_SECONDS = 20  # within Kubernetes' default 30 s grace period


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmops_runners.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="serving config JSON (default: $LLMOPS_CONFIG)")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger("uvicorn.access").addFilter(_no_probe_lines)
    try:
        config = load_config(args.config or os.environ.get("LLMOPS_CONFIG"), ServeConfig)
    except BadInputError as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_INPUT

    import uvicorn

    from .app import create_app

    outcome = {"code": EXIT_OK, "message": ""}
    server: uvicorn.Server | None = None

    def fatal(code: int, message: str) -> None:  # called from the loading thread
        outcome["code"], outcome["message"] = code, message
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_config=None,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    server.run()
    if outcome["message"]:
        print(outcome["message"], file=sys.stderr)  # last, after uvicorn's shutdown lines
    return outcome["code"]


def _no_probe_lines(record: logging.LogRecord) -> bool:
    """Kubernetes probes /health and Prometheus scrapes /metrics every few seconds: not worth a log line each.
    uvicorn's access record args are (client, method, path, http version, status)."""
    args = record.args
    return not (isinstance(args, tuple) and len(args) >= 3 and args[2] in ("/health", "/metrics"))


if __name__ == "__main__":
    sys.exit(main())

"""Run the app under uvicorn, with graceful SIGTERM and a non-zero exit when the model cannot load.

uvicorn's own shutdown is what makes SIGTERM graceful: it stops accepting connections, lets in-flight
requests finish (up to ``graceful_timeout`` seconds), then runs the app's lifespan shutdown, where the
batcher drains whatever is still queued. Access logs are off by default: at thousands of requests a
second they cost event-loop time that the embeddings need.
"""

from __future__ import annotations

import logging

from .config import ServeConfig


def run(config: ServeConfig, access_log: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code (1 if the model failed to load)."""
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(config, on_fatal=on_fatal)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=config.graceful_timeout,
        server_header=False,
        lifespan="on",
        backlog=2048,
    )
    server = uvicorn.Server(uv_config)
    server.run()
    return 1 if failed else 0

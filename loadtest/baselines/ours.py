"""Our server under other uvicorn settings, for the benchmark's levers (workers, HTTP parser, event loop).

``python -m serving`` runs one uvicorn process with uvicorn's defaults (httptools and uvloop when
installed). To measure the levers it does not expose, this launcher runs the very same app
(``serving.app.create_app(Settings())``, settings from ``SSI_*`` variables; each worker loads and warms
the artifact in its lifespan) under chosen ``--workers``, ``--http`` and ``--loop``.

    SSI_ARTIFACT_PATH=artifacts/serving/hgn/<version> python -m loadtest.baselines.ours --workers 2 --port 8103
"""
from __future__ import annotations

from fastapi import FastAPI

from loadtest.baselines.common import cli, serve


def create_app() -> FastAPI:
    """Factory for uvicorn: the real server's app with settings from the environment."""
    from serving.app import create_app as create_serving_app
    from serving.config import Settings

    return create_serving_app(Settings())


def main(argv: list[str] | None = None) -> None:
    args = cli("Our server (serving.app) under chosen uvicorn workers / HTTP parser / event loop (bench levers).",
               "python -m loadtest.baselines.ours").parse_args(argv)
    serve("loadtest.baselines.ours:create_app", args)


if __name__ == "__main__":
    main()

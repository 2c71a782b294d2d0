"""What both reference servers share: the request schema, health/metrics routes, fixed-ranking logic, CLI.

The schema is the real server's (``serving.schemas``), so the same traffic and checks apply to every server
the bench compares.
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Response

from serving.schemas import RecommendBatchRequest, RecommendRequest  # noqa: F401 - re-exported

JSON = "application/json"


def json_response(body: Any, status: int = 200) -> Response:
    """An orjson-encoded JSON response."""
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message}, status)


def add_ops_routes(app: FastAPI, model_info: dict[str, Any]) -> None:
    """``/health/live``, ``/health/ready``, ``/model`` and ``/metrics`` (default registry: process_* metrics)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.get("/health/live")
    async def live() -> Response:
        return json_response({"status": "live"})

    @app.get("/health/ready")
    async def ready() -> Response:
        return json_response({"status": "ready", "model": model_info.get("version")})

    @app.get("/model")
    async def model() -> Response:
        return json_response(model_info)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def split_known(ids: Sequence[Any], num_items: int) -> tuple[list[int], list[Any]]:
    """(known internal ids in 1..num_items, unknown ids) of a request's id list (no id map: ids are ints)."""
    known: list[int] = []
    unknown: list[Any] = []
    for i in ids:
        if isinstance(i, int) and 1 <= i <= num_items:
            known.append(i)
        else:
            unknown.append(i)
    return known, unknown


def dedupe(ids: Iterable[int]) -> list[int]:
    """Ids in first-seen order without duplicates."""
    return list(dict.fromkeys(ids))


def take_ranked(order: Iterable[int], k: int, excluded: set[int] | frozenset[int]) -> list[int]:
    """The first ``k`` ids of ``order`` that are not in ``excluded``."""
    out: list[int] = []
    for i in order:
        if i in excluded:
            continue
        out.append(i)
        if len(out) == k:
            break
    return out


def cli(description: str, prog: str) -> argparse.ArgumentParser:
    """Common options of the reference servers (loopback only)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1", help="interface (loopback only)")
    p.add_argument("--port", type=int, default=8100, help="TCP port")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--http", default="auto", choices=("auto", "h11", "httptools"), help="uvicorn HTTP parser")
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"), help="uvicorn event loop")
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    return p


def serve(app_ref: str, args: argparse.Namespace) -> None:
    """Run uvicorn on ``app_ref`` (an import string with a factory, so workers > 1 work)."""
    import ipaddress

    import uvicorn

    if args.host != "localhost" and not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"refusing to bind {args.host}: the reference servers listen on loopback only")
    uvicorn.run(app_ref, factory=True, host=args.host, port=args.port, workers=args.workers, http=args.http,
                loop=args.loop, log_level=args.log_level, access_log=False)

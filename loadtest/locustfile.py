"""Locust user for the recommender: realistic traffic, every answer checked.

Run it through ``python -m loadtest.run`` (bounded, loopback only, with a summary), or directly::

    SSI_LOADTEST_DATASET=lastfm \\
        locust -f loadtest/locustfile.py --headless -u 20 -r 20 -t 30s --host http://127.0.0.1:8000

Traffic (see ``loadtest.traffic.TrafficConfig``, all from ``SSI_LOADTEST_*`` environment variables):
dataset test histories with a mix of lengths; shares of anonymous, ``exclude_seen``, candidate and batch
requests; ``SSI_LOADTEST_RATE_PER_USER`` > 0 paces each user (fixed rate = users x rate), 0 = closed loop.
A response that is not 200 or fails the checks of ``loadtest.traffic.check_response`` counts as a failure.
"""
from __future__ import annotations

import random

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    import json

    _loads = json.loads

from locust import FastHttpUser, constant, constant_throughput, events, task

from loadtest.traffic import PreparedRequest, TrafficConfig, build_pool, check_response

CONFIG = TrafficConfig()  # from SSI_LOADTEST_* (written by loadtest.run / bench), else the defaults
POOL: list[PreparedRequest] = []
HEADERS = {"content-type": "application/json", "accept": "application/json"}


def ensure_pool() -> list[PreparedRequest]:
    """Build the request pool once per process (dataset loading happens here, not per request)."""
    if not POOL:
        pool, _ = build_pool(CONFIG)
        POOL.extend(pool)
    return POOL


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    ensure_pool()
    # Building the pool blocks for a moment; refresh gevent's cached clock, or locust's --run-time timer
    # (armed right after this event, relative to the stale loop time) fires that much too early.
    import gevent

    gevent.get_hub().loop.update_now()


class RecommendUser(FastHttpUser):
    """Posts prepared requests from the pool and checks each answer."""

    wait_time = constant_throughput(CONFIG.rate_per_user) if CONFIG.rate_per_user > 0 else constant(0)
    # One connection per simulated user, like a client with keep-alive.
    concurrency = 1

    def on_start(self) -> None:
        self._rng = random.Random()
        self._pool = ensure_pool()

    @task
    def recommend(self) -> None:
        req = self._rng.choice(self._pool)
        with self.client.post(req.path, data=req.body, headers=HEADERS, name=req.name, catch_response=True) as resp:
            if resp.status_code == 0:  # no HTTP answer: connection refused/reset/closed, timeout
                resp.failure(f"no response: {type(resp.error).__name__}: {resp.error}"[:200])
                return
            if resp.status_code != 200:
                body = (resp.text or "")[:200] if resp.content else ""
                resp.failure(f"HTTP {resp.status_code} {body}")
                return
            try:
                data = _loads(resp.content)
            except Exception as e:  # noqa: BLE001 - any decode error is a wrong answer
                resp.failure(f"invalid JSON: {e}")
                return
            err = check_response(req, data, CONFIG.check)
            if err:
                resp.failure(err)
            else:
                resp.success()

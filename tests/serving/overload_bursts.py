"""Overload bursts against a ``python -m serving`` process, with its resident memory after each burst.

A burst opens ``size`` connections at once, each sending one ``/recommend`` request; with a small
``max_queue_size`` most of them are refused with 503 (as under real overload), and a share of the
clients give up mid-upload (counted as 499 by the server). Used by ``test_serving_overload_memory.py``
(small bursts) and by hand for the issue's sizes::

    SSI_DATA_DIR=... python tests/serving/overload_bursts.py ARTIFACT_ROOT --bursts 10 --size 3000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifact_root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m serving`` on a free port; returns once it is ready."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SSI_") or k == "SSI_DATA_DIR"}
    full_env.update({"SSI_LOG_LEVEL": "error", **(env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--artifact-root", str(artifact_root), "--port", str(port),
                             "--device", "cpu", *args], cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)


async def _one(port: int, body: bytes, abort: bool, gate: asyncio.Event) -> str:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect_error"
    try:
        head = (b"POST /recommend HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
        await gate.wait()  # everyone sends at once
        if abort:  # half the body, then gone
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            return "aborted"
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        return line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "no_answer"
    except (OSError, asyncio.TimeoutError):
        return "io_error"
    finally:
        writer.close()


async def _burst(port: int, size: int, abort_share: float) -> Counter:
    gate = asyncio.Event()
    bodies = [json.dumps({"history": [1 + (i * 7 + j) % 140 for j in range(1 + i % 20)], "k": 10}).encode()
              for i in range(size)]
    every = max(1, round(1 / abort_share)) if abort_share > 0 else 0
    tasks = [asyncio.create_task(_one(port, b, bool(every) and i % every == 0, gate)) for i, b in enumerate(bodies)]
    await asyncio.sleep(0.2)  # let the connections open
    gate.set()
    return Counter(await asyncio.gather(*tasks))


def burst(url: str, size: int, abort_share: float = 0.1) -> Counter:
    """One burst of ``size`` simultaneous requests; returns the count of answers by status."""
    return asyncio.run(_burst(int(url.rsplit(":", 1)[1]), size, abort_share))


def rss_mib(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / 2**20


def run_bursts(proc: subprocess.Popen, url: str, bursts: int, size: int, settle_s: float = 0.5,
               abort_share: float = 0.1) -> tuple[list[float], list[Counter]]:
    """RSS (MiB) after warm-up, then after each burst (after ``settle_s``); and the statuses of each burst."""
    rss = [rss_mib(proc)]
    statuses = []
    for _ in range(bursts):
        statuses.append(burst(url, size, abort_share))
        time.sleep(settle_s)
        rss.append(rss_mib(proc))
    return rss, statuses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact_root", type=Path)
    p.add_argument("--bursts", type=int, default=10)
    p.add_argument("--size", type=int, default=3000, help="simultaneous requests per burst")
    p.add_argument("--max-queue-size", type=int, default=64)
    p.add_argument("--abort-share", type=float, default=0.1, help="share of clients that leave mid-upload")
    a = p.parse_args()
    proc, url = start_server(a.artifact_root, "--max-queue-size", str(a.max_queue_size))
    try:
        rss, statuses = run_bursts(proc, url, a.bursts, a.size, abort_share=a.abort_share)
        print(f"RSS after warm-up: {rss[0]:.1f} MiB")
        for i, (r, s) in enumerate(zip(rss[1:], statuses), start=1):
            print(f"burst {i:2d}: RSS {r:6.1f} MiB  answers {dict(sorted(s.items()))}")
        metrics = httpx.get(f"{url}/metrics").text
        print("\n".join(x for x in metrics.splitlines() if x.startswith("ssi_requests_total")))
    finally:
        proc.terminate()
        proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())

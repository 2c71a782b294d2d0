"""Slow clients against a real uvicorn server (raw sockets): headers and body each get a deadline, the
server answers 408 and closes, and normal requests keep their latency while hundreds of slow clients
hang on. A client that leaves mid-upload is counted as 499 (client closed), never as a 500.
"""
from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
SLACK = 1.5  # scheduling slack on a loaded 2-core machine
SLOW_CLIENTS = 200  # the 1,000 were measured by hand (see the issue note); 200 keep the test fast


@pytest.fixture
def server(live_server, artifact_root: Path):
    return live_server(artifact_root, header_timeout_s=HEADER_TIMEOUT, body_timeout_s=BODY_TIMEOUT)


def _connect(url: str) -> socket.socket:
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    t0 = time.perf_counter()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.perf_counter() - t0


def _sample(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " ")), 0.0)


HEAD = (b"POST /recommend HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n")


def test_unfinished_headers_are_cut_off(server) -> None:
    sock = _connect(server.url)
    sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: test\r\n")  # the blank line never comes
    data, waited = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"header_timeout" in data, data[:200]
    assert HEADER_TIMEOUT * 0.8 <= waited <= HEADER_TIMEOUT + SLACK, waited
    assert _sample(server.url, 'ssi_slow_client_timeouts_total{stage="headers"}') >= 1


def test_trickled_headers_are_cut_off_at_the_deadline(server) -> None:
    """One byte at a time keeps the connection busy, but the deadline is for the whole head."""
    sock = _connect(server.url)
    t0 = time.perf_counter()
    closed = False
    for byte in b"GET /health/live HTTP/1.1\r\nX-Slow: " + b"a" * 100:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.1)
        if time.perf_counter() - t0 > HEADER_TIMEOUT + SLACK:
            break
    data, _ = _read_until_closed(sock, limit=HEADER_TIMEOUT + SLACK)
    assert closed or data.startswith(b"HTTP/1.1 408"), data[:200]
    assert time.perf_counter() - t0 <= HEADER_TIMEOUT + 2 * SLACK


def test_idle_new_connection_is_cut_off(server) -> None:
    sock = _connect(server.url)
    _, waited = _read_until_closed(sock)
    assert waited <= HEADER_TIMEOUT + SLACK


def test_body_shorter_than_its_content_length_is_cut_off(server) -> None:
    sock = _connect(server.url)
    sock.sendall(HEAD + b'{"history": [1, 2')  # 200 bytes promised, 17 sent
    data, waited = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and b"body_timeout" in data, data[:300]
    assert b"connection: close" in data.lower()
    assert BODY_TIMEOUT * 0.8 <= waited <= BODY_TIMEOUT + SLACK, waited
    assert _sample(server.url, 'ssi_slow_client_timeouts_total{stage="body"}') == 1
    assert _sample(server.url, 'ssi_requests_total{endpoint="/recommend",method="POST",status="408"}') == 1


def test_trickled_body_is_cut_off_at_the_deadline(server) -> None:
    sock = _connect(server.url)
    sock.sendall(HEAD)
    t0 = time.perf_counter()
    for _ in range(40):  # a byte every 0.1 s would take 20 s for the whole body
        try:
            sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.1)
        if time.perf_counter() - t0 > BODY_TIMEOUT + SLACK:
            break
    data, _ = _read_until_closed(sock, limit=SLACK)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert time.perf_counter() - t0 <= BODY_TIMEOUT + 2 * SLACK


def test_oversized_headers_get_431(server) -> None:
    sock = _connect(server.url)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 70_000)
    data, waited = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert waited < HEADER_TIMEOUT  # refused at once, not at the deadline


def test_kept_alive_connections_are_not_cut_by_the_header_deadline(server) -> None:
    """The deadline runs per request head: a keep-alive client that pauses between requests, or sends
    requests for longer than the deadline, is not affected (idle time is uvicorn's keep-alive timeout)."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < HEADER_TIMEOUT * 2:
            assert client.post("/recommend", json={"history": [1, 2], "k": 3}).status_code == 200
        time.sleep(HEADER_TIMEOUT * 1.5)
        r = client.post("/recommend", json={"history": [3], "k": 3})
        assert r.status_code == 200
    assert _sample(server.url, 'ssi_slow_client_timeouts_total{stage="headers"}') == 0


def _open_slow_clients(url: str, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = _connect(url)
        s.sendall(b"POST /recommend HTTP/1.1\r\nHost: t\r\n" if i % 2 else HEAD + b'{"hist')
        socks.append(s)
    return socks


def _latencies(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(n):
            t0 = time.perf_counter()
            r = client.post("/recommend", json={"history": [1 + i % 50, 2, 3], "k": 10})
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


def test_normal_requests_keep_their_latency_while_slow_clients_hang_on(live_server, artifact_root: Path) -> None:
    server = live_server(artifact_root, header_timeout_s=3.0, body_timeout_s=3.0)
    _latencies(server.url, 20)  # warm
    before = _latencies(server.url, 100)
    socks = _open_slow_clients(server.url, SLOW_CLIENTS)
    try:
        during = _latencies(server.url, 100)
        # every slow client is dropped by the server itself within its deadline
        results: list[float] = []
        threads = [threading.Thread(target=lambda s=s: results.append(_read_until_closed(s, 3.0 + 2 * SLACK)[1]))
                   for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in socks:
            s.close()
    p50_before, p50_during = statistics.median(before), statistics.median(during)
    p99_during = sorted(during)[98]
    assert p50_during <= max(3 * p50_before, p50_before + 0.01), (p50_before, p50_during)
    assert p99_during < 0.25, p99_during
    assert len(results) == SLOW_CLIENTS and max(results) <= 3.0 + 2 * SLACK
    timeouts = (_sample(server.url, 'ssi_slow_client_timeouts_total{stage="headers"}')
                + _sample(server.url, 'ssi_slow_client_timeouts_total{stage="body"}'))
    assert timeouts == SLOW_CLIENTS


def test_client_gone_mid_upload_is_499_not_500(server) -> None:
    for _ in range(3):
        sock = _connect(server.url)
        sock.sendall(HEAD + b'{"history": [1')
        time.sleep(0.05)
        sock.close()
    time.sleep(0.3)
    text = httpx.get(f"{server.url}/metrics").text
    assert 'ssi_requests_total{endpoint="/recommend",method="POST",status="499"} 3.0' in text, text[:3000]
    assert 'status="500"' not in text
    assert 'ssi_request_errors_total{endpoint="/recommend",status="499"}' not in text  # not an answer
    assert _sample(server.url, 'ssi_slow_client_timeouts_total{stage="body"}') == 0


def test_nginx_drops_slow_clients_no_later_than_the_server() -> None:
    """deploy/nginx.conf sets client timeouts, none longer than the server's own default deadlines."""
    import re

    from serving.config import Settings

    conf = (Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf").read_text()
    seconds = {name: int(value) for name, value in re.findall(r"^\s*(\w+_timeout)\s+(\d+)s;", conf, re.MULTILINE)}
    defaults = Settings()
    assert seconds["client_header_timeout"] <= defaults.header_timeout_s
    assert seconds["client_body_timeout"] <= defaults.body_timeout_s
    assert seconds["send_timeout"] <= defaults.body_timeout_s
    assert "reset_timedout_connection on;" in conf


def test_the_h11_parser_gets_the_same_head_deadline(live_server, artifact_root: Path) -> None:
    """Without httptools uvicorn parses with h11: the deadline and the size limit hold there too."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from serving.server import guarded_protocol

    server = live_server(artifact_root, uvicorn_options={"http": guarded_protocol(HEADER_TIMEOUT, 65_536,
                                                                                  base=H11Protocol)})
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/recommend", json={"history": [1]}).status_code == 200
    sock = _connect(server.url)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n")
    data, waited = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408") and waited <= HEADER_TIMEOUT + SLACK, (data[:100], waited)
    sock = _connect(server.url)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nX-Big: " + b"a" * 70_000)
    data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431"), data[:100]

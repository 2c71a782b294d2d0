"""Who may call the admin endpoints, and keeping server file paths out of response bodies.

Admin endpoints (``POST /admin/reload``, ``POST /eval``) follow one rule, shown at startup:

- ``SSI_API_KEY`` set: they need it in the ``X-API-Key`` header (401 without it or with a wrong one).
- no key, ``host`` a loopback address (``127.0.0.1``, ``::1``, ``localhost``; the default): open, for local
  use, to requests that reach the server on a loopback address and did not come through a proxy
  (no ``Forwarded`` / ``X-Forwarded-For`` / ``X-Real-IP`` header); everything else gets 403.
- no key, any other host: refused with 403, and a message naming ``SSI_API_KEY``.

The connection's own address is checked as well as the setting because ``uvicorn serving.app:app
--host 0.0.0.0`` binds what uvicorn is told, not ``SSI_HOST``.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serving.config import Settings
from serving.errors import ServingError

ADMIN_ENDPOINTS = "POST /admin/reload and POST /eval"
PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
AdminMode = Literal["key", "local", "closed"]


def is_loopback(host: str | None) -> bool:
    """True for loopback addresses and the name ``localhost`` (IPv4, IPv6, IPv4-mapped IPv6)."""
    if not host:
        return False
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


@dataclass(frozen=True)
class AdminPolicy:
    """The admin rule of one server (see the module docstring)."""

    mode: AdminMode
    host: str
    key: bytes | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminPolicy:
        if settings.api_key is not None:
            return cls("key", settings.host, settings.api_key.get_secret_value().encode())
        return cls("local" if is_loopback(settings.host) else "closed", settings.host)

    def describe(self) -> str:
        """The rule as one line for the startup log."""
        if self.mode == "key":
            return f"admin endpoints ({ADMIN_ENDPOINTS}) need the X-API-Key header (SSI_API_KEY is set)"
        if self.mode == "local":
            return (f"admin endpoints ({ADMIN_ENDPOINTS}) are OPEN without a key to local requests, because "
                    f"SSI_API_KEY is not set and host {self.host} is a loopback address; set SSI_API_KEY before "
                    "exposing this server")
        return (f"admin endpoints ({ADMIN_ENDPOINTS}) are disabled (403): SSI_API_KEY is not set and host "
                f"{self.host} is not a loopback address; set SSI_API_KEY to enable them")

    def check(self, scope: dict, key: str | None) -> None:
        """Raise ``ServingError`` (401 / 403) unless the request may use an admin endpoint."""
        if self.mode == "key":
            if key is None or not hmac.compare_digest(key.encode(), self.key or b""):
                raise ServingError(401, "unauthorized", "missing or wrong X-API-Key header",
                                   headers={"WWW-Authenticate": "ApiKey"})
            return
        if self.mode == "local" and _is_local_request(scope):
            return
        why = (f"the server binds {self.host}, not a loopback address" if self.mode == "closed"
               else "this request is not a local one (it reached a non-loopback address or came through a proxy)")
        raise ServingError(403, "admin_disabled",
                           f"admin endpoints need an API key: start the server with SSI_API_KEY set and send it "
                           f"in the X-API-Key header ({why})")


def _is_local_request(scope: dict) -> bool:
    server = scope.get("server")
    if not server or not is_loopback(str(server[0])):
        return False
    return not any(name in PROXY_HEADERS for name, _ in scope.get("headers") or ())


# ------------------------------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class _Root:
    prefixes: tuple[str, ...]  # spellings of the folder, longest first
    label: str  # what the folder itself is called in a message


class PathRedactor:
    """Rewrites server paths in a client-facing message: files under a known folder (the artifact
    root, the data folder, ...) are named relative to it, the folder itself by a label when it is
    spelled as an absolute path (a relative spelling such as ``data`` is no server path and stays)."""

    def __init__(self, roots: list[tuple[Path, str]]) -> None:
        self.roots: list[_Root] = []
        for folder, label in roots:
            spellings = {str(folder), str(folder.absolute()), os.path.realpath(folder)}
            spellings = {s.rstrip("/") for s in spellings if s not in ("", ".", "/")}
            if spellings:
                self.roots.append(_Root(tuple(sorted(spellings, key=len, reverse=True)), label))
        self.roots.sort(key=lambda r: -len(r.prefixes[0]))
        alternatives = [(re.escape(p), i) for i, r in enumerate(self.roots) for p in r.prefixes]
        alternatives.sort(key=lambda a: -len(a[0]))
        self._pattern = (re.compile(r"(?<![\w./-])(" + "|".join(a for a, _ in alternatives) + r")(/|(?![\w.-]))")
                         if alternatives else None)
        self._label = {p: self.roots[i].label for i, r in enumerate(self.roots) for p in r.prefixes}

    @classmethod
    def for_settings(cls, settings: Settings) -> PathRedactor:
        roots: list[tuple[Path, str]] = [(Path(settings.artifact_root), "<artifact root>"),
                                         (settings.data_folder, "<data folder>"),
                                         (Path(os.environ.get("SSI_CACHE_DIR", "artifacts/cache")), "<cache folder>")]
        if settings.artifact_path is not None:
            roots.append((Path(settings.artifact_path), "<artifact>"))
        roots += [(Path.cwd(), "<working folder>"), (Path.home(), "<home>")]
        return cls(roots)

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text

        def swap(m: re.Match[str]) -> str:
            if m.group(2):  # a file under the folder: named relative to it
                return ""
            if not m.group(1).startswith("/"):  # the folder itself, spelled relative: no server path, and
                return m.group(1)  # a word such as "data" in a sentence must stay a word
            return self._label[m.group(1)]

        return self._pattern.sub(swap, text)


def artifact_display_name(path: Path, settings: Settings) -> str:
    """An artifact folder named relative to the artifact root (``hgn/2026...``), else by its own name."""
    try:
        rel = Path(os.path.realpath(path)).relative_to(os.path.realpath(settings.artifact_root))
    except ValueError:
        return path.name
    return rel.as_posix() if rel.parts else path.name

"""``python -m serving``: read settings (env ``SSI_*`` + CLI), load and warm the artifact, serve.

A missing or corrupt artifact ends the process with exit status 1 and one line naming the path
and the problem (no traceback); invalid settings end it with status 2.
"""
from __future__ import annotations

import logging
import os
import sys


def _fail(message: str, code: int) -> int:
    print(f"serving: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from serving.config import Settings

    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        return _fail(f"invalid settings: {problems}", 2)
    except SettingsError as e:
        return _fail(f"invalid settings: {' '.join(str(e).split())}", 2)
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.ort_threads))  # before numpy/faiss start threads
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from serving.app import create_app
    from serving.artifact import ArtifactError
    from serving.engine import load_state
    from serving.server import uvicorn_config

    try:
        state = load_state(settings)
    except (ArtifactError, RuntimeError) as e:
        return _fail(f"cannot start: {e}", 1)
    app = create_app(settings, state=state)
    logging.getLogger("serving").info(
        "slow clients: headers within %gs (at most %d bytes), body within %gs, idle keep-alive %ds; body at most %d "
        "bytes", settings.header_timeout_s, settings.max_header_bytes, settings.body_timeout_s,
        settings.keep_alive_timeout_s, settings.max_body_bytes)
    server = uvicorn.Server(uvicorn_config(app, settings))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else 3  # 3: uvicorn's STARTUP_FAILURE (e.g. the port is taken)


if __name__ == "__main__":
    sys.exit(main())

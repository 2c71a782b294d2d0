"""deploy/: every YAML parses, and the pieces agree with each other and with the server.

Compose: two replicas behind nginx, artifacts read-only, the LB on loopback. Kubernetes: probes on the
server's real health routes, Service and HPA pointing at the Deployment, CPU requests for the HPA, a
non-root read-only pod, the training job running torchrun on training/run_all.py. nginx.conf: the
upstream is the compose service; ``nginx -t`` when an nginx binary is installed.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict]:
    objs = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in load_all(f):
            objs[(d["kind"], d["metadata"]["name"] if "metadata" in d else f.stem)] = d
    return objs


def server_routes() -> set[str]:
    """Paths the real server serves, from its OpenAPI schema (no model needed)."""
    from serving.app import create_app

    return set(create_app().openapi()["paths"])


def test_every_yaml_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 8
    for f in files:
        docs = load_all(f)
        assert docs, f"{f} is empty"
        for d in docs:
            assert isinstance(d, dict), f"{f}: a document is not a mapping"


def test_compose_two_replicas_behind_nginx() -> None:
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    svc = compose["services"]["recommender"]
    assert svc["deploy"]["replicas"] == 2
    assert svc["build"]["context"] == ".." and (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    vol = svc["volumes"][0]
    assert vol["target"] == svc["environment"]["SSI_ARTIFACT_ROOT"] and vol["read_only"] is True
    assert "/health/ready" in " ".join(svc["healthcheck"]["test"])
    assert svc["environment"]["SSI_HOST"] == "0.0.0.0"
    lb = compose["services"]["lb"]
    assert lb["image"].startswith("nginx:")
    assert all(p.startswith("127.0.0.1:") for p in lb["ports"])
    assert lb["depends_on"]["recommender"]["condition"] == "service_healthy"
    conf_mount = lb["volumes"][0]
    assert (DEPLOY / conf_mount["source"]).resolve() == (DEPLOY / "nginx.conf").resolve()
    assert conf_mount["target"] == "/etc/nginx/nginx.conf"


def test_nginx_conf_points_at_the_replicas() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    compose = load_all(DEPLOY / "docker-compose.yml")[0]
    port = compose["services"]["recommender"]["environment"]["SSI_PORT"]
    assert re.search(rf"server\s+recommender:{port}\b", conf)
    assert conf.count("{") == conf.count("}")
    assert "proxy_pass http://recommender" in conf and "location /admin/" in conf
    listen = re.search(r"listen\s+(\d+)", conf).group(1)
    assert any(p.endswith(f":{listen}") for p in compose["services"]["lb"]["ports"])


def test_nginx_syntax_when_available(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if not nginx:
        pytest.skip("nginx not installed (optional: apt-get install nginx)")
    # Docker's resolver and service name do not exist here: point the upstream at loopback for the check.
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = re.sub(r"server recommender:(\d+) resolve", r"server 127.0.0.1:\1", conf)
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    (tmp_path / "nginx.conf").write_text(conf)
    r = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-e",
                        str(tmp_path / "error.log")], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_k8s_deployment_service_hpa_agree() -> None:
    objs = k8s_objects()
    dep = objs[("Deployment", "ssi-rec")]
    svc = objs[("Service", "ssi-rec")]
    hpa = objs[("HorizontalPodAutoscaler", "ssi-rec")]
    pdb = objs[("PodDisruptionBudget", "ssi-rec")]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    port = c["ports"][0]
    assert int(env["SSI_PORT"]) == port["containerPort"] and env["SSI_HOST"] == "0.0.0.0"
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    assert c["command"] == ["python", "-m", "serving"]
    assert dep["spec"]["replicas"] >= 2 and dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # HPA on CPU needs CPU requests
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ssi-rec"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and c["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # artifacts read-only, non-root, read-only root file system
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["artifacts"]["mountPath"] == env["SSI_ARTIFACT_ROOT"] and mounts["artifacts"]["readOnly"]
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["artifacts"]["persistentVolumeClaim"]["claimName"] in {n for k, n in objs if k == "PersistentVolumeClaim"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]


def test_k8s_probes_use_real_server_routes() -> None:
    routes = server_routes()
    assert {"/health/ready", "/health/live", "/admin/reload", "/metrics"} <= routes
    dep = k8s_objects()[("Deployment", "ssi-rec")]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in routes
        assert c[probe]["httpGet"]["port"] == c["ports"][0]["name"]


def test_kustomization_lists_existing_files() -> None:
    kust = load_all(K8S / "kustomization.yaml")[0]
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    assert "training-job.yaml" not in kust["resources"]  # applied on its own (GPU nodes)


def test_training_job_runs_torchrun_on_run_all() -> None:
    objs = k8s_objects()
    job = objs[("Job", "ssi-train")]
    spec = job["spec"]
    (c,) = spec["template"]["spec"]["containers"]
    assert c["command"] == ["torchrun"]
    args = c["args"]
    nnodes = int(next(a for a in args if a.startswith("--nnodes=")).split("=")[1])
    nproc = int(next(a for a in args if a.startswith("--nproc_per_node=")).split("=")[1])
    assert nnodes == spec["completions"] == spec["parallelism"] and spec["completionMode"] == "Indexed"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == nproc
    script = next(a for a in args if a.endswith(".py"))
    assert (ROOT / script).is_file()
    rdzv = next(a for a in args if a.startswith("--rdzv_endpoint=")).split("=")[1]
    assert rdzv.startswith(f"{job['metadata']['name']}-0.{spec['template']['spec']['subdomain']}:")
    assert objs[("Service", "ssi-train")]["spec"]["clusterIP"] == "None"
    # every option the job passes to run_all.py exists there
    text = (ROOT / script).read_text()
    for a in args[args.index(script) + 1:]:
        if a.startswith("--"):
            assert f'"{a.split("=")[0]}"' in text, a

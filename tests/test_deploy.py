"""The deployment files in deploy/ and the Containerfile, tested rather than only written:
the systemd unit passes `systemd-analyze verify` and its commands run; the Kubernetes
manifests pass the API's schemas and wire probes, ports and selectors as documented; the
package ships what an installed gateway needs; the image is built and smoke-tested on
request (GATEWAY_TEST_IMAGE=1).
"""

from __future__ import annotations

import configparser
import copy
import os
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.config import load_config
from gateway.embedded_pg import free_port

from .conftest import Seed
from .helpers import REPO_ROOT, wait_for
from .topology import DEPLOY, require

UNIT = DEPLOY / "systemd" / "growpanel-gateway.service"
MANIFESTS = DEPLOY / "kubernetes"
K8S_VERSION = "1.30"

# -- systemd ------------------------------------------------------------------------------


def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed next to this checkout: its /opt prefix is our virtualenv."""
    unit = tmp_path / UNIT.name
    venv = Path(sys.executable).parent.parent
    unit.write_text(UNIT.read_text().replace("/opt/growpanel-gateway", str(venv)))
    return unit


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    program = require("systemd-analyze", "systemd")
    unit = installed_unit(tmp_path)
    result = subprocess.run(
        [program, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    about_ours = [
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    ]
    assert result.returncode == 0 and about_ours == [], result.stdout + result.stderr

    # The verifier itself must notice a mistake, or the check above proves nothing.
    broken = tmp_path / "broken" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    result = subprocess.run(
        [program, "verify", str(broken)], capture_output=True, text=True, timeout=60
    )
    assert "restart specifier" in result.stdout + result.stderr


def test_systemd_unit_commands_run(tmp_path: Path, database_url: str) -> None:
    """ExecStartPre (migrate) and ExecStart's command line, as the unit spells them."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(installed_unit(tmp_path).read_text())
    service = parser["Service"]
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "GATEWAY_CONFIG": str(REPO_ROOT / "config.yaml"),
    }
    assert service["Environment"] == "GATEWAY_CONFIG=/etc/growpanel-gateway/config.yaml"
    migrate = subprocess.run(
        shlex.split(service["ExecStartPre"]), env=env, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 0, migrate.stderr
    assert migrate.stdout.strip() == "migrations: up to date"
    serve = shlex.split(service["ExecStart"])
    assert serve[1:] == ["serve", "--workers", "2"]
    help_text = subprocess.run(
        [*serve, "--help"], env=env, capture_output=True, text=True, timeout=60
    )
    assert help_text.returncode == 0 and "--workers" in help_text.stdout
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # reloads TLS files


# -- Kubernetes ---------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> resource, from every file in deploy/kubernetes."""
    out = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            out[document["kind"]] = document
    return out


def test_kubernetes_manifests_pass_the_api_schemas() -> None:
    resources = manifests()
    assert set(resources) == {
        "ConfigMap",
        "Deployment",
        "Job",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    for resource in resources.values():
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    # And the validator does refuse what the API would.
    broken = copy.deepcopy(resources["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kubernetes_probes_ports_and_policies_point_where_the_gateway_answers() -> None:
    resources = manifests()
    deployment, job = resources["Deployment"], resources["Job"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"proxy": 8080, "admin": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/_gateway/ready", "port": "proxy"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 30 + 5  # shutdown timeout + preStop

    # The config the ConfigMap carries is one the gateway accepts, on those ports.
    config_text = resources["ConfigMap"]["data"]["config.yaml"]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"k8s-config-{os.getpid()}.yaml"
    path.write_text(config_text)
    try:
        config = load_config(path, {})
    finally:
        path.unlink()
    assert (config.proxy.port, config.admin.port) == (8080, 8081)
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"] == ["--config", f"{mount}/config.yaml", "serve"]

    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["image"] == container["image"]
    assert migrate["args"][-1] == "migrate"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = resources["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["proxy"]  # no admin port
    pdb = resources["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < deployment["spec"]["replicas"]

    policy = resources["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    for rule in policy["ingress"]:
        if any(p["port"] == 8081 for p in rule["ports"]):
            assert rule.get("from"), "the admin port must not be open to every peer"


# -- packaging and the image --------------------------------------------------------------


def test_installed_package_carries_migrations_and_the_web_page(tmp_path: Path) -> None:
    """A non-editable install (systemd, the image) finds migrations/ beside gateway/."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "gateway", "admin", "migrations"):
        copy_to = source / name
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, copy_to, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy_to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO_ROOT / name, copy_to)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in (REPO_ROOT / "migrations").glob("*.sql"):
        assert f"migrations/{sql.name}" in names
    assert "admin/static/index.html" in names and "gateway/py.typed" in names
    assert "admin.static" not in built.stderr  # setuptools' warning about the page's files


def containerfile_stages() -> list[list[str]]:
    """The Containerfile's instructions (continuations joined), split into stages."""
    text = (REPO_ROOT / "Containerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    stages: list[list[str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_containerfile_is_multi_stage_non_root_compiler_free_and_health_checked() -> None:
    stages = containerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    joined = "\n".join(final)
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(line.upper().startswith("HEALTHCHECK ") and "/healthz" in line for line in final)
    for compiler in ("gcc", "build-essential", "python3-dev", "clang", "make "):
        assert compiler not in joined, f"{compiler} in the final image"
    assert any("COPY --from=" in line for line in final)


IMAGE = "localhost/growpanel-gateway:test"
LOCAL_BASE = "localhost/growpanel-gateway-base:bookworm"


def local_base(podman: str, tmp_path: Path) -> str:
    """A base image made from Debian's packages (no registry needed), kept for next time."""
    if subprocess.run([podman, "image", "exists", LOCAL_BASE]).returncode == 0:
        return LOCAL_BASE
    mmdebstrap = require("mmdebstrap", "mmdebstrap")
    rootfs = tmp_path / "rootfs.tar"
    made = subprocess.run(
        [
            mmdebstrap,
            "--variant=apt",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    imported = subprocess.run([podman, "import", str(rootfs), LOCAL_BASE], capture_output=True)
    assert imported.returncode == 0, imported.stderr
    rootfs.unlink()
    return LOCAL_BASE


@pytest.mark.skipif(
    os.environ.get("GATEWAY_TEST_IMAGE") != "1",
    reason="builds the container image: set GATEWAY_TEST_IMAGE=1 (podman; BASE=... or mmdebstrap)",
)
async def test_image_builds_and_its_gateway_serves(
    tmp_path: Path, database_url: str, upstream: TestServer, seed: Seed
) -> None:
    """`make image`, then `gateway serve` from inside the image against the test Postgres,
    run through `podman image mount` and chroot (starting containers is not possible on
    every build machine)."""
    podman = require("podman", "podman")
    base = os.environ.get("BASE") or local_base(podman, tmp_path)
    build = subprocess.run(
        ["make", "image", f"IMAGE={IMAGE}", f"BASE={base}", "IMAGE_BUILD_FLAGS=--isolation chroot"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    inspect = subprocess.run(
        [podman, "image", "inspect", IMAGE, "--format", "{{.Config.User}} {{.Config.Healthcheck}}"],
        capture_output=True,
        text=True,
    )
    assert inspect.stdout.startswith("10001:10001 ") and "/healthz" in inspect.stdout
    mounted = subprocess.run([podman, "image", "mount", IMAGE], capture_output=True, text=True)
    assert mounted.returncode == 0, mounted.stderr
    root = Path(mounted.stdout.strip())
    chroot = [
        require("chroot", "coreutils"),
        "--userspec=10001:10001",
        str(root),
        "/opt/growpanel-gateway/bin/gateway",
    ]
    try:
        for tool in ("gcc", "cc", "make", "g++"):
            assert not (root / "usr/bin" / tool).exists(), f"{tool} in the final image"
        helped = subprocess.run([*chroot, "--help"], capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
        proxy_port, admin_port = free_port(), free_port()
        env = {
            "PATH": "/opt/growpanel-gateway/bin:/usr/bin:/bin",
            "GATEWAY_CONFIG": "/etc/growpanel-gateway/config.yaml",
            "DATABASE_URL": database_url,
            "GATEWAY__PROXY__UPSTREAM": str(upstream.make_url("")).rstrip("/"),
            "GATEWAY__PROXY__PORT": str(proxy_port),
            "GATEWAY__ADMIN__PORT": str(admin_port),
        }
        log_path = tmp_path / "image-serve.log"
        with open(log_path, "wb") as log:
            serving = subprocess.Popen(
                [*chroot, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            key = await seed.key()

            async def answers() -> bool:
                assert serving.poll() is None, log_path.read_text()
                try:
                    async with aiohttp.ClientSession() as session:
                        async with session.get(
                            f"http://127.0.0.1:{proxy_port}/v1/customers",
                            headers={"Authorization": f"Bearer {key.key}"},
                        ) as response:
                            return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(answers, timeout=60, interval=0.2)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{admin_port}/healthz") as response:
                    assert response.status == 200
            serving.send_signal(signal.SIGTERM)
            assert serving.wait(60) == 0, log_path.read_text()
        finally:
            if serving.poll() is None:
                serving.kill()
                serving.wait()
    finally:
        subprocess.run([podman, "image", "unmount", IMAGE], capture_output=True)

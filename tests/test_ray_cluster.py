"""The hand-started cluster of docs/tutorials/ray.md, on this machine: `ray start --head`, `ray start --address
HEAD` (a second raylet), token authentication as Ray 2.59+ turns it on, then `segcls-infer ... --ray auto`.

With RAY_AUTH_MODE=token and the head's token given to every process, the cohort runs and its masks equal the
local run's; without the token, the join is refused in one line that names authentication.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _runtime_models import exported_onnx, tissue_image
from PIL import Image

pytest.importorskip("ray")
BIN = Path(sys.executable).parent
FAST = ["--tile", "128", "--overlap", "16", "--batch", "1", "--slide-mpp", "2.0", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pixels(path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [page.asarray() for page in tif.pages]


@pytest.fixture
def cluster(tmp_path):
    """(address, environment with the token): a head and one more raylet, 1 CPU each, token auth on."""
    home = tmp_path / "home"  # no ~/.ray/auth_token of the machine's: the token is only where we put it
    home.mkdir()
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = Path("/tmp") / f"segcls-ray-{port}"  # short: Ray's socket paths must fit 107 bytes
    started = []

    def start(*args: str) -> None:
        command = [str(BIN / "ray"), "start", "--num-cpus", "1", "--block", "--disable-usage-stats", *args]
        started.append(subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))  # fmt: skip

    try:
        start("--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp))
        _wait_for(address, env, nodes=1)
        start("--address", address)
        _wait_for(address, env, nodes=2)
        yield address, env
    finally:
        for process in reversed(started):  # `ray start --block` takes its Ray processes down with it
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            process.wait(60)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for(address: str, env: dict, nodes: int, timeout: float = 120) -> None:
    script = f"import ray; ray.init(address='{address}'); print(len([n for n in ray.nodes() if n['Alive']]))"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0 and r.stdout.strip() == str(nodes):
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not come up with {nodes} nodes: {r.stderr[-500:]}")


def test_a_hand_started_cluster_with_token_auth_runs_a_cohort(tmp_path, tmp_path_factory, cluster):
    address, env = cluster
    model = exported_onnx(tmp_path_factory)
    slides = []
    for seed in range(3):
        slides.append(tmp_path / f"s{seed}.png")
        Image.fromarray(tissue_image(256, 384, seed=seed)).save(slides[-1])
    infer = [str(BIN / "segcls-infer"), *map(str, slides), "--model", str(model), *FAST]

    local = subprocess.run([*infer, "-o", str(tmp_path / "local")], capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    joined = {**env, "RAY_ADDRESS": address}
    r = subprocess.run([*infer, "-o", str(tmp_path / "ray"), "--ray", "auto"], env=joined, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 slides: 3 done" in r.stdout
    for slide in slides:
        a, b = (
            pixels(tmp_path / "ray" / f"{slide.stem}.mask.tif"),
            pixels(tmp_path / "local" / f"{slide.stem}.mask.tif"),
        )
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    no_token = {k: v for k, v in joined.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    r = subprocess.run([*infer, "-o", str(tmp_path / "refused"), "--ray", address], env=no_token,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: cannot join the Ray cluster at {address}: it uses token authentication"), last
    assert "RAY_AUTH_MODE=token" in last and "Traceback" not in r.stderr

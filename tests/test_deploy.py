"""Deployment: the address a Space gives the app, the automatic device, ZeroGPU, the Space header,
and ``pip install`` (a wheel whose ``infd`` command works from any folder)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import types
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from setuptools import find_packages

from app import gpu
from app.cli import env_address, parse_args
from app.context import Limits
from infd_core.pipeline import pick_device, resolve_device

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env(**extra: str) -> dict[str, str]:
    """This environment, offline, without PYTHONPATH (a child must not see the repository by accident)
    and without INFD_MODEL (children use the default model)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "INFD_MODEL")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def _auto() -> str:
    """What ``--device auto`` picks on this machine."""
    return pick_device(torch.cuda.is_available(), torch.backends.mps.is_available())


# --- address ------------------------------------------------------------------------------------
def test_address_from_gradio_environment():
    assert env_address({}) == ("127.0.0.1", 7860)
    assert env_address({"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}) == ("0.0.0.0", 7861)
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT"):
        env_address({"GRADIO_SERVER_PORT": "http"})


def test_flags_override_the_environment():
    environ = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861", "INFD_SCORER": "offline"}
    args = parse_args([], environ)
    assert (args.host, args.port, args.device, args.scorer) == ("0.0.0.0", 7861, "auto", "offline")
    args = parse_args(["--host", "127.0.0.1", "--port", "9000", "--scorer", "auto"], environ)
    assert (args.host, args.port, args.scorer) == ("127.0.0.1", 9000, "auto")


def test_limit_flags(capsys):
    args = parse_args([], {})
    assert (args.max_export, args.max_canvas_side) == (Limits.max_export_pixels, Limits.max_canvas_side)
    args = parse_args(["--max-export", "4096x2048", "--max-canvas-side", "8192"], {})
    assert (args.max_export, args.max_canvas_side) == (4096 * 2048, 8192)
    for bad in (["--max-canvas-side", "8"], ["--max-canvas-side", "big"], ["--max-export", "0x5"]):
        with pytest.raises(SystemExit):
            parse_args(bad, {})
        assert "argument --max-" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, proc: subprocess.Popen, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} within {timeout} s")


def test_app_listens_where_the_space_says(tmp_path):
    """``python app.py`` with a Space's GRADIO_SERVER_NAME/PORT serves on that port (reached on loopback)."""
    port = _free_port()
    env = _env(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port))
    log = tmp_path / "app.log"
    with log.open("w+") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
        try:
            page = _wait_for_http(f"http://127.0.0.1:{port}/", proc, timeout=180)
            osd = _wait_for_http(f"http://127.0.0.1:{port}/infd/osd/openseadragon.min.js", proc, timeout=10)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert b"<html" in page.lower() and len(osd) > 100_000
    banner = log.read_text()
    assert f"infd on http://0.0.0.0:{port}" in banner and f", {_auto()}, " in banner, banner  # cpu on CI


# --- device -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cuda, mps, want", [(True, True, "cuda"), (True, False, "cuda"),
                                              (False, True, "mps"), (False, False, "cpu")])
def test_pick_device_prefers_cuda_then_mps(cuda, mps, want):
    assert pick_device(cuda, mps) == want


def test_auto_device_is_cpu_here():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("cuda, mps, want", [(True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_follows_availability(monkeypatch, cuda, mps, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == want
    assert resolve_device("cpu").type == "cpu"  # an explicit device is kept


# --- ZeroGPU ----------------------------------------------------------------------------------
def test_on_gpu_without_spaces_calls_the_job(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert gpu.spaces_module() is None
    assert gpu.on_gpu(lambda: 42) == 42


def test_on_gpu_runs_the_job_inside_spaces_gpu(monkeypatch):
    calls = []

    def GPU(duration=None):  # the shape of spaces.GPU(duration=...)(fn)
        def decorate(fn):
            def inside(*args):
                calls.append(("inside", duration))
                return fn(*args)
            return inside
        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    assert gpu.on_gpu(lambda: calls.append("job") or 7, duration=30) == 7
    assert calls == [("inside", 30), "job"]


# --- Space header -----------------------------------------------------------------------------
def space_header() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must start with the Space configuration header"
    header = yaml.safe_load(text[4:text.index("\n---\n", 4)])
    assert isinstance(header, dict)
    return header


def test_space_header_names_an_app_file_and_the_pinned_gradio():
    header = space_header()
    assert header["sdk"] == "gradio"
    assert (ROOT / header["app_file"]).is_file()
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    assert str(header["sdk_version"]) == pins["gradio"]
    assert str(header["python_version"]) == f"{sys.version_info.major}.{sys.version_info.minor}"


# --- pip install --------------------------------------------------------------------------------
def test_pyproject_lists_every_package():
    tool = PYPROJECT["tool"]["setuptools"]
    found = set(find_packages(ROOT, include=["infd_core", "infd_core.*", "app", "app.*", "training", "training.*"]))
    assert found == set(tool["packages"]) - set(tool["package-dir"])
    assert PYPROJECT["project"]["scripts"] == {"infd": "infd_core.__main__:main", "infd-app": "app.cli:main"}


def _copy_sources(dest: Path) -> None:
    """What the build reads: pyproject, README, requirements and the folders of the packages."""
    tool = PYPROJECT["tool"]["setuptools"]
    folders = {p.split(".")[0] for p in tool["packages"] if p not in tool["package-dir"]} | set(tool["package-dir"].values())
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy2(ROOT / name, dest / name)
    for name in folders:
        shutil.copytree(ROOT / name, dest / name, ignore=skip)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.mark.slow
def test_wheel_installs_offline_and_runs_from_any_folder():
    """Build the wheel, install it (no dependencies, no index) into a fresh venv that sees this
    venv's packages, then run ``infd info`` and ``infd sample`` in an empty folder."""
    with tempfile.TemporaryDirectory(prefix="infd-wheel-") as tmp:
        tmp = Path(tmp)
        src, dist, venv, work = (tmp / n for n in ("src", "dist", "venv", "work"))
        for d in (src, dist, work):
            d.mkdir()
        env = _env()
        _copy_sources(src)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", str(dist), str(src)], tmp, env)
        wheel, = dist.glob("infd-*.whl")
        assert wheel.stat().st_size < 64 << 20

        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         tmp, env).strip())
        (site / "project_venv.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env)

        where = _run([str(venv / "bin" / "python"), "-c",
                      "import infd_core, app.ui; from infd_core.pipeline import assets_dir, default_model_dir;"
                      "print(infd_core.__file__); print(default_model_dir()); print(assets_dir());"
                      "assert (assets_dir() / 'openseadragon' / 'openseadragon.min.js').is_file();"
                      "assert (app.ui.STATIC / 'viewer.js').is_file()"], work, env).split()
        assert all(Path(p).is_relative_to(site) for p in where), where

        info = json.loads(_run([str(venv / "bin" / "infd"), "info"], work, env))
        assert info["device"] == _auto() and info["params"]["unet"] > 0, info  # the shipped model; cpu on CI
        print("infd info:", json.dumps(info))
        _run([str(venv / "bin" / "infd"), "sample", "--size", "512", "--out", "x.png", "--quiet"], work, env)
        assert Image.open(work / "x.png").size == (512, 512) and (work / "x.latent.safetensors").is_file()

        res = subprocess.run([str(venv / "bin" / "infd"), "info"], cwd=work, capture_output=True, text=True,
                             env={**env, "INFD_MODEL": str(tmp / "no-such-model")}, timeout=300)
        assert res.returncode == 2 and "no-such-model" in res.stderr  # INFD_MODEL still overrides
        assert "--device" in _run([str(venv / "bin" / "infd-app"), "--help"], work, env)

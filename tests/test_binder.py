"""binder/: the Binder (repo2docker) configuration installs nbdurable and its kernelspec.

``binder/postBuild`` runs, as Binder runs it, against a copy of the repository, in a throwaway virtual
environment created with ``--system-site-packages`` that also sees the packages of the environment running
the tests (a virtualenv's own are not the base interpreter's "system" ones): the dependencies are already
there, so pip installs only nbdurable (its build backend comes from the package index or pip's cache, in an
isolated build environment); the kernelspec must land in that environment's prefix and start a kernel with
the extension loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

from helpers import clean_env
from kernels import Kernel

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def _env(prefix: Path) -> dict[str, str]:
    """The venv's PATH first (postBuild calls plain `python`), no NBDURABLE_*/JUPYTER_* of the caller."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("JUPYTER_", "PYTHON")) and k != "VIRTUAL_ENV"}
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(prefix)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _see_running_environment(prefix: Path) -> None:
    """Make the packages of the interpreter running the tests visible in the venv at ``prefix``.

    A venv is always made from the base interpreter, so ``--system-site-packages`` shows the base's packages;
    when the tests run inside a virtualenv, its packages (the dependencies) are not among them, and pip would
    install them all from the index. A ``.pth`` file adds this environment's site directories after the
    venv's own (``addsitedir``: their own ``.pth`` files, editable installs included, are processed too)."""
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
    (purelib / "zz_running_environment.pth").write_text("\n".join(lines) + "\n")


def test_binder_files() -> None:
    postbuild = BINDER / "postBuild"
    assert postbuild.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(postbuild, os.X_OK), "binder/postBuild must be executable"
    requirements = (BINDER / "requirements.txt").read_text()
    assert "jupyterlab" in requirements


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_postbuild_installs_package_and_kernelspec(tmp_path: Path) -> None:
    started = time.monotonic()
    repo = tmp_path / "repo"  # a copy: pip builds in the source tree, which must stay clean
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("nbdurable", "binder"):
        shutil.copytree(REPO / name, repo / name, ignore=ignore)
    prefix = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True, symlinks=True).create(prefix)
    _see_running_environment(prefix)
    python = prefix / "bin" / "python"
    env = _env(prefix)

    build = subprocess.run(["bash", str(repo / "binder" / "postBuild")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=150)
    assert build.returncode == 0, build.stdout + build.stderr
    installed = [line for line in build.stdout.splitlines() if line.startswith("Installing collected packages:")]
    assert installed == ["Installing collected packages: nbdurable"], build.stdout  # the deps came from the system

    # The package is the venv's own copy, not the caller's (editable) one.
    where = subprocess.run([str(python), "-c", "import nbdurable; print(nbdurable.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().is_relative_to(prefix.resolve()), where.stdout

    # The kernelspec is in the venv's prefix, runs the venv's python, loads the extension; Jupyter finds it.
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "nbdurable"
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert Path(spec["argv"][0]).parent == prefix / "bin", spec
    assert spec["argv"][1:5] == ["-m", "ipykernel_launcher", "--ext", "nbdurable"], spec
    # (Not `jupyter kernelspec list`: the venv has no jupyter-* scripts of its own, so `jupyter` would run the
    # system's, with the system's prefix.)
    listed = subprocess.run([str(python), "-c", "import json; from jupyter_client.kernelspec import KernelSpecManager; "
                             "print(json.dumps(KernelSpecManager().find_kernel_specs()))"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    specs = json.loads(listed.stdout)
    assert Path(specs.get("nbdurable", "")).resolve() == spec_dir.resolve(), specs

    kernel = Kernel({"NBDURABLE_STORE": str(tmp_path / "store"), "NBDURABLE_NOTEBOOK": "binder-check"}, tmp_path,
                    kernel_name="nbdurable", kernel_dirs=[str(spec_dir.parent)])
    try:
        reply, outputs = kernel.execute(
            "import sys, nbdurable\nprint(sys.prefix, 'nbdurable' in get_ipython().extension_manager.loaded)")
    finally:
        kernel.close()
    text = "".join(o.get("text", "") for o in outputs)
    assert reply["status"] == "ok", outputs
    assert text.split() == [str(prefix), "True"], text
    sys.stderr.write(f"[binder] postBuild check took {time.monotonic() - started:.1f}s\n")

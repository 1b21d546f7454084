"""The Docker backend for environments, used when a Docker engine is reachable (``--sandbox docker``): the
environment becomes an image built from a generated Dockerfile (the repository, its dependencies, pytest,
coverage and the results plugin), and test runs (baseline, validation, reward) run in containers with the network
disabled and only the work tree mounted writable. Talks to the engine through the Docker SDK for Python. The
agent's bash session still runs in the local sandbox.

Without an engine (or without the ``docker`` package) ``engine()`` returns None with the reason, and callers say
so in one line; the local sandbox needs neither.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from opencwm.forage.testrun import PLUGIN, TEST_EXTRAS, ForageError, TestRun, read_results

WORK = "/work"


def engine():
    """(client, None) when a Docker engine answers, else (None, why)."""
    try:
        import docker
    except ImportError:
        return None, "the docker package is not installed (pip install docker)"
    try:
        client = docker.from_env(timeout=10)
        client.ping()
        return client, None
    except Exception as exc:  # no socket, permission denied, engine down
        return None, f"no Docker engine reachable ({type(exc).__name__})"


def dockerfile(env) -> str:
    """The image of an environment: its Python, the baseline repository at /work/repo, the dependencies (the
    package itself uninstalled so tests import the work tree), pytest, coverage and the results plugin."""
    version = env.info.get("python_version") or "3.11"
    extras = ",".join(TEST_EXTRAS)
    distribution = env.info.get("distribution")
    uninstall = f" && pip uninstall -y {distribution}" if distribution else ""
    return "\n".join([
        f"FROM python:{'.'.join(version.split('.')[:2])}-slim",
        "RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*",
        f"COPY repo {WORK}/repo",
        f"COPY plugin {WORK}/plugin",
        f'RUN pip install --no-cache-dir "{WORK}/repo[{extras}]" pytest coverage{uninstall}',
        f"ENV PYTHONPATH={WORK}/repo/src:{WORK}/repo:{WORK}/plugin PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0",
        f"WORKDIR {WORK}/repo",
        "",
    ])


def build_image(env, client) -> str:
    """Build (or reuse) the environment's image; returns its tag."""
    tag = f"opencwm-env:{env.info['key'].lower()}"
    try:
        client.images.get(tag)
        return tag
    except Exception:
        pass
    context = env.path / "docker"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir()
    shutil.copytree(env.repo, context / "repo", ignore=shutil.ignore_patterns(".git"))
    shutil.copytree(env.path / "plugin", context / "plugin")
    (context / "Dockerfile").write_text(dockerfile(env))
    try:
        client.images.build(path=str(context), tag=tag, rm=True)
    except Exception as exc:
        raise ForageError(f"docker build failed: {str(exc).splitlines()[0][:300]}") from None
    return tag


def run_tests(env, tree: Path, tests: list[str] | None, args: list[str], environment: dict[str, str], *,
              coverage: bool = False, timeout: float = 900, max_output: int = 20_000) -> TestRun:
    """Run the tests of ``tree`` (mounted over the image's repository) in a container without network; ``args``:
    pytest's arguments, ``environment``: the plugin's switches."""
    client, why = engine()
    if client is None:
        raise ForageError(f"--sandbox docker: {why}")
    image = build_image(env, client)
    results = tree.parent / f"results-{uuid.uuid4().hex[:8]}.json"
    argv = ["python", "-m", "pytest", "-p", PLUGIN, *args]
    environment = {**environment, "OPENCWM_FORAGE_RESULTS": f"{WORK}/out/{results.name}"}
    if coverage:
        environment["OPENCWM_FORAGE_COVERAGE"] = f"{WORK}/repo"
    start = time.monotonic()
    with env.select_tests(tree, tests) as selection:
        if selection is not None:
            environment["OPENCWM_FORAGE_SELECT"] = f"{WORK}/out/{selection.name}"
        container = client.containers.run(
            image, argv, detach=True, network_disabled=True, working_dir=f"{WORK}/repo",
            environment=environment,
            volumes={str(tree): {"bind": f"{WORK}/repo", "mode": "rw"},
                     str(tree.parent): {"bind": f"{WORK}/out", "mode": "rw"}})
        status = "ok"
        try:
            container.wait(timeout=timeout)
        except Exception:
            status = "timeout"
        finally:
            output = container.logs().decode("utf-8", "replace")[-max_output:]
            container.remove(force=True)
    return read_results(results, status, output, round(time.monotonic() - start, 3))

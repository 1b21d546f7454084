"""The Docker backend on a real engine (make test-slow). The engine is the one that answers, else one the test
set-up starts (as root, with Debian's docker.io installed: ``dockerd --storage-driver=vfs --iptables=false
--bridge=none``) and stops at the end; without either the tests skip with the reason. An environment of a real
package built with ``--sandbox docker`` gives the local sandbox's baseline, coverage map, flaky set and mutation
verdicts; agent commands in a container have no network and write only the work tree; a hung command or test run is
killed with its container; an episode plays and is graded in containers."""

from __future__ import annotations

import subprocess

import pytest

from opencwm.forage.build import build_environment
from opencwm.forage.docker import DockerShell
from opencwm.forage.environment import Environment
from opencwm.forage.policies import InverseMutationPolicy
from opencwm.forage.tasks import mutate, read_tasks
from opencwm.forage.trajectory import run_episodes

PACKAGE = "inflection==0.5.1"
COMPARED = ("tests", "flaky", "passing", "coverage", "executed_lines", "order_dependent_lines")


def containers(prefix: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "-a", "--filter", f"name={prefix}", "--format", "{{.Names}}"],
                            capture_output=True, text=True, check=True)
    return listed.stdout.split()


@pytest.fixture(scope="module")
def environments(docker_engine, tmp_path_factory) -> tuple[Environment, Environment]:
    local = build_environment(PACKAGE, tmp_path_factory.mktemp("local"))
    if not local.ok and "could not download" in local.info.get("error", ""):
        pytest.skip(f"PyPI unreachable: {local.info['error']}")
    assert local.ok, local.info.get("error")
    contained = build_environment(PACKAGE, tmp_path_factory.mktemp("docker"), backend="docker")
    assert contained.ok, contained.info.get("error")
    print(f"{PACKAGE}: built in {local.info['build_seconds']} s locally, {contained.info['build_seconds']} s with "
          f"Docker; baseline run {local.info['test_seconds']} s vs {contained.info['test_seconds']} s")
    return local, contained


@pytest.mark.slow
def test_an_environment_built_in_docker_equals_the_local_one(environments, tmp_path):
    local, contained = environments
    for key in COMPARED:
        assert contained.info[key] == local.info[key], key
    assert len(local.info["tests"]) > 10 and local.info["coverage"]
    mutate(local, tmp_path / "local", max_candidates=12, workers=2)
    mutate(contained, tmp_path / "docker", max_candidates=12, workers=2, backend="docker")
    verdicts = [{row["item"]: (row["verdict"], row["FAIL_TO_PASS"]) for row in read_all(tmp_path / name)}
                for name in ("local", "docker")]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == 12
    assert any(verdict == "validated" for verdict, _ in verdicts[0].values())
    tasks = read_tasks(tmp_path / "docker")
    summary = run_episodes(tasks[:2], InverseMutationPolicy, tmp_path / "traj", backend="docker")
    assert summary["solved"] == summary["episodes"] == 2  # played and graded in containers


def read_all(directory):
    from opencwm.shards import read_rows

    return list(read_rows(directory))


@pytest.mark.slow
def test_agent_commands_in_a_container_write_only_the_work_tree_and_reach_no_network(environments, tmp_path):
    _, env = environments
    tree = env.checkout(parent=tmp_path)
    try:
        with DockerShell(env, tree, environment=env.sandbox_env(tree)) as shell:
            assert shell.run("python -c 'import inflection; print(inflection.camelize(\"a_b\"))'").output.strip() \
                == "AB"  # the work tree's package, on the environment's interpreter
            reach = shell.run("python -c \"import socket; socket.create_connection(('10.255.255.1', 80), "
                              "timeout=5)\"", timeout=60)
            assert reach.returncode != 0 and "Network is unreachable" in reach.output, reach.output
            assert shell.run("touch written && echo ok").output.strip() == "ok" and (tree / "written").is_file()
            for target in ("/usr/x", "/etc/x", "/root/x", f"{tree}/.git/x", f"{env.venv}/x"):
                assert shell.run(f"touch {target}").returncode != 0, target
            shell.run(f"touch {tree.parent}/beside")  # (in the container's own /tmp, when the tree is under /tmp)
            assert not (tree.parent / "beside").exists()
            assert shell.run("cat /etc/shadow").returncode != 0
            shell.run("cd /tmp && X=5")
            assert shell.run("echo $X $PWD").output.strip() == "5 /tmp"  # one session: state carries over
            hung = shell.run("sleep 1000", timeout=3)
            assert hung.status == "timeout" and not containers("opencwm-shell-")  # killed with its container
            assert shell.run("echo again").output.strip() == "again"  # a fresh container
        assert not containers("opencwm-shell-")
    finally:
        Environment.discard(tree)


@pytest.mark.slow
def test_a_hung_test_run_is_killed_with_its_container(environments, tmp_path):
    _, env = environments
    tree = env.checkout(parent=tmp_path)
    try:
        (tree / "test_hang.py").write_text("import time\n\n\ndef test_hang():\n    time.sleep(1000)\n")
        run = env.run_tests(tree, ["test_hang.py::test_hang"], backend="docker", timeout=10)
        assert run.status == "timeout" and not containers("opencwm-test-")
        done = env.run_tests(tree, env.passing_tests()[:1], backend="docker")
        assert done.status == "ok" and list(done.outcomes.values()) == ["passed"]
    finally:
        Environment.discard(tree)

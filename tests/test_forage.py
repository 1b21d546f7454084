"""The forager on a small repository made for the tests (tests/data/toyrepo): environment, coverage map, mutate-fix
validation checked with the real pytest, the agent loop with its policies (the real ``openai`` client against a
loopback server), sandboxed agent commands, trajectories and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from chat_endpoint import ScriptedChat

from opencwm.chat import decode_messages, format_edit, format_tool_call
from opencwm.data.prompts import trajectory_text as training_text
from opencwm.forage.agent import EpisodeBudget, run_episode
from opencwm.forage.build import build_environment
from opencwm.forage.environment import Environment, git
from opencwm.forage.policies import InverseMutationPolicy, OpenAIPolicy, OraclePolicy, ScriptedPolicy
from opencwm.forage.tasks import mutate, read_tasks
from opencwm.forage.trajectory import read_trajectories, replay, run_episodes
from opencwm.forage.warm_runner import WarmRunner, stamp_mutation

TOY = Path(__file__).parent / "data" / "toyrepo"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Environment:
    built = build_environment(str(TOY), tmp_path_factory.mktemp("envs"))
    assert built.ok, built.info.get("error")
    return built


@pytest.fixture(scope="module")
def tasks(env, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    report = mutate(env, out, workers=2)
    assert report.validated > 0
    return read_tasks(out)


def _real_pytest(tree: Path, tests: list[str]) -> dict[str, bool]:
    """Each test's pass/fail by the real pytest of this interpreter, outside opencwm's sandbox and plugin."""
    outcome = {}
    for test in tests:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=tree,
                                capture_output=True, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                                                 "PYTHONDONTWRITEBYTECODE": "1"})
        outcome[test] = result.returncode == 0
    return outcome


def test_environment_records_every_test_and_the_coverage_map(env, tmp_path):
    copy = shutil.copytree(TOY, tmp_path / "toyrepo")
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=copy, capture_output=True, text=True, env={"PYTHONPATH": str(copy)}).stdout
    truth = {line for line in collected.splitlines() if "::" in line}
    assert set(env.info["tests"]) == truth
    assert env.passing_tests() == sorted(truth) and env.info["flaky"] == []
    coverage = env.info["coverage"]
    assert set(coverage["toycalc/__init__.py::clamp"]) == {t for t in truth if "clamp" in t}
    assert coverage["toycalc/__init__.py::mean"] == [t for t in sorted(truth) if t.endswith("test_mean")]
    assert "toycalc/__init__.py::unused" not in coverage  # no test calls it
    # the package was uninstalled: tests import the work tree's code
    probe = subprocess.run([str(env.venv / "bin" / "python"), "-c", "import toycalc"], capture_output=True)
    assert probe.returncode != 0


def test_environments_are_cached_by_content(env, tmp_path):
    again = build_environment(str(TOY), env.path.parent)
    assert again.path == env.path and again.info["build_seconds"] == env.info["build_seconds"]
    changed = tmp_path / "toyrepo"
    shutil.copytree(TOY, changed)
    (changed / "toycalc" / "__init__.py").write_text((TOY / "toycalc" / "__init__.py").read_text() + "\n# edit\n")
    assert build_environment(str(changed), env.path.parent, rebuild=False).path != env.path


def test_flaky_tests_are_found_and_excluded(tmp_path):
    repo = tmp_path / "flaky"
    shutil.copytree(TOY, repo)
    (repo / "tests" / "test_flaky.py").write_text(  # passes only after test_sets: in the suite's order, not reversed
        "STATE = []\n\ndef test_sets():\n    STATE.append(1)\n\ndef test_depends_on_the_order():\n"
        "    assert STATE\n")
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.ok and built.info["flaky"] == ["tests/test_flaky.py::test_depends_on_the_order"]
    assert "tests/test_flaky.py::test_depends_on_the_order" not in built.passing_tests()
    assert "tests/test_flaky.py::test_sets" in built.passing_tests()


def test_a_suite_for_an_older_pytest_falls_back_to_it(env, tmp_path):
    repo = tmp_path / "old"
    shutil.copytree(TOY, repo)
    # pytest 9 refuses this hook signature (the ``path`` argument is gone); pytest 8 only warns.
    (repo / "conftest.py").write_text("def pytest_ignore_collect(path, config):\n    return None\n")
    newest = env.info["pytest"]
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.ok, built.info.get("error")
    assert int(built.info["pytest"].split(".")[0]) < int(newest.split(".")[0])
    assert built.passing_tests() == env.passing_tests()


def test_code_run_while_collecting_a_module_counts_for_its_tests(tmp_path):
    repo = tmp_path / "collect"
    shutil.copytree(TOY, repo)
    (repo / "tests" / "test_table.py").write_text(
        "from toycalc import mean\n\nTABLE = [mean([v, v + 2]) for v in range(3)]\n\n"
        "def test_table():\n    assert TABLE == [1, 2, 3]\n\ndef test_other():\n    assert True\n")
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.ok, built.info.get("error")
    # mean runs in test_mean, and while tests/test_table.py is imported: its tests depend on it too.
    assert built.tests_for("toycalc/__init__.py::mean") == [
        "tests/test_table.py::test_other", "tests/test_table.py::test_table", "tests/test_toycalc.py::test_mean"]
    assert built.tests_for("toycalc/__init__.py::words") == ["tests/test_toycalc.py::test_words"]


def test_import_time_code_counts_for_every_test(tmp_path):
    """toolz fills a registry when it is imported, i.e. while the first test module that imports it is collected;
    every test module reads it: a bug there is every test's, and the covering tests alone give the whole suite's
    verdict."""
    from opencwm.forage.tasks import candidates, validate

    repo = tmp_path / "eager"
    (repo / "eagerreg").mkdir(parents=True)
    (repo / "eagerreg" / "__init__.py").write_text(LAZY_PACKAGE + "\n\n_build()\n")
    (repo / "pyproject.toml").write_text((TOY / "pyproject.toml").read_text().replace("toycalc", "eagerreg"))
    for name, text in LAZY_TESTS.items():
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(text.replace("lazyreg", "eagerreg"))
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.ok, built.info.get("error")
    assert built.tests_for("eagerreg/__init__.py::_build") == built.passing_tests()
    assert built.tests_for("eagerreg/__init__.py::clamp") == ["tests/test_a.py::test_clamp"]
    tree = built.checkout(parent=tmp_path / "work")
    verdicts = []
    for mutation, tests in candidates(built):
        if mutation.function == "_build":
            selected, whole = (validate(built, tree, mutation, t, confirm="never") for t in (tests, None))
            assert selected["FAIL_TO_PASS"] == whole["FAIL_TO_PASS"], mutation.description
            verdicts.append(selected["verdict"])
    assert "validated" in verdicts


LAZY_PACKAGE = """\
_REGISTRY = {}


def _build():
    _REGISTRY["factor"] = 2
    _REGISTRY["name"] = "double"


def lookup(name):
    if not _REGISTRY:
        _build()
    return _REGISTRY[name]


def clamp(x):
    if x > 100:
        return x - 1
    return x
"""
LAZY_TESTS = {
    "tests/test_a.py": "from lazyreg import clamp, lookup\n\ndef test_lookup():\n    assert lookup('name')\n\n"
                       "def test_clamp():\n    assert clamp(3) == 3\n",
    "tests/test_b.py": "from lazyreg import lookup\n\ndef test_double():\n    assert 3 * lookup('factor') == 6\n",
}


def test_verdicts_are_the_whole_suites(tmp_path):
    """Covering tests decide only what they can: ``_build`` runs in test_a (which fills the registry) but test_b
    depends on what it built without running it, so a bug there is caught by the whole suite alone; a mutated
    statement the suite never runs (``x - 1``) is rejected without a run. Each verdict equals the whole suite's."""
    from opencwm.forage.tasks import candidates, validate

    repo = tmp_path / "lazyreg"
    (repo / "lazyreg").mkdir(parents=True)
    (repo / "lazyreg" / "__init__.py").write_text(LAZY_PACKAGE)
    (repo / "pyproject.toml").write_text((TOY / "pyproject.toml").read_text().replace("toycalc", "lazyreg"))
    for name, text in LAZY_TESTS.items():
        (repo / name).parent.mkdir(exist_ok=True)
        (repo / name).write_text(text)
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.ok, built.info.get("error")
    assert built.tests_for("lazyreg/__init__.py::_build") == ["tests/test_a.py::test_lookup"]
    # run in reverse order, test_b fills the registry: _build's lines (5, 6) and the branch that calls it (11)
    # are order-dependent, clamp's are not
    assert built.info["order_dependent_lines"] == {"lazyreg/__init__.py": [5, 6, 11]}
    chosen = candidates(built)
    tree = built.checkout(parent=tmp_path / "work")
    rows, unconfirmed = {}, {}
    for mutation, tests in chosen:
        selected, whole = (validate(built, tree, mutation, t) for t in (tests, None))
        assert selected["validated"] == whole["validated"], (mutation.description, selected, whole)
        assert selected["FAIL_TO_PASS"] == whole["FAIL_TO_PASS"]
        rows[mutation.description] = selected
        unconfirmed[mutation.description] = validate(built, tree, mutation, tests, confirm="never")["verdict"]
    # without the whole suite's word, a bug in _build that only test_b sees is lost
    assert any(rows[d]["function"] == "_build" and rows[d]["verdict"] == "validated" != verdict
               for d, verdict in unconfirmed.items())
    by_function = {}
    for row in rows.values():
        by_function.setdefault(row["function"], set()).add(row["verdict"])
    assert "validated" in by_function["_build"]  # a bug only test_b sees
    unreached = [row for row in rows.values() if row["function"] == "clamp" and row["line"] == 17]
    assert unreached and all(row["verdict"] == "not_executed" for row in unreached)


def test_a_build_failure_is_a_recorded_status(tmp_path):
    repo = tmp_path / "broken"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\nname = 'broken'\nversion = '1'\ndependencies = ['-nonsense-']\n")
    built = build_environment(str(repo), tmp_path / "envs")
    assert built.info["status"] == "build_failed" and built.info["error"]
    assert json.loads((built.path / "env.json").read_text())["status"] == "build_failed"


def test_validated_mutations_fail_and_pass_under_the_real_pytest(env, tasks, tmp_path):
    assert {t["operator"] for t in tasks} >= {"compare", "arithmetic", "remove_statement", "return_value"}
    for task in tasks[:8]:
        tree = tmp_path / task["instance_id"]
        subprocess.run(["git", "clone", "-q", str(env.repo), str(tree)], check=True)
        git(tree, "fetch", "-q", "origin", f"refs/opencwm/tasks/{task['instance_id']}")
        git(tree, "checkout", "-q", task["base_commit"])
        fail, keep = json.loads(task["FAIL_TO_PASS"]), json.loads(task["PASS_TO_PASS"])
        before = _real_pytest(tree, fail + keep)
        assert not any(before[t] for t in fail) and all(before[t] for t in keep)
        subprocess.run(["git", "-C", str(tree), "apply", "-"], input=task["patch"], text=True, check=True)
        assert all(_real_pytest(tree, fail + keep).values())
        fixed_lines = [line[1:].strip() for line in task["patch"].splitlines()
                       if line.startswith("+") and not line.startswith("+++")]
        assert fixed_lines and not any(line in task["problem_statement"] for line in fixed_lines if line)


def test_inverse_mutation_solves_every_task_and_empty_or_unrelated_edits_solve_none(env, tasks, tmp_path):
    inverse = run_episodes(tasks, InverseMutationPolicy, tmp_path / "inverse", workers=2)
    assert inverse["episodes"] == len(tasks) and inverse["solved"] == len(tasks)

    def empty(task):
        policy = ScriptedPolicy([])
        policy.name = "empty"
        return policy

    assert run_episodes(tasks, empty, tmp_path / "empty", workers=2)["solved"] == 0

    def unrelated(task):
        policy = ScriptedPolicy([format_tool_call("edit", format_edit("pyproject.toml", [("0.1.0", "0.1.1")]))])
        policy.name = "unrelated"
        return policy

    assert run_episodes(tasks, unrelated, tmp_path / "unrelated", workers=2)["solved"] == 0
    rows = read_trajectories(tmp_path / "unrelated")
    assert all("pyproject.toml" in row["diff"] for row in rows)


def test_oracle_solves_and_the_trajectory_becomes_training_text(env, tasks, tmp_path):
    summary = run_episodes(tasks[:3], OraclePolicy, tmp_path / "oracle")
    assert summary == {"trajectories": str(tmp_path / "oracle"), "episodes": 3, "solved": 3}
    row = read_trajectories(tmp_path / "oracle")[0]
    messages = json.loads(row["messages"])
    assert decode_messages(training_text(row).removesuffix("<|end_of_text|>")) == messages
    assert [m["role"] for m in messages[:4]] == ["system", "user", "assistant", "tool: bash"]
    assert row["task_id"] in replay(row) and "[tool: bash]" in replay(row)
    # resumable: a second run does nothing new
    assert run_episodes(tasks[:3], OraclePolicy, tmp_path / "oracle")["episodes"] == 3


def test_trajectories_are_a_training_source(env, tasks, tmp_path):
    """A trajectory dataset is read like code and traces: its documents decode to the conversations the agent
    had, and ``opencwm train`` trains on it."""
    from opencwm.data.documents import documents
    from opencwm.tokenizer import Tokenizer

    run_episodes(tasks[:3], OraclePolicy, tmp_path / "oracle")
    rows = read_trajectories(tmp_path / "oracle")
    texts = [m["content"] for row in rows for m in json.loads(row["messages"])]
    tokenizer = Tokenizer.train(texts, vocab_size=400)
    docs = documents(tmp_path / "oracle", tokenizer)
    assert len(docs) == len(rows) == 3
    for doc, row in zip(docs, rows):
        text = tokenizer.decode(doc.tokens)
        assert text.endswith("<|end_of_text|>")
        assert decode_messages(text.removesuffix("<|end_of_text|>")) == json.loads(row["messages"])
    result = subprocess.run([sys.executable, "-m", "opencwm.cli", "train", "--quiet", "--preset", "nano", "--vocab",
                             "400", "--batch-size", "2", "--seq-len", "128", "--steps", "2", "--out",
                             str(tmp_path / "run"), "--data", f"agent={tmp_path / 'oracle'}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 2


def test_warm_test_server_agrees_with_the_real_pytest_across_same_size_rewrites(env):
    """Same-size rewrites of one file within a second must not reuse each other's cached bytecode."""
    tree = env.checkout()
    source = tree / "toycalc" / "__init__.py"
    original = source.read_text()
    rewrites = [original.replace("if value < low:", "if value > low:"),
                original.replace("return total / len(values)", "return total * len(values)"),
                original.replace("return high", "return low ")]
    assert all(len(text) == len(original) and text != original for text in rewrites)
    try:
        with WarmRunner(env, tree) as server:
            for text in [*rewrites, original]:
                Environment.reset(tree, env.base_commit)
                if text != original:
                    source.write_text(text)
                    os.utime(source, (1.7e9, 1.7e9))  # as if all were written within the same second
                    stamp_mutation(source)
                run = server.run(None, timeout=60)
                assert run.status == "ok"
                truth = _real_pytest(tree, sorted(env.info["tests"]))
                assert {t: o == "passed" for t, o in run.outcomes.items()} == truth
                assert all(truth.values()) == (text == original)
            assert not (tree / "toycalc" / "__pycache__").exists()  # bytecode is cached outside the tree
            (tree / "tests" / "test_hang.py").write_text("def test_hang():\n    while True:\n        pass\n")
            hung = server.run(["tests/test_hang.py"], timeout=2)
            assert hung.status == "timeout" and hung.seconds < 10
            (tree / "tests" / "test_escape.py").write_text(
                f"def test_escape():\n    open({str(env.path / 'escaped.txt')!r}, 'w')\n")
            escaped = server.run(["tests/test_escape.py"], timeout=30)
            assert escaped.outcomes == {"tests/test_escape.py::test_escape": "failed"}
            assert not (env.path / "escaped.txt").exists()
            assert server.run(["tests/test_toycalc.py"], timeout=30).status == "ok"
    finally:
        Environment.discard(tree)


def test_chosen_tests_run_in_the_suites_order_warm_and_cold(env):
    """Tests that depend on the suite's order (six's test_lazy) must see it, whatever order they are named in."""
    tree = env.checkout()
    (tree / "tests" / "test_order.py").write_text(
        "SEEN = []\n\ndef test_a():\n    SEEN.append('a')\n    assert SEEN == ['a']\n\n"
        "def test_b():\n    SEEN.append('b')\n\ndef test_c():\n    pass\n")
    named = ["tests/test_order.py::test_b", "tests/test_order.py::test_a"]
    expected = {name: "passed" for name in named}
    try:
        assert env.run_tests(tree, named).outcomes == expected
        with WarmRunner(env, tree) as server:
            assert server.run(named, timeout=60).outcomes == expected
            whole_file = server.run(["tests/test_order.py"], timeout=60).outcomes
            assert set(whole_file) == {*named, "tests/test_order.py::test_c"}
    finally:
        Environment.discard(tree)


def test_the_warm_server_never_preloads_the_package_under_test(tmp_path):
    """An installed pytest plugin that imports the package (as hypothesis imports attrs) must not pin the
    original code in the fork server: every run sees the tree as it is."""
    built = build_environment(str(TOY), tmp_path / "envs")
    site = next((built.venv / "lib").glob("python*/site-packages"))
    (site / "toyplug.py").write_text("import toycalc\n")
    (site / "toyplug-0.dist-info").mkdir()
    (site / "toyplug-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0\n")
    (site / "toyplug-0.dist-info" / "entry_points.txt").write_text("[pytest11]\ntoyplug = toyplug\n")
    tree = built.checkout()
    source = tree / "toycalc" / "__init__.py"
    try:
        with WarmRunner(built, tree) as server:
            assert server.run(["tests/test_toycalc.py::test_mean"], timeout=60).outcomes == {
                "tests/test_toycalc.py::test_mean": "passed"}
            source.write_text(source.read_text().replace("return total / len(values)", "return total"))
            stamp_mutation(source)
            assert server.run(["tests/test_toycalc.py::test_mean"], timeout=60).outcomes == {
                "tests/test_toycalc.py::test_mean": "failed"}
    finally:
        Environment.discard(tree)


def test_agent_commands_are_sandboxed_and_the_next_task_starts_clean(env, tasks):
    task = tasks[0]
    policy = ScriptedPolicy([
        format_tool_call("bash", "python -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\""),
        format_tool_call("bash", f"echo x > {env.path}/outside.txt; echo x > /work-outside.txt"),
        format_tool_call("bash", "sleep 60"),
        format_tool_call("bash", "echo still-alive; touch junk.txt"),
        "I am not calling a tool",
        format_tool_call("edit", format_edit("../escape.py", [("a", "b")])),
        format_tool_call("create", "toycalc/__init__.py\nclobber"),
    ])
    row = run_episode(env, task, policy, EpisodeBudget(command_timeout=2))
    actions = json.loads(row["actions"])
    assert "Errno" in actions[0]["observation"] and "[exit code 1]" in actions[0]["observation"]
    assert "Read-only file system" in actions[1]["observation"] and not (env.path / "outside.txt").exists()
    assert not Path("/work-outside.txt").exists()
    assert actions[2]["status"] == "timeout" and actions[2]["seconds"] < 10
    assert "still-alive" in actions[3]["observation"]
    assert actions[4]["status"] == "invalid" and "no tool call" in actions[4]["observation"]
    assert actions[5]["status"] == "error" and "outside the repository" in actions[5]["observation"]
    assert actions[6]["status"] == "error" and "already exists" in actions[6]["observation"]
    assert "junk.txt" in row["diff"] and row["reward"] == 0.0
    nxt = run_episode(env, task, ScriptedPolicy([format_tool_call("bash", "git status --short; ls")]))
    observation = json.loads(nxt["actions"])[0]["observation"]
    assert "junk.txt" not in observation and nxt["diff"] == ""


def test_symlinks_cannot_lead_edits_out_of_the_work_tree(env, tasks, tmp_path):
    target = tmp_path / "victim.py"
    target.write_text("a = 1\n")
    policy = ScriptedPolicy([format_tool_call("bash", f"ln -s {target} link.py"),
                             format_tool_call("edit", format_edit("link.py", [("a = 1", "a = 2")]))])
    actions = json.loads(run_episode(env, tasks[0], policy)["actions"])
    assert "outside the repository" in actions[1]["observation"] and target.read_text() == "a = 1\n"


@pytest.mark.parametrize("backend", ["bwrap", pytest.param("unshare", marks=pytest.mark.slow),
                                     pytest.param("gvisor", marks=pytest.mark.slow)])
def test_hostile_agent_commands_touch_nothing_on_the_host(env, tasks, tmp_path, backend):
    """The attacks of the threat model as an agent's bash actions: remounting the root, planting an fsmonitor
    command for the host's git, reading secrets, filling the disk and the memory, a fork bomb. None reaches the
    host; each action says what happened; the session goes on, and its tools still work."""
    pwned = Path("/tmp") / f"pwned-{os.getpid()}-{tmp_path.name}"
    marker = Path("/root") / f"marker-{tmp_path.name}"
    policy = ScriptedPolicy([
        format_tool_call("bash", f"mount -o remount,bind,rw / && echo x > {marker}"),
        format_tool_call("bash", f"git config core.fsmonitor 'touch {pwned}'; git config core.hooksPath ."),
        format_tool_call("bash", "cat /etc/shadow; ls -A /root /home"),
        format_tool_call("bash", "head -c 300M /dev/zero > /tmp/big; echo wrote $?"),
        format_tool_call("bash", "python -c \"import os\nfor _ in range(4):\n    os.fork()\n"
                                 "b = bytearray(150 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\""),
        format_tool_call("bash", "f() { f | f & }; f; sleep 2; echo bombed"),
        format_tool_call("bash", "echo still-here > fixed.txt; echo ok"),
        format_tool_call("bash", "ls -la > /dev/null && stat fixed.txt > /dev/null && echo listed-ok"),
        format_tool_call("submit", ""),
    ])
    from conftest import working_backend

    if not working_backend(backend):
        pytest.skip(f"the {backend} backend does not work here")
    budget = EpisodeBudget(command_timeout=5, memory_mb=256, disk_mb=64)
    row = run_episode(env, tasks[0], policy, budget, backend=backend)
    actions = json.loads(row["actions"])
    assert "exit code 0" not in actions[0]["observation"] and not marker.exists()
    assert "Read-only file system" in actions[1]["observation"] or "could not lock" in actions[1]["observation"]
    assert "No such file" in actions[2]["observation"] and ".bashrc" not in actions[2]["observation"]
    assert actions[3]["status"] == "disk" and "wrote 1" in actions[3]["observation"]
    assert actions[4]["status"] == "memory", actions[4]
    # the fork bomb: killed at the command's time limit, or over before it (a loaded machine), then reported as
    # "disk" since /tmp is still full from the action before (2026-12-08, make test: "disk")
    assert actions[5]["status"] in ("ok", "timeout", "killed", "disk"), actions[5]
    assert "ok" in actions[6]["observation"] and "fixed.txt" in row["diff"]
    assert "listed-ok" in actions[7]["observation"]  # coreutils work in the shell (gVisor: a runsc with statx)
    assert not pwned.exists()  # the host computed the diff without running what the agent planted


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


@pytest.mark.skipif(os.geteuid() != 0, reason="a work tree has a size limit of its own only when run as root")
def test_an_agent_cannot_fill_the_host_disk_through_its_work_tree(env, tasks):
    """The work tree is the one host directory an agent writes: run as root it is a tmpfs of its own holding the
    checkout plus the episode's allowance, in bytes and in files; filling it says ``disk`` and the host's file
    system never sees the data. The tmpfs is gone with the episode."""
    free_before = os.statvfs(env.path).f_bavail * os.statvfs(env.path).f_frsize
    policy = ScriptedPolicy([
        format_tool_call("bash", "for i in 1 2 3; do head -c 30M /dev/zero > big$i || echo failed $i; done"),
        format_tool_call("bash", "rm -f big*; df -h . | tail -1"),
        format_tool_call("bash", "python -c \"import os\nfor i in range(70_000): open(f'f{i}', 'w').close()\"; "
                                 "echo made $?"),
        format_tool_call("bash", "rm -f f*; echo fine > fixed.txt; echo ok"),
        format_tool_call("submit", ""),
    ])
    row = run_episode(env, tasks[0], policy, EpisodeBudget(command_timeout=60, disk_mb=64))
    actions = json.loads(row["actions"])
    assert actions[0]["status"] == "disk" and "failed 3" in actions[0]["observation"], actions[0]
    assert "No space left on device" in actions[0]["observation"]
    assert actions[1]["status"] == "ok" and "tmpfs" in actions[1]["observation"]
    assert actions[2]["status"] == "disk" and "made 1" in actions[2]["observation"], actions[2]
    assert actions[3]["status"] == "ok" and "fixed.txt" in row["diff"]
    free_after = os.statvfs(env.path).f_bavail * os.statvfs(env.path).f_frsize
    assert free_before - free_after < 20 << 20  # not the 60 MB written
    assert _mounts_under(env.path) == []


def test_host_git_ignores_a_hostile_repository_configuration(env, tmp_path):
    """Even over a tree whose .git was written by someone hostile, host-side git runs no hook, fsmonitor or
    filter command."""
    pwned = tmp_path / "pwned"
    tree = env.checkout(parent=tmp_path / "work")
    try:
        git(tree, "config", "core.fsmonitor", f"touch {pwned}-fsmonitor")
        git(tree, "config", "filter.evil.clean", f"touch {pwned}-filter; cat")
        git(tree, "config", "diff.external", f"touch {pwned}-diff")
        (tree / ".git" / "hooks" / "pre-commit").write_text(f"#!/bin/sh\ntouch {pwned}-hook\n")
        (tree / ".git" / "hooks" / "pre-commit").chmod(0o755)
        (tree / ".gitattributes").write_text("* filter=evil diff=evil\n")
        (tree / "new.py").write_text("x = 1\n")
        nested = tree / "nested"  # a repository the agent made inside the tree, its own config and hooks hostile
        subprocess.run(["git", "init", "-q", str(nested)], check=True)
        (nested / "f.txt").write_text("x\n")
        (nested / ".gitattributes").write_text("* filter=evil diff=evil\n")
        committer = ["-c", "user.name=a", "-c", "user.email=a@b"]
        subprocess.run(["git", "-C", str(nested), *committer, "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(nested), *committer, "commit", "-qm", "x"], check=True)
        for key, command in [("core.fsmonitor", "fsmonitor"), ("filter.evil.clean", "filter"),
                             ("diff.external", "diff"), ("core.pager", "pager")]:
            subprocess.run(["git", "-C", str(nested), "config", key, f"touch {pwned}-nested-{command}"], check=True)
        for hook in ("pre-commit", "post-checkout", "reference-transaction", "post-index-change"):
            (nested / ".git" / "hooks" / hook).write_text(f"#!/bin/sh\ntouch {pwned}-nested-{hook}\n")
            (nested / ".git" / "hooks" / hook).chmod(0o755)
        patch = env.diff(tree, env.base_commit)
        assert "new.py" in patch and "gitattributes" in patch and "Subproject commit" in patch
        assert not list(tmp_path.glob("pwned*"))
    finally:
        Environment.discard(tree)


def test_results_a_hostile_suite_forges_are_an_error_not_a_hang(env, tmp_path):
    """The tests under test write beside their results file: when they replace it with a FIFO (a blocking read), a
    link to a host secret or JSON of the wrong shape, the run is an error and the host neither hangs nor reads it."""
    tree = env.checkout(parent=tmp_path / "work")
    replace = {
        "fifo": "os.mkfifo(path)",
        "link": "os.symlink('/etc/shadow', path)",
        "shape": "open(path, 'w').write(json.dumps({'outcomes': {'t.py::t': 5}, 'failures': {}, 'coverage': {}}))",
    }
    try:
        for name, action in replace.items():
            (tree / "conftest.py").write_text(
                "import atexit, json, os\n\ndef _swap():\n    path = os.environ['OPENCWM_FORAGE_RESULTS']\n"
                f"    os.unlink(path)\n    {action}\n\natexit.register(_swap)\n")
            run = env.run_tests(tree, timeout=60)
            assert run.status == "error" and run.outcomes == {}, (name, run.output[-500:])
            assert "unreadable results" in run.output or "malformed results" in run.output
    finally:
        Environment.discard(tree)


@pytest.mark.slow  # three killed runs and a full one: ~25 s (make test-slow)
def test_kill_9_of_mutate_then_a_rerun_gives_every_candidate_once(env, tmp_path):
    import random
    import signal
    import time

    from opencwm.forage.tasks import candidates
    from opencwm.shards import read_rows

    out = tmp_path / "tasks"
    command = [sys.executable, "-m", "opencwm.cli", "forage", "mutate", str(env.path), "--out", str(out),
               "--workers", "2", "--json", "--quiet"]
    rng = random.Random(11)
    for _ in range(3):
        process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 4.0))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    items = [row["item"] for row in read_rows(out, columns=["item"])]
    assert sorted(items) == sorted(set(items)) and len(items) == len(candidates(env))
    live = [p for p in (env.path / "work").iterdir() if Path(f"/proc/{p.name.split('-')[0]}").exists()]
    assert not [p for p in (env.path / "work").iterdir() if p not in live]  # the killed runs' trees are gone
    assert not [m for m in _mounts_under(env.path) if Path(m) not in live]  # ... and their mounts


def test_a_full_episode_through_the_openai_client(env, tasks, tmp_path):
    task = next(t for t in tasks if t["operator"] == "compare") if any(
        t["operator"] == "compare" for t in tasks) else tasks[0]
    edits = InverseMutationPolicy(task).script.turns
    ScriptedChat.replies = [*edits, "Done.\n" + format_tool_call("submit")]
    ScriptedChat.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = OpenAIPolicy(f"http://127.0.0.1:{server.server_port}/v1", "cwm-test")
        summary = run_episodes([task], lambda t: policy, tmp_path / "traj")
    finally:
        server.shutdown()
    assert summary["episodes"] == 1 and summary["solved"] == 1
    row = read_trajectories(tmp_path / "traj")[0]
    messages, actions = json.loads(row["messages"]), json.loads(row["actions"])
    requests = ScriptedChat.requests
    assert len(requests) == len(edits) + 1 and all(r["path"] == "/v1/chat/completions" for r in requests)
    assert requests[0]["body"]["model"] == "cwm-test" and requests[0]["body"]["messages"] == messages[:2]
    assert requests[-1]["body"]["messages"] == messages[:-1]  # the server saw the whole conversation
    assert messages[0]["role"] == "system" and messages[1] == {"role": "user", "content": task["problem_statement"]}
    assert [m["content"] for m in messages if m["role"] == "assistant"] == ScriptedChat.replies
    assert [m["role"] for m in messages[3::2]] == ["tool: bash"] + ["tool: edit"] * (len(edits) - 1)
    assert [a["tool"] for a in actions] == ["bash"] + ["edit"] * (len(edits) - 1) + ["submit"]
    assert all(a["status"] == "ok" for a in actions)
    assert row["task_id"] == task["instance_id"] and row["policy"] == "openai" and row["status"] == "submitted"
    assert row["turns"] == len(actions) and row["prompt_tokens"] == 100 * len(requests)
    assert row["completion_tokens"] == 10 * len(requests)
    assert row["reward"] == 1.0 and row["solved"] is True
    assert json.loads(row["test_results"]) == {t: "passed" for t in json.loads(task["FAIL_TO_PASS"])
                                               + json.loads(task["PASS_TO_PASS"])}
    assert row["diff"] == task["patch"]  # the inverse edit is exactly the fix
    assert json.loads(row["task"])["instance_id"] == task["instance_id"]
    assert row["seconds"] >= row["episode_seconds"] > 0


def _cli(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "opencwm.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=environment)


def test_the_walkthrough_works_from_inside_another_project_with_relative_paths(tmp_path):
    """As a user runs it: from a project directory whose own pytest configuration would select nothing if the
    suite saw it (opencwm's checkout did that), with the default cache given relatively ($OPENCWM_CACHE) and then a
    relative --cache; the environment is named by its source, as the README does."""
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npython_functions = ["nothing_*"]\n'
                                             'addopts = "-k nothing"\ntimeout = 5\n')
    shutil.copytree(TOY, tmp_path / "toyrepo")
    built = _cli("forage", "env", "toyrepo", "--json", "--quiet", cwd=tmp_path, env={"OPENCWM_CACHE": "cache"})
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert summary["tests"] == summary["passing"] == 5 and summary["env"].startswith(str(tmp_path / "cache" / "envs"))
    made = _cli("forage", "mutate", "toyrepo", "--cache", "cache/envs", "--out", "tasks", "--max", "8", "--json",
                "--quiet", cwd=tmp_path)
    report = json.loads(made.stdout)
    assert made.returncode == 0 and report["errors"] == 0 and report["validated"] > 0, made.stderr
    assert sum(report["verdicts"].values()) == 8 and not made.stderr
    ran = _cli("forage", "run", "tasks", "--policy", "oracle", "--out", "traj", "--max", "2", "--json", "--quiet",
               cwd=tmp_path)
    assert ran.returncode == 0 and json.loads(ran.stdout)["solved"] == 2, ran.stderr
    shown = _cli("forage", "show", "traj", cwd=tmp_path)
    assert shown.returncode == 0 and "deciding tests: " in shown.stdout
    assert not any(line.startswith("  passed ") for line in shown.stdout.splitlines())  # passing tests: a count
    missing = _cli("forage", "mutate", "no-such==1.0", "--cache", "cache/envs", "--out", "t2", cwd=tmp_path)
    assert missing.returncode == 2 and "opencwm forage env no-such==1.0" in missing.stderr
    assert missing.stderr.count("\n") == 1 and not (tmp_path / "t2").exists()


def test_a_pytest_configuration_above_the_work_tree_is_never_the_suites(env, tmp_path):
    """The sandbox shows a suite little of the host, but the rlimits backend (and a cache inside a visible
    directory) shows it all: pytest would take the nearest configuration above the tree, here one that selects
    nothing, and test ids relative to its directory."""
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npython_functions = ["nothing_*"]\n')
    tree = env.checkout(parent=tmp_path / "work")
    try:
        run = env.run_tests(tree, backend="rlimits", timeout=60)
    finally:
        Environment.discard(tree)
    assert run.status == "ok" and run.outcomes == env.info["tests"], run.output[-500:]


def test_a_cached_build_failure_says_how_to_try_again(tmp_path):
    repo = tmp_path / "broken"
    repo.mkdir()
    (repo / "pyproject.toml").write_text("[project]\nname = 'broken'\nversion = '1'\ndependencies = ['-nonsense-']\n")
    first = _cli("forage", "env", str(repo), "--cache", str(tmp_path / "envs"), "--quiet")
    again = _cli("forage", "env", str(repo), "--cache", str(tmp_path / "envs"), "--quiet")
    assert first.returncode == again.returncode == 1 and "--rebuild" not in first.stderr
    assert "--rebuild" in again.stderr and again.stderr.count("\n") == 1
    used = _cli("forage", "mutate", str(repo), "--cache", str(tmp_path / "envs"), "--out", str(tmp_path / "t"))
    assert used.returncode == 2 and "--rebuild" in used.stderr and not (tmp_path / "t").exists()


def test_an_unreachable_endpoint_is_an_error_and_its_episodes_are_played_on_a_rerun(env, tasks, tmp_path):
    import socket

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "tasks"
    mutate(env, out, max_candidates=4, workers=1)
    args = ("forage", "run", str(out), "--policy", "openai", "--model", "cwm", "--max", "1", "--out",
            str(tmp_path / "traj"), "--quiet")
    failed = _cli(*args, "--base-url", f"http://127.0.0.1:{port}/v1")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "cannot answer" in failed.stderr and "APIConnectionError after 5 tries" in failed.stderr
    assert "Traceback" not in failed.stderr
    ScriptedChat.replies, ScriptedChat.requests = [format_tool_call("submit")], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rerun = _cli(*args, "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--json")
    finally:
        server.shutdown()
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["episodes"] == 1 and len(ScriptedChat.requests) == 1


def test_a_hostile_model_behind_the_cli_runs_nothing_on_the_host(env, tmp_path):
    """The threat model's second case end to end: a model served over the OpenAI API plants commands for host-side
    git (fsmonitor, a hook, a filter with attributes) in its bash actions, then submits; ``forage run --policy
    openai`` takes the episode's diff and grades it on the host, and none of them runs."""
    pwned = tmp_path / "pwned"
    out = tmp_path / "tasks"
    mutate(env, out, max_candidates=4, workers=1)
    ScriptedChat.requests = []
    ScriptedChat.replies = [
        format_tool_call("bash", f"git config core.fsmonitor 'touch {pwned}-fsmonitor'; "
                                 f"git config filter.evil.clean 'touch {pwned}-filter; cat'; "
                                 f"printf '#!/bin/sh\\ntouch {pwned}-hook\\n' > .git/hooks/pre-commit; "
                                 "echo '* filter=evil' > .gitattributes; echo planted"),
        format_tool_call("bash", "echo 'x = 1' > planted.py"),
        format_tool_call("submit"),
    ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ran = _cli("forage", "run", str(out), "--policy", "openai", "--model", "cwm", "--max", "1", "--base-url",
                   f"http://127.0.0.1:{server.server_port}/v1", "--out", str(tmp_path / "traj"), "--json", "--quiet")
    finally:
        server.shutdown()
    assert ran.returncode == 0, ran.stderr
    [row] = read_trajectories(tmp_path / "traj")
    assert len(ScriptedChat.requests) == 3 and row["status"] == "submitted"
    assert "planted.py" in row["diff"] and ".gitattributes" in row["diff"]
    assert not list(tmp_path.glob("pwned*"))


def test_the_scripted_policy_plays_turns_from_a_file(env, tasks, tmp_path):
    script = tmp_path / "script.jsonl"
    script.write_text(json.dumps({"tool": "bash", "args": "echo scripted-$((6 * 7))"}) + "\n"
                      + json.dumps(format_tool_call("submit")) + "\n")
    out = tmp_path / "tasks"
    mutate(env, out, max_candidates=4, workers=1)
    ran = _cli("forage", "run", str(out), "--policy", "scripted", "--script", str(script), "--max", "1", "--out",
               str(tmp_path / "traj"), "--json", "--quiet")
    assert ran.returncode == 0, ran.stderr
    [row] = read_trajectories(tmp_path / "traj")
    actions = json.loads(row["actions"])
    assert [a["tool"] for a in actions] == ["bash", "submit"] and "scripted-42" in actions[0]["observation"]
    script.write_text('{"tool": 3}\n')
    bad = _cli("forage", "run", str(out), "--policy", "scripted", "--script", str(script), "--out",
               str(tmp_path / "t2"))
    assert bad.returncode == 2 and f"{script}:1" in bad.stderr and not (tmp_path / "t2").exists()


def test_cli_json_summaries(env, tmp_path):
    built = _cli("forage", "env", str(TOY), "--cache", str(env.path.parent), "--json", "--quiet")
    assert built.returncode == 0 and json.loads(built.stdout) == {"env": str(env.path), "tests": 5, "passing": 5,
                                                                  "flaky": 0}
    made = _cli("forage", "mutate", str(env.path), "--out", str(tmp_path / "t"), "--max", "6", "--json", "--quiet")
    summary = json.loads(made.stdout)
    assert made.returncode == 0 and summary["candidates"] == 6 and summary["tasks"] == str(tmp_path / "t")
    assert sum(c["candidates"] for c in summary["per_operator"].values()) == 6
    assert summary["validated"] == len(read_tasks(tmp_path / "t"))
    ran = _cli("forage", "run", str(tmp_path / "t"), "--policy", "inverse", "--out", str(tmp_path / "r"), "--json",
               "--quiet")
    assert ran.returncode == 0 and json.loads(ran.stdout) == {"trajectories": str(tmp_path / "r"),
                                                              "episodes": summary["validated"],
                                                              "solved": summary["validated"]}
    shown = _cli("forage", "show", str(tmp_path / "r"))
    assert shown.returncode == 0 and "[tool: bash]" in shown.stdout and "deciding tests:" in shown.stdout


def test_cli_errors_are_one_line(tmp_path):
    for args in (("forage", "mutate", str(tmp_path), "--out", str(tmp_path / "t")), ("forage", "show", str(tmp_path)),
                 ("forage", "run", str(tmp_path), "--out", str(tmp_path / "o")),
                 ("forage", "env", "no-such-dir-or-spec", "--cache", str(tmp_path))):
        result = _cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("opencwm:")


def test_issue_texts_from_a_model_never_leak_the_fix(env, tmp_path):
    from opencwm.forage.policies import Reply

    class Writer:
        def __init__(self, leak: bool):
            self.leak, self.prompts = leak, []

        def __call__(self, messages):
            self.prompts.append(messages[-1]["content"])
            original = (TOY / "toycalc" / "__init__.py").read_text()  # holds every line of every fix
            return Reply("Title: wrong results\n\nSome results are wrong." + ("\n" + original if self.leak else ""))

    honest, leaky = Writer(False), Writer(True)
    mutate(env, tmp_path / "honest", max_candidates=4, issue_writer=honest)
    mutate(env, tmp_path / "leaky", max_candidates=4, issue_writer=leaky)
    written = read_tasks(tmp_path / "honest")
    assert written and all(t["problem_statement"].startswith("Title: wrong results") for t in written)
    assert all("Failing tests:" in prompt for prompt in honest.prompts)
    for task in written:  # the writer saw the diff that made the bug, as SWE-smith's issue writer does
        assert any(task["bug_patch"].strip() in prompt for prompt in honest.prompts)
    leaked = read_tasks(tmp_path / "leaky")
    assert leaked and len(leaky.prompts) == len(leaked)
    assert all(t["problem_statement"].startswith("Some tests fail") for t in leaked)  # the plain description


def test_ray_spreads_episodes_with_the_same_results(env, tasks, tmp_path):
    ray = pytest.importorskip("ray")
    try:
        summary = run_episodes(tasks[:4], InverseMutationPolicy, tmp_path / "ray", workers=2, ray_address="local")
    finally:
        ray.shutdown()
    assert summary["episodes"] == 4 and summary["solved"] == 4
    rows = {r["task_id"]: r for r in read_trajectories(tmp_path / "ray")}
    local = run_episodes(tasks[:4], InverseMutationPolicy, tmp_path / "local")
    assert local["solved"] == 4
    def steps(row):
        return [(a["tool"], a["args"], a["status"]) for a in json.loads(row["actions"])]

    for row in read_trajectories(tmp_path / "local"):
        assert rows[row["task_id"]]["diff"] == row["diff"] and steps(rows[row["task_id"]]) == steps(row)


def test_a_local_checkpoint_plays_an_episode(env, tasks, tmp_path):
    from opencwm.forage.policies import CompleterPolicy
    from opencwm.infer.local import LocalCompleter
    from opencwm.model import CWM, preset
    from opencwm.tokenizer import Tokenizer

    tokenizer = Tokenizer.train([(TOY / "toycalc" / "__init__.py").read_text()] * 5, vocab_size=300)
    model = CWM(preset("nano", **tokenizer.config_fields(), max_position_embeddings=4096)).init_weights(seed=0)
    folder = tmp_path / "run" / "checkpoints" / "step-000001" / "model"
    model.save_pretrained(folder)
    tokenizer.save(folder)  # as the trainer writes checkpoints
    policy = CompleterPolicy(LocalCompleter.from_checkpoint(folder), name="local", think=False, max_tokens=8)
    (folder / "tokenizer.json").rename(tmp_path / "elsewhere.json")  # older runs kept it only in RUN/tokenizer
    tokenizer.save(tmp_path / "run" / "tokenizer")
    assert LocalCompleter.from_checkpoint(folder).tokenizer.vocab_size == tokenizer.vocab_size
    row = run_episode(env, tasks[0], policy, EpisodeBudget(max_turns=2))
    messages, actions = json.loads(row["messages"]), json.loads(row["actions"])
    assert row["policy"] == "local" and row["turns"] == 2 and row["status"] == "turn_budget"
    assert [m["role"] for m in messages[2:]] == ["assistant", "tool: error", "assistant", "tool: error"]
    assert all(a["status"] == "invalid" for a in actions)  # an untrained model writes no tool call
    assert 0 < row["completion_tokens"] <= 16 and row["prompt_tokens"] > 100 and row["reward"] == 0.0


def test_a_local_checkpoint_writes_issue_texts_that_never_hold_a_line_of_the_fix(untrained_checkpoint, tmp_path):
    from opencwm.forage.tasks import fix_lines

    shutil.copytree(TOY, tmp_path / "toyrepo")
    built = _cli("forage", "env", "toyrepo", "--cache", "cache", "--quiet", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    made = _cli("forage", "mutate", "toyrepo", "--cache", "cache", "--out", "tasks", "--max", "4", "--json", "--quiet",
                "--issue-model", str(untrained_checkpoint), cwd=tmp_path)
    assert made.returncode == 0 and json.loads(made.stdout)["validated"] > 0, made.stderr
    for task in read_tasks(tmp_path / "tasks"):
        assert task["problem_statement"] and not any(line in task["problem_statement"]
                                                     for line in fix_lines(task["patch"]))
    wrong = _cli("forage", "mutate", "toyrepo", "--cache", "cache", "--out", "t2", "--issue-model", "runs/nope",
                 cwd=tmp_path)
    assert wrong.returncode == 2 and "--issue-model runs/nope" in wrong.stderr and wrong.stderr.count("\n") == 1

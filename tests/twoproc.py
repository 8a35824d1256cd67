"""Many two-process cases in one launch of two processes.

A launch of a command on two processes (torchrun, or two processes started by hand) costs each process
its imports and torch's start, several seconds of CPU, before the case's own work. Here two driver
processes are started once, with the variables torchrun sets given by hand (as a launch on two machines
gives them), and run every case in turn: each case calls ``dinov2_dense.cli.main`` with its command line,
on its own port (or a case's ``call``, ``"module:function"``, with its arguments), and writes its output
and exit code to files that the tests read. ``DIST_START_ONLY=a,b``
runs only those cases (to look at one).

``shared_once`` builds such a launch once for the whole test run, whichever xdist worker asks first (the
others wait for it and read its results), so that a module whose tests are split between workers does
not launch twice."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CASE_LIMIT_S = 60  # a case still running then is stopped and reported as such (a process left waiting)

DRIVER = r'''
import json, os, sys, threading, traceback
rank, base, cases = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
from dinov2_dense.cli import main

def api_case(rank):
    """dinov2_dense.distributed between the two processes, without a command."""
    from pathlib import Path
    import torch.distributed as dist
    from dinov2_dense.distributed import StartRefused, agree_to_start, check_same_settings
    dist.init_process_group("gloo")
    def f(): pass
    # a function (its address differs between processes) and a set (its order too) are the same settings
    check_same_settings({"a": {"f": f, "s": {"alpha", "beta", "gamma", "delta"}}, "n": [dict(k=1)]}, "api")
    print("same: passed")
    try:
        check_same_settings({"n": [dict(k=rank)], "own": rank}, "api", ignore=("own",))
    except ValueError as exc:
        print(f"differ: {exc}")
    def fails_on_1():
        if rank == 1:
            raise FileNotFoundError("data/x: no such folder")
        return rank
    try:
        agree_to_start(fails_on_1, main=True)
    except StartRefused as exc:
        print(f"refused: {exc}")
    except FileNotFoundError as exc:
        print(f"own error: {exc}")
    print(f"shared: {agree_to_start(lambda: [Path('p0')], rank == 0, share=True)!r}")
    dist.destroy_process_group()
    return 0

import dinov2_dense.engine.runner as runner_module
import pretrain.train as pretrain_module
own = (runner_module.checkpoint_candidates, pretrain_module.checkpoint_files, pretrain_module.plot_training)
saved = dict(os.environ)
for case in cases:
    name, port, argv, env = case["name"], case["port"], case["argv"][rank], case["env"][rank]
    os.environ.clear(); os.environ.update(saved); os.environ.update(env)
    for key in case.get("unset", []):
        os.environ.pop(key, None)
    runner_module.checkpoint_candidates, pretrain_module.checkpoint_files, pretrain_module.plot_training = own
    if rank in case.get("no_checkpoints_on", []):  # this process's machine does not share the work dir
        runner_module.checkpoint_candidates = lambda work_dir: []
        pretrain_module.checkpoint_files = lambda work_dir: []
    if case.get("no_figures"):  # checkpoints without the redrawn training curves (a second each)
        pretrain_module.plot_training = lambda work_dir: None
    os.environ["MASTER_PORT"] = str(port)
    log = open(os.path.join(base, f"{name}.{rank}.log"), "w")
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)
    done = threading.Event()

    def watchdog(name=name, done=done):
        if not done.wait(case["limit"]):
            with open(os.path.join(base, f"{name}.{rank}.rc"), "w") as f:
                f.write("still running after %d s" % case["limit"])
            os._exit(124)

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        if name == "api":
            rc = api_case(rank)
        elif case.get("call"):  # "module:function", called with the case's arguments
            import importlib
            module, function = case["call"].split(":")
            rc = getattr(importlib.import_module(module), function)(*argv)
        else:
            rc = main(argv)
    except BaseException:
        traceback.print_exc(); rc = "raised"
    done.set()
    sys.stdout.flush(); sys.stderr.flush()
    with open(os.path.join(base, f"{name}.{rank}.rc"), "w") as f:
        f.write(str(rc))
'''

#: the variables torchrun sets for each of two processes on one machine
TORCHRUN = [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1"} for r in (0, 1)]


def cases(table: dict[str, tuple], limits: dict[str, float] | None = None, **per_case) -> list[dict]:
    """The driver's cases from ``{name: ([argv of process 0, of process 1], [env of each], [unset])}``, in
    order, each on its own port; ``limits`` gives a case other seconds than CASE_LIMIT_S; ``per_case``
    gives names for which a driver option is on (``no_checkpoints_on=[1]`` ...): ``{option: {name: value}}``."""
    only = [c for c in os.environ.get("DIST_START_ONLY", "").split(",") if c]
    out = []
    for name, (argv, env, unset) in table.items():
        if only and name not in only:
            continue
        case = dict(name=name, port=free_port(), argv=argv, env=env, unset=unset,
                    limit=(limits or {}).get(name, CASE_LIMIT_S))
        for option, values in per_case.items():
            if name in values:
                case[option] = values[name]
        out.append(case)
    return out


def launch(base: Path, case_list: list[dict]) -> dict[str, list[tuple[int | str, str]]]:
    """Two driver processes run every case; {case: [(exit code, output) of process 0, of process 1]}."""
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    procs = [subprocess.Popen([sys.executable, str(driver), str(rank), str(base), json.dumps(case_list)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for rank in (0, 1)]
    for proc in procs:
        try:
            proc.wait(timeout=sum(c["limit"] for c in case_list) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
    results = {}
    for case in case_list:
        pair = []
        for rank in (0, 1):
            rc_file, log = base / f"{case['name']}.{rank}.rc", base / f"{case['name']}.{rank}.log"
            rc = rc_file.read_text() if rc_file.is_file() else "no exit code (the process died)"
            pair.append((int(rc) if rc.lstrip("-").isdigit() else rc, log.read_text() if log.is_file() else ""))
        results[case["name"]] = pair
    return results


def shared_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """``build(folder)``'s result (JSON), built once for the test run: the first xdist worker to ask builds it in
    a folder all workers see, the others wait on a lock and read it. A build that failed is tried again."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder, done = base / f"shared_{name}", base / f"shared_{name}.json"
    with open(base / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = build(folder)
            done.write_text(json.dumps(result))
    return json.loads(done.read_text())

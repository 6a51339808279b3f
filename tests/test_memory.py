"""The process-wide knobs of pipeline/memory.py: the command sets them, the library never does."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from pipeline import run
from pipeline.memory import RUN_GC_THRESHOLD

from .conftest import ROOT, TEST_KEY, _child_env, fast_config, make_rows, write_csv

# ``docpipe run`` in a child whose exit hook reports the collector's young threshold as the run left it
# (not its freeze: the command also freezes just before exiting) and Arrow's default memory pool
_REPORT_COLLECTOR = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('collector', gc.get_threshold()[0]))\n"
    "atexit.register(lambda: print('pool', sys.modules['pyarrow'].default_memory_pool().backend_name))\n"
    "from pipeline.cli import main\n"
    "sys.argv = ['docpipe', *sys.argv[1:]]\n"
    "main()\n"
)


def test_docpipe_run_collects_young_objects_less_often(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    args = [str(manifest), "--out", str(tmp_path / "out"), "--base-url", server.url, "--api-key", TEST_KEY,
            "--no-doc-meta", "--quiet"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _REPORT_COLLECTOR, "run", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_child_env(None))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"collector {RUN_GC_THRESHOLD}" in done.stdout.splitlines()
    assert server.stats()["requests"] == 5


def test_docpipe_run_makes_the_system_allocator_arrows_pool_unless_the_environment_names_one(
    tmp_path: Path, sim
) -> None:
    """Arrow's C++ parts read the pool once, when pyarrow loads: the command sets it before
    (10 000 rows: 133-136 MB peak against 164-175 set after, 201-203 with mimalloc)."""
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))
    pools = []
    for n, pool in enumerate([None, "mimalloc"]):
        env = {k: v for k, v in _child_env(None).items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
        if pool is not None:  # the user's own choice
            env["ARROW_DEFAULT_MEMORY_POOL"] = pool
        args = [str(manifest), "--out", str(tmp_path / f"out{n}"), "--base-url", server.url, "--api-key", TEST_KEY,
                "--no-doc-meta", "--quiet"]  # fmt: skip
        done = subprocess.run([sys.executable, "-c", _REPORT_COLLECTOR, "run", *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT, env=env)  # fmt: skip
        assert done.returncode == 0, done.stderr
        pools += [line for line in done.stdout.splitlines() if line.startswith("pool ")]
    assert pools == ["pool system", "pool mimalloc"]
    assert server.stats()["requests"] == 10


def test_library_run_leaves_the_collector_as_it_found_it(tmp_path: Path, sim) -> None:
    server = sim(latency_s=0.0)
    manifest = write_csv(tmp_path / "m.csv", make_rows(5))

    def state() -> tuple[object, ...]:
        pool = pa.default_memory_pool().backend_name, os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
        return gc.get_threshold(), gc.get_freeze_count(), gc.isenabled(), pool

    before = state()
    summary = run(fast_config(manifest, tmp_path / "out", server))
    assert summary.ok == 5
    assert state() == before

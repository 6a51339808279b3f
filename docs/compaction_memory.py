"""Peak RSS of compaction + report of a finished folder, in one process (issue 10's isolated measurement).

    python docs/compaction_memory.py PRE MANIFEST

PRE: an output folder as it stands just before compaction (its ``_journal`` log not
yet folded); it is copied to ``PRE.work`` first, so it can be measured again. Any
run killed with ``kill -9`` before its end leaves one (README's figures: a 10 000-row
``docpipe bench`` run's folder copied just before compaction, and for 1M rows its
10 000 journal lines repeated with each manifest row's request_id).
MANIFEST: the manifest the folder was run with. The script imports what a run
imports, opens the manifest, then calls ``compaction.compact`` and
``htmlreport.write_report``, printing VmRSS/VmHWM after each step. A/B against other
code: ``PYTHONPATH=/path/to/other/checkout python docs/compaction_memory.py ...``.
Unlike a run, it hashes the manifest's ids once (a run has them already).
"""

from __future__ import annotations

import shutil
import sys
import time


def mark(what: str) -> None:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) / 1024
    print(f"{what:28s} RSS {fields['VmRSS']:6.1f} MB  peak {fields['VmHWM']:6.1f} MB", flush=True)


def main(pre: str, manifest: str) -> None:
    work = pre.rstrip("/") + ".work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pre, work)
    import aiohttp  # noqa: F401  - what a run has imported by then
    import orjson  # noqa: F401

    import pipeline.cli
    import pipeline.runner
    from pipeline.compaction import compact
    from pipeline.config import load_config
    from pipeline.htmlreport import write_report
    from pipeline.manifest import Manifest
    from pipeline.rundir import RunDir

    del pipeline.cli
    cfg = load_config(manifest=manifest, out=work, base_url="http://127.0.0.1:1/v1", api_key="x")
    m = Manifest(manifest, cfg)
    mark("imports, manifest")
    cpu = time.process_time()
    rows = compact(RunDir(work), m)
    mark(f"compaction ({rows} rows, {time.process_time() - cpu:.2f} s CPU)")
    write_report(RunDir(work).path)
    mark("report")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

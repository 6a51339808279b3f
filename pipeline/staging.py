"""A run whose manifest or output folder is in object storage, on either engine.

The run itself works on local paths (see :mod:`pipeline.objstore` for where they are
and why); this module swaps the remote paths for local ones before the run, and after
it puts the remote ones back into ``_run.json`` and the returned summary, then uploads
the folder's files. A run that raised uploads nothing: its journal stays in the local
cache and the next run resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import objstore
from .config import JobConfig
from .journal import journal_files
from .records import RunSummary
from .storage import JOURNAL_DIR, RESULTS_FILE, RUN_FILE, atomic_write_bytes


def needs_staging(cfg: JobConfig) -> bool:
    """True when the manifest or the output folder is remote."""
    return objstore.is_remote(cfg.manifest) or objstore.is_remote(cfg.out)


def run_staged(cfg: JobConfig, run_local: Callable[[JobConfig], RunSummary]) -> RunSummary:
    """Run ``run_local`` on local stand-ins for ``cfg``'s remote paths; see the module docstring."""
    assert cfg.manifest is not None and cfg.out is not None
    changes: dict[str, Any] = {}
    if objstore.is_remote(cfg.manifest):
        changes["manifest"] = objstore.localize_manifest(cfg.manifest, cfg.cache_dir)
    remote_out = cfg.out if objstore.is_remote(cfg.out) else None
    local: Path | None = None
    if remote_out is not None:
        local = objstore.local_out(remote_out, cfg.cache_dir)
        if not journal_files(local / JOURNAL_DIR):  # first run here: resume from what the bucket holds
            objstore.pull(remote_out, local, seed_journal=True)
        changes["out"] = str(local)
    summary = run_local(cfg.replace(**changes))
    if remote_out is None or local is None:
        return summary
    _restore_paths(local / RUN_FILE, cfg, str(local))
    objstore.push(local, remote_out)
    results = f"{remote_out.rstrip('/')}/{RESULTS_FILE}" if summary.results_file else None
    return dataclasses.replace(summary, out=remote_out, results_file=results)


def _restore_paths(run_file: Path, cfg: JobConfig, local_out: str) -> None:
    """``_run.json`` names the remote manifest and out the user gave, not the local copies."""
    try:
        info = json.loads(run_file.read_text())
    except (OSError, ValueError):
        return
    info["out"] = cfg.out
    info["manifest"] = cfg.manifest
    if info.get("results_file"):
        info["results_file"] = f"{str(cfg.out).rstrip('/')}/{RESULTS_FILE}"
    settings = info.get("settings")
    if isinstance(settings, dict):
        settings["out"], settings["manifest"] = cfg.out, cfg.manifest
    info["local_journal"] = str(Path(local_out) / JOURNAL_DIR)
    atomic_write_bytes(run_file, json.dumps(info, indent=2, default=str).encode())


def dispatch(cfg: JobConfig, *, display: Any = None, install_signals: bool = False) -> RunSummary:
    """:func:`pipeline.runner.run` for a job on the Ray engine or with remote paths."""
    cfg = cfg.for_run()

    def run_local(local: JobConfig) -> RunSummary:
        if local.engine == "ray":
            from .rayengine.run import run_ray  # imports ray: only this engine pays for it

            return run_ray(local, display=display)
        from .runner import run

        return run(local, display=display, install_signals=install_signals)

    return run_staged(cfg, run_local) if needs_staging(cfg) else run_local(cfg)

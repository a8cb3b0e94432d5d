"""``python -m generate.run.status RUN``: how far a generation run has got: finished and failed materials (by
stage), and those in progress or stopped mid-way, with their stage, since when, and the checkpoints a
restart resumes from. ``RUN``: an ``out_dir`` (every settings folder in it) or one settings folder."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from generate.run.checkpoint import PROGRESS
from generate.run.records import RunFolder


def _running(progress: dict) -> bool | None:
    """Whether the process that wrote ``progress`` still runs (None: it ran on another host)."""
    if progress.get("host") != os.uname().nodename:
        return None
    try:
        os.kill(int(progress["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def folder_status(folder: RunFolder, now: float | None = None) -> dict:
    """Counts of the records by status and failure stage, and one entry per material with checkpoints."""
    now = time.time() if now is None else now
    records = {}
    for path in sorted(folder.records.glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    statuses = Counter(r.get("status") for r in records.values())
    failed_stages = Counter(r.get("stage") for r in records.values() if r.get("status") == "failed")
    requested = [run.get("n_requested", 0) for run in folder.manifest().get("runs", [])]
    unfinished = []
    for directory in sorted(p for p in folder.partial.glob("*") if p.is_dir()) if folder.partial.is_dir() else []:
        record = records.get(directory.name)
        if record is not None and record.get("status") == "ok":
            continue  # its record was written; the folder is left from a run stopped while deleting it
        try:
            progress = json.loads((directory / PROGRESS).read_text())
        except (OSError, json.JSONDecodeError):
            progress = {}
        running = _running(progress) if progress else False
        if record is not None and record.get("finished", 0) >= progress.get("since", 0):  # not retried since
            state = f"failed at {record.get('stage')}; retry_failed=true resumes it"
        else:
            state = {True: "running", False: "stopped; the next run resumes it", None: f"on {progress.get('host')}"}[running]
        unfinished.append({
            "material_id": directory.name,
            "stage": progress.get("stage"),
            "minutes": (now - progress["since"]) / 60 if "since" in progress else None,
            "state": state,
            "checkpoints": sorted(p.name.rsplit("-", 1)[0] for p in directory.glob("*.pkl")),
        })
    return {"folder": str(folder.root), "records": dict(statuses), "failed_stages": dict(failed_stages),
            "materials_listed": max(requested, default=0), "unfinished": unfinished}


def report(status: dict) -> str:
    counts = status["records"]
    stages = ", ".join(f"{stage} {n}" for stage, n in sorted(status["failed_stages"].items()))
    lines = [f"{status['folder']}: {counts.get('ok', 0)} finished, {counts.get('failed', 0)} failed"
             + (f" ({stages})" if stages else "") + f" of {status['materials_listed']} listed by its latest run"]
    for entry in status["unfinished"]:
        since = "" if entry["minutes"] is None else f" for {entry['minutes']:.0f} min"
        saved = ", ".join(entry["checkpoints"]) or "none yet"
        lines.append(f"  {entry['material_id']}: stage {entry['stage']}{since}, {entry['state']}; checkpoints: {saved}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generate.run.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="out_dir of the generation, or one of its settings folders")
    args = parser.parse_args(argv)
    roots = [args.run] if (args.run / "manifest.json").is_file() else sorted(p.parent for p in args.run.glob("*/manifest.json"))
    if not roots:
        sys.exit(f"{args.run}: no generation run here (no manifest.json in it or its subfolders)")
    print("\n".join(report(folder_status(RunFolder(root))) for root in roots))


if __name__ == "__main__":
    main()

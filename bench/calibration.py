"""An estimate that learns this machine: three loads, then the fourth predicted.

Loads the default model with three presets (default fp32, int8, nf4), each in a fresh
process through `main.py generate` (one greedy token), into a new, empty history
database, so every load is recorded beside its estimate (core.model.calibration).
Then asks the estimate, now calibrated from those three records, for the peak of a
fourth preset (default nf4-dq), loads it the same way and prints predicted against
actual, beside the formulas' own prediction.

    .venv/bin/python bench/calibration.py [--train fp32,int8,nf4] [--predict nf4-dq]
        [--keep DIR]

`--keep DIR` leaves the history database there (the records can then be read with
`NIBBLE_CONVERSATIONS_DB=DIR/conversations.db python main.py estimate default
--explain`). The user's own history is never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # also puts the project on sys.path

MiB = 2**20


def load_once(preset: str, database: Path, timeout: float) -> float:
    """One fresh process that loads the default model with `preset` and answers."""
    env = {**os.environ, "NIBBLE_CONVERSATIONS_DB": str(database)}
    env.pop("NIBBLE_LOAD_RECORDS", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "generate", "default", "--quant",
         preset, "--greedy", "--max-new-tokens", "1", "--prompt", "Hi"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"loading {preset} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="fp32,int8,nf4")
    parser.add_argument("--predict", default="nf4-dq")
    parser.add_argument("--keep", default=None, metavar="DIR")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    from core.model import calibration, estimate
    from core.model.fit import probe_device
    from core.settings import preset
    from core.store import calibration as store
    from core.store.conversations import FILE_NAME

    folder = Path(args.keep or tempfile.mkdtemp(prefix="nibble-calibration-"))
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / FILE_NAME
    if database.exists():
        sys.exit(f"{database} exists: give --keep an empty folder")
    journal = store.LoadJournal(database)
    calibration.use_journal(journal)

    for name in args.train.split(","):
        seconds = load_once(name, database, args.timeout)
        print(f"loaded {name} in a fresh process ({seconds:.0f} s)", file=sys.stderr)

    p = preset(args.predict)
    row = estimate.estimate("default", p.quant, p.load_options(), device=probe_device())
    cal = row.calibration
    assert cal is not None
    seconds = load_once(args.predict, database, args.timeout)
    print(
        f"loaded {args.predict} in a fresh process ({seconds:.0f} s)", file=sys.stderr
    )
    newest = journal.records(row.device_key)[0]
    actual = newest.actual_peak_bytes or 0

    print(f"device: {row.device_key}; {row.calibration_text}")
    print()
    print(
        "| load | preset | formula peak | actual peak | formula / actual "
        "| actual steady | VmHWM rise |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, rec in enumerate(reversed(journal.records(row.device_key)), 1):
        formula, real = rec.estimated_peak_bytes or 0, rec.actual_peak_bytes or 0
        steady, rss = rec.actual_steady_bytes or 0, rec.peak_rss_bytes or 0
        print(
            f"| {i} | {rec.label} | {formula / MiB:.1f} MiB | {real / MiB:.1f} MiB "
            f"| {formula / real:.3f} | {steady / MiB:.1f} MiB | {rss / MiB:.1f} MiB |"
        )
    print()
    print(f"| {args.predict} (4th) | peak | vs actual |")
    print("|---|---|---|")
    print(f"| actual | {actual / MiB:.1f} MiB | |")
    for what, value in (
        ("formulas alone", row.formula_peak_bytes),
        ("calibrated (shown)", row.load_peak_bytes),
    ):
        error = 100.0 * ((value or 0) - actual) / actual if actual else float("nan")
        print(f"| {what} | {(value or 0) / MiB:.1f} MiB | {error:+.1f}% |")
    print()
    print(
        json.dumps(
            {
                "calibration": cal.to_dict(),
                "predicted_peak_bytes": row.load_peak_bytes,
                "formula_peak_bytes": row.formula_peak_bytes,
                "actual_peak_bytes": actual,
                "records": [r.to_dict() for r in journal.records()],
            }
        )
    )
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

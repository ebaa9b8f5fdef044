"""`prepare` at the full GSM8K-TR's size against the public sample, in one run: does aligning with English GSM8K
stay linear in the rows?

    python benchmarks/prepare_scale.py            # the 300-row sample, then 8,700 rows (GSM8K-TR's size)

The full GSM8K-TR (about 8.8k rows) is not in this workplace, so (b) is the sample repeated to `--rows`, each copy's
questions opened with "Soru K:" so that none is dropped as a repeated question before it is aligned. Every copy is
aligned against the whole reference (English GSM8K's 8,792 problems) as a new row would be; copies after the first
then lose their match as a second translation of the same original (`dropped.duplicate_reference`), which costs
nothing. Both runs read the reference and build the aligner over their own rows, as `prepare` does; (b) reuses the
index of English GSM8K that (a) built, as a second `prepare` in one process does, so its once-per-run part is
mostly the reading. Prints each run's seconds, rows per second and the split into the once-per-run part (reading
English GSM8K and indexing it) and the rows' part (reading and aligning them), and (b)'s seconds per row over (a)'s:
1.0 is linear.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def repeated(source: Path, rows: int, out: Path) -> Path:
    """`source`'s rows over and over up to `rows`, copy K's questions opened with "Soru K:"."""
    with source.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields, original = reader.fieldnames, list(reader)
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for n in range(rows):
            row, copy = dict(original[n % len(original)]), n // len(original)
            if copy:
                row["question"] = f"Soru {copy + 1}: {row['question']}"
            writer.writerow(row)
    return out


def one(dataset: Path, reference: Path) -> dict:
    """`prepare` (without writing) on `dataset`: wall seconds, the aligner's build apart, and what it kept."""
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data import align, prepare

    setup = []

    def timed(function):  # reading the reference and building its index happen once per run: timed apart
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                setup.append(time.perf_counter() - start)
        return run

    recipe = load_recipe(str(ROOT / "recipes" / "turkish-gpt2-medium.yaml"),
                         [f"data.dataset={dataset}", f"data.reference={reference}"])
    load_references, build = prepare.load_references, align.Aligner.__init__
    prepare.load_references, align.Aligner.__init__ = timed(load_references), timed(build)
    try:
        start = time.perf_counter()
        report = prepare.prepare(recipe)["report"]
        seconds = time.perf_counter() - start
    finally:
        prepare.load_references, align.Aligner.__init__ = load_references, build
    return {"rows": report["rows_read"], "seconds": seconds, "setup_seconds": sum(setup),
            "aligned": report["aligned"], "dropped": report["dropped"], "written": report["written"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=str(SHARED / "gsm8k_tr_sample" / "dev.csv"), help="GSM8K-TR rows (CSV)")
    parser.add_argument("--reference", default=str(SHARED / "gsm8k"), help="English GSM8K: train.jsonl and test.jsonl")
    parser.add_argument("--rows", type=int, default=8700, help="rows of (b)")
    args = parser.parse_args()
    source, reference = Path(args.source), Path(args.reference)
    if not source.is_file() or not (reference / "test.jsonl").is_file():
        sys.exit(f"{source} or {reference}/test.jsonl not found; give --source and --reference")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"(a) sample": one(source, reference),
                f"(b) {args.rows} rows": one(repeated(source, args.rows, Path(tmp) / "rows.csv"), reference)}
    for name, r in runs.items():
        aligning = r["seconds"] - r["setup_seconds"]
        print(f"{name}: {r['rows']} rows in {r['seconds']:.1f} s ({r['rows'] / r['seconds']:.0f} rows/s): reference "
              f"read and indexed {r['setup_seconds']:.1f} s, rows read and aligned {aligning:.1f} s "
              f"({1000 * aligning / r['rows']:.1f} ms a row); aligned {r['aligned']}, dropped {r['dropped']}, "
              f"written {r['written']}")
    a, b = runs.values()
    ratio = ((b["seconds"] - b["setup_seconds"]) / b["rows"]) / ((a["seconds"] - a["setup_seconds"]) / a["rows"])
    print(f"aligning, seconds per row, (b) over (a): {ratio:.2f} (1.0: linear in the rows)")


if __name__ == "__main__":
    main()

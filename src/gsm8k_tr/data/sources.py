"""Reading question/answer rows from local files or the Hugging Face Hub.

Local files are read with the standard library rather than `datasets`, so a
bad file gets an error that names its row (`datasets` reports a pandas or
arrow traceback instead). The Hub path uses `datasets.load_dataset`, and a
folder `datasets` saved (`save_to_disk`: its own Arrow format) is read back
with `datasets.load_from_disk`.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsm8k_tr import hub
from gsm8k_tr.errors import UserError, one_line

SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")  # in any case: "DATA.CSV" as Windows may name it
MAX_FIELD_CHARS = 1_000_000  # a question or solution longer than this is not one


@dataclass
class RawRow:
    origin: str  # "path:row" or "hub-id[split]:row", for messages and the report
    split: str  # the source's own split or file name
    values: dict[str, Any]
    problem: str = ""  # why the row cannot be read as one: `prepare` refuses it, or skips and counts it
    reason: str = "not_text"  # what prepare_report.json counts such a row as


def _decode(path: Path, empty: str | None = None) -> str:
    """The file's text; an empty file is one line: `empty` where the caller knows the remedy, else what a data file
    of its kind holds."""
    data = path.read_bytes()
    if not data.strip():
        rows = {".jsonl": "one JSON object a line", ".json": "a list of JSON objects"}.get(path.suffix.lower(),
                                                                                           "a header and rows")
        raise UserError(f"{path}: {empty or f'file is empty; give a file with {rows}'}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # a byte-order mark: Excel's "Unicode text" is UTF-16
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as error:
            raise UserError(
                f"{path}: starts as UTF-16 text but is not (byte {error.start} of {len(data)}: {error.reason}); "
                "re-save the file as UTF-8"
            ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "re-save the file as UTF-8 (a Turkish Windows file is usually Windows-1254: iconv -f cp1254 -t utf-8)"
        ) from None


def delimiter(text: str) -> str:
    """The field separator of a CSV text: the one of comma, semicolon and tab that splits its header row into the
    most fields (a comma on a tie).

    Excel in a Turkish locale, where the comma is the decimal separator, writes its CSV files with semicolons.

    >>> delimiter("question;answer\\n"), delimiter('"q, with comma",answer\\n'), delimiter("soru\\tcevap")
    (';', ',', '\\t')
    """
    header = next(iter(io.StringIO(text, newline="")), "")
    return max(",;\t", key=lambda separator: len(next(csv.reader([header], delimiter=separator), [])))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line, values, problem): a row with too few or too many fields has a problem, which `prepare` refuses with its
    line (or skips and counts): an unclosed quote runs on into the rows after it, which a count alone would hide."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = _decode(path)
    separator = delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    try:
        header = [name.strip() for name in next(reader)]  # "question ," as a spreadsheet may save it: a name
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            problem = "" if len(row) == len(header) else (
                f"{len(row)} field{'s' * (len(row) != 1)} where the header has {len(header)}; a field that holds the "
                f"separator {separator!r} needs quotes, and an unclosed quote runs on into the rows after it")
            yield reader.line_num, dict(zip(header, [*row, *[""] * (len(header) - len(row))])), problem
    except csv.Error as error:
        raise UserError(f"{path}:{reader.line_num}: unreadable CSV ({error}); fix the quoting on that line") from None


def json_rows(path: Path, empty: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or item number, object) for a JSON list or JSON-lines file; bad content is a one-line error (`empty`:
    the line after the path for an empty file, as `_decode`)."""
    text = _decode(path, empty)
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # many ".json" files are JSON lines
        if document is not None:
            if isinstance(document, dict):
                lists = [v for v in document.values() if isinstance(v, list)]
                if len(lists) == 1 and all(isinstance(r, dict) for r in lists[0]):
                    document = lists[0]  # {"data": [...]}
                elif lists and all(isinstance(v, list) for v in document.values()):
                    keys = list(document)  # {"question": [...], "answer": [...]}
                    document = [dict(zip(keys, values)) for values in zip(*document.values())]
            if not isinstance(document, list):
                raise UserError(f"{path}: expected a JSON list of objects or JSON lines")
            for index, row in enumerate(document, start=1):
                if not isinstance(row, dict):
                    raise UserError(f"{path}: item {index} is {type(row).__name__}, not an object with named fields")
                yield index, row
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: malformed JSON line ({error.msg}, column {error.colno}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: JSON line is {type(row).__name__}, not an object with named fields")
        yield number, row


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq  # comes with `datasets`

    try:
        table = pq.read_table(path)
    except Exception as error:  # arrow raises several types for bad files
        raise UserError(f"{path}: unreadable Parquet file ({one_line(error)})") from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield index, row


# The Hub's shard names: "test-00000-of-00001.parquet" holds (part of) the split "test".
_SHARD = re.compile(r"-\d+-of-\d+$")


def split_name(path: Path) -> str:
    """The split a data file holds: its name without the type, and without the Hub's shard numbers.

    >>> split_name(Path("main/test-00000-of-00001.parquet")), split_name(Path("Train.JSONL"))
    ('test', 'train')
    """
    return _SHARD.sub("", path.stem).lower()  # "Test.csv" holds the test split as "test.csv" does


def _file_rows(path: Path) -> Iterator[RawRow]:
    if path.suffix.lower() in (".csv", ".tsv"):  # the separator is read from the header either way
        for number, values, problem in _csv_rows(path):
            yield RawRow(f"{path}:{number}", split_name(path), values, problem, "ragged_csv_row")
        return
    if path.suffix.lower() in (".json", ".jsonl"):
        rows = json_rows(path)
    else:
        rows = _parquet_rows(path)
    for number, values in rows:
        yield RawRow(f"{path}:{number}", split_name(path), values)


def looks_local(spec: str) -> bool:
    """Whether a data spec is meant as a path rather than a Hub id."""
    return (
        Path(spec).exists()
        or hub.names_a_path(spec)
        or spec.lower().endswith(SUFFIXES)
        or spec.count("/") != 1
    )


def saved_by_datasets(path: Path) -> bool:
    """Whether `path` is a folder that `datasets`' `save_to_disk` wrote: a DatasetDict (`dataset_dict.json` and a
    folder per split) or one Dataset (`state.json`, `dataset_info.json` and its Arrow files)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


def _saved_rows(path: Path) -> Iterator[RawRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # a missing shard, a damaged Arrow file, a newer format: all one line to the user
        raise UserError(f"{path}: a folder written by datasets' save_to_disk that it cannot read back "
                        f"({one_line(error)[:160]}); save it again, or give CSV, JSON, JSONL or Parquet "
                        "files") from None
    # One Dataset keeps the split it was loaded as ("train"), or none: then its folder names it.
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(str(loaded.split or path.name), loaded)]
    yield from _split_rows(str(path), splits)


def _split_rows(name: str, splits: Any) -> Iterator[RawRow]:
    """The rows of (split, table) pairs from `datasets`, each named "name[split]:row"."""
    for split, table in splits:
        for index, values in enumerate(table, start=1):
            yield RawRow(f"{name}[{split}]:{index}", str(split), values)


def _existing(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data file {spec!r} does not exist; give a CSV, JSON, JSONL or Parquet file, a folder of them, or a Hub id")
    return path


def _data_files(spec: str, path: Path) -> list[Path]:
    """The data files of a local source that `datasets` did not save; a folder without any is one line."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in SUFFIXES and p.name not in ("report.json", "prepare_report.json"))
        if not files:
            # A Hub download keeps its files a level down (`data/`, or a folder per config: `main/`, `socratic/`).
            inner = sorted(p.name for p in path.iterdir()
                           if p.is_dir() and any(f.suffix.lower() in SUFFIXES for f in p.iterdir()))
            hint = f"; give the folder inside it that holds them: {' or '.join(inner)}" if inner else ""
            raise UserError(f"folder {spec!r} holds no {', '.join(SUFFIXES)} files{hint}")
        return files
    if path.suffix.lower() not in SUFFIXES:
        # datasets' own Arrow files are read through the folder save_to_disk wrote them into, with its split names
        arrow = ("; for datasets' Arrow files give the folder save_to_disk wrote" if path.suffix.lower() == ".arrow"
                 else "")
        raise UserError(f"data file {spec!r} has an unknown type; use one of {', '.join(SUFFIXES)}{arrow}")
    return [path]


def _local_rows(spec: str) -> Iterator[RawRow]:
    path = _existing(spec)
    if path.is_dir() and saved_by_datasets(path):
        yield from _saved_rows(path)
        return
    for file in _data_files(spec, path):
        yield from _file_rows(file)


def no_test_split(spec: str, splits: set[str]) -> str:
    """The line for a reference without a test split, through which the translated test questions are found: `prepare`
    refuses it when it reads the rows, the recipe check by the splits' names before any work."""
    return (f"{spec!r} has no 'test' split (it has {', '.join(sorted(splits))}); give English GSM8K's train and test "
            "(files named train.* and test.*, a save_to_disk folder, or its Hub id), or none")


def local_splits(spec: str) -> set[str]:
    """The splits a local source holds, as `read_rows` names them, from its file names alone (no row is read)."""
    path = _existing(spec)
    if not (path.is_dir() and saved_by_datasets(path)):
        return {split_name(file) for file in _data_files(spec, path)}
    try:
        if (path / "dataset_dict.json").is_file():
            listed = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            return {str(name) for name in listed}
        return {str(json.loads((path / "state.json").read_text(encoding="utf-8")).get("_split") or path.name)}
    except (OSError, ValueError, KeyError, TypeError) as error:  # json's errors are ValueErrors
        raise UserError(f"{path}: a folder written by datasets' save_to_disk whose split list cannot be read "
                        f"({one_line(error)[:160]}); save it again") from None


def _hub_rows(spec: str, config: str | None) -> Iterator[RawRow]:
    hub.before_loading(spec)
    import datasets

    try:
        loaded = datasets.load_dataset(spec, config)
    except Exception as error:  # offline, unknown id, gated: all mean the same to the user
        reason = one_line(error)[:200]
        raise UserError(
            f"{spec!r} is not a local path and the Hugging Face Hub could not provide it ({reason})"
            f"{hub.unreachable_note()}; check the id and your connection, or download it and pass the local file"
        ) from None
    yield from _split_rows(spec, loaded.items())


def _synthetic_rows(spec: str) -> Iterator[RawRow]:
    from gsm8k_tr.data.synth import make_problems

    _, _, count = spec.partition(":")
    if count and not count.isdigit():
        raise UserError(f"data source {spec!r}: write synthetic:N with N a whole number, e.g. synthetic:2000")
    for index, row in enumerate(make_problems(int(count or 2000)), start=1):
        # The verified answer comes as a `#### N` label, the machine-written solution before it.
        values = {"question": row["question"], "answer": f"{row['solution']}\n#### {row['gold']}"}
        yield RawRow(f"synthetic:{index}", "synthetic", values)


def missing_column(source: str, column: str, columns: list[Any], key: str | None) -> str:
    """The line for a source without `column`: its columns, and the recipe `key` that maps it (None: no key does)."""
    names = ", ".join(repr(str(name)) for name in columns)
    near = next((str(name) for name in columns if str(name).strip().casefold() == column.casefold()), None)
    fix = ("give English GSM8K with its own columns, question and answer" if key is None
           else f"map it with {key}={near}" if near is not None else f"map it with {key}=NAME")
    return f"{source}: no column {column!r}; its columns are {names}; {fix}"


def read_rows(spec: str, config: str | None, columns: list[str], limit: int | None = None,
              keys: dict[str, str] | None = None) -> list[RawRow]:
    """All rows of a data source, checked to hold `columns`; a row that cannot be read as one carries its problem.

    `spec` is a local file or folder, a Hub id, or `synthetic[:N]` for generated problems. `keys` names the recipe
    key that maps each column, for the line a missing one gets (none: the columns cannot be mapped).
    """
    if spec == "synthetic" or spec.startswith("synthetic:"):
        rows_iter = _synthetic_rows(spec)
    elif looks_local(spec):
        rows_iter = _local_rows(spec)
    else:
        rows_iter = _hub_rows(spec, config)
    rows: list[RawRow] = []
    checked: set[str] = set()
    for row in rows_iter:
        source = row.origin.rsplit(":", 1)[0]
        if source not in checked:  # columns are checked once per file or split
            missing = [c for c in columns if c not in row.values]
            if missing:
                raise UserError(missing_column(source, missing[0], list(row.values), (keys or {}).get(missing[0])))
            checked.add(source)
        for column in columns:
            value = row.values[column]
            # A list or an object would be written out as its Python repr ("['Ali 3 elma aldı']") and trained on.
            if not (value is None or isinstance(value, (str, numbers.Number))) or isinstance(value, bool):
                row.problem = row.problem or (f"column {column!r} holds {type(value).__name__} {repr(value)[:60]}, "
                                              "not text or a number")
                value = None
            # Windows line ends (a CSV saved by Excel) would teach the model to write carriage returns.
            row.values[column] = "" if value is None else str(value).replace("\r\n", "\n").replace("\r", "\n")
        if not row.problem and any(len(row.values[c]) > MAX_FIELD_CHARS for c in columns):
            row.problem = f"a field of over {MAX_FIELD_CHARS:,} characters, which is no grade-school problem"
            row.reason = "field_too_long"
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise UserError(f"data source {spec!r} has no rows")
    return rows

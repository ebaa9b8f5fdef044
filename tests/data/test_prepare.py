"""`prepare` on small files the tests write: alignment, gold, splits, report, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_DATASETS, REFERENCE, SHARED_DATA, TURKISH, write_csv

from gsm8k_tr.cli import main


def run_prepare(*args: str) -> int:
    return main(["prepare", *args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_alignment_gives_official_gold_and_split(turkish_csv: Path, reference_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(reference_dir), "--output", str(out)) == 0
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    validation = read_jsonl(out / "validation.jsonl")
    report = json.loads((out / "prepare_report.json").read_text())
    by_question = {r["question"]: r for r in train + validation + test}
    cookie = by_question[TURKISH[4][0]]
    # The solution says 8, the official answer is 9: gold comes from the reference,
    # the row keeps the test split, and the disagreement is flagged.
    assert cookie["answer"] == "9" and cookie["gold_source"] == "reference"
    assert cookie["reference_split"] == "test" and cookie in test
    assert cookie["solution_agrees"] is False
    farm = by_question[TURKISH[3][0]]
    assert farm["answer"] == "1000" and farm["reference_index"] == 3 and farm["solution_agrees"]
    # The goat question has no English original: flagged, gold from its own solution.
    goats = by_question[TURKISH[6][0]]
    assert goats["aligned"] is False and goats["gold_source"] == "solution" and goats["answer"] == "9"
    assert report["rows_read"] == 7 and report["aligned"] == 6 and report["unaligned"] == 1
    assert report["test_rows_found"] == 2 and report["solution_gold_disagreements"] == 1
    # Validation: a quarter of train when train is this small (5 rows: 1), by question hash.
    assert report["written"] == {"train": 4, "validation": 1, "test": 2} and report["samples"]
    assert report["sft_usable_train_rows"] == 4 and report["excluded"] == {} and report["numbers_changed"] == 0
    assert (out / "recipe.yaml").is_file()


def assert_prepared_as_the_files(prepared: Path, from_files: Path, source: str) -> None:
    """`prepared` holds the rows `from_files` (prepared from the tests' CSV) holds, each named as `source`'s split
    "train" names it: by its row, where the CSV names its line."""
    for name in ("train", "validation", "test", "excluded"):
        rows, files = read_jsonl(prepared / f"{name}.jsonl"), read_jsonl(from_files / f"{name}.jsonl")
        lines = [int(row.pop("source").rsplit(":", 1)[1]) for row in files]  # the CSV's header is line 1
        assert [row.pop("source") for row in rows] == [f"{source}[train]:{n - 1}" for n in lines]
        assert rows == files


def test_the_recipes_hub_datasets_read_as_their_files_do(turkish_csv: Path, reference_dir: Path, tmp_path: Path,
                                                         hub_datasets: list) -> None:
    # The defaults: GSM8K-TR from the Hub (one split, "train", whatever its rows are) and English GSM8K's `main`
    # config (train and test), stood in with the same rows as the local files.
    assert run_prepare("--output", str(tmp_path / "hub")) == 0
    assert sorted(hub_datasets) == sorted(HUB_DATASETS)
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(reference_dir),
                       "--output", str(tmp_path / "files")) == 0
    assert_prepared_as_the_files(tmp_path / "hub", tmp_path / "files", "ytu-ce-cosmos/gsm8k_tr")
    reports = [json.loads((tmp_path / where / "prepare_report.json").read_text()) for where in ("hub", "files")]
    assert reports[0]["written"] == reports[1]["written"] == {"train": 4, "validation": 1, "test": 2}


def test_a_hub_download_of_the_reference_reads_as_its_files_do(turkish_csv: Path, reference_dir: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # `huggingface-cli download openai/gsm8k` keeps each config in a folder of shards named
    # "test-00000-of-00001.parquet": read as a split named by its whole file name, no reference row was a test
    # question, and every translated test question went to train without a word.
    import pyarrow as pa
    import pyarrow.parquet as pq

    main_config = tmp_path / "download" / "main"
    main_config.mkdir(parents=True)
    (tmp_path / "download" / "README.md").write_text("GSM8K", encoding="utf-8")
    for split, rows in REFERENCE.items():
        for shard, part in enumerate((rows[:2], rows[2:])):  # two shards: row indices run on across them
            table = pa.table({"question": [q for q, _ in part], "answer": [a for _, a in part]})
            pq.write_table(table, main_config / f"{split}-{shard:05d}-of-00002.parquet")
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(main_config),
                       "--output", str(tmp_path / "hub")) == 0
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(reference_dir),
                       "--output", str(tmp_path / "files")) == 0
    for name in ("train", "validation", "test", "excluded"):
        assert read_jsonl(tmp_path / "hub" / f"{name}.jsonl") == read_jsonl(tmp_path / "files" / f"{name}.jsonl")
    assert json.loads((tmp_path / "hub" / "prepare_report.json").read_text())["test_rows_found"] == 2
    capsys.readouterr()
    # The download's own folder holds only its README and the config folders: one line naming the folder to give.
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(tmp_path / "download"),
                       "--output", str(tmp_path / "top")) == 2
    assert "give the folder inside it that holds them: main" in capsys.readouterr().err
    # A reference without a test split would train on every translated test question: one line, no output.
    (main_config.parent / "train_only").mkdir()
    (main_config / "train-00000-of-00002.parquet").rename(main_config.parent / "train_only" / "train.parquet")
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(main_config.parent / "train_only"),
                       "--output", str(tmp_path / "no_test")) == 2
    assert "has no 'test' split (it has train)" in capsys.readouterr().err
    assert not (tmp_path / "no_test").exists()


def test_folders_saved_by_datasets_read_as_their_files_do(turkish_csv: Path, reference_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    # `DatasetDict.save_to_disk` (Arrow, a folder per split): before, its dataset_dict.json was read as the data,
    # "no column 'question'; columns are: splits".
    import datasets

    def saved(rows: dict[str, list[tuple[str, str]]], folder: Path) -> Path:
        datasets.DatasetDict({split: datasets.Dataset.from_dict({"question": [q for q, _ in part],
                                                                  "answer": [a for _, a in part]})
                              for split, part in rows.items()}).save_to_disk(str(folder))
        return folder

    source, reference = saved({"train": TURKISH}, tmp_path / "tr"), saved(REFERENCE, tmp_path / "en")
    assert run_prepare("--dataset", str(source), "--reference", str(reference),
                       "--output", str(tmp_path / "arrow")) == 0
    assert run_prepare("--dataset", str(turkish_csv), "--reference", str(reference_dir),
                       "--output", str(tmp_path / "files")) == 0
    assert_prepared_as_the_files(tmp_path / "arrow", tmp_path / "files", str(source))
    assert json.loads((tmp_path / "arrow" / "prepare_report.json").read_text())["test_rows_found"] == 2
    # One split's own folder: one Dataset, which keeps no split name of its own, so its folder names it
    assert run_prepare("--dataset", str(source / "train"), "--reference", str(reference),
                       "--output", str(tmp_path / "one")) == 0
    assert read_jsonl(tmp_path / "one" / "train.jsonl")[0]["source"].startswith(f"{source / 'train'}[train]:")
    # One of its Arrow files, or a damaged folder: one line, naming what to give or the folder
    arrow_file = next((source / "train").glob("*.arrow"))
    capsys.readouterr()
    assert run_prepare("--dataset", str(arrow_file), "--reference", "none", "--output", str(tmp_path / "file")) == 2
    assert capsys.readouterr().err.rstrip().endswith("for datasets' Arrow files give the folder save_to_disk wrote")
    arrow_file.write_bytes(b"not arrow")
    assert run_prepare("--dataset", str(source), "--reference", "none", "--output", str(tmp_path / "bad")) == 2
    assert capsys.readouterr().err.startswith(f"gsm8k-tr prepare: error: {source}: a folder written by datasets' "
                                              "save_to_disk that it cannot read back (")


def test_without_a_reference_a_source_keeps_its_own_test_split(tmp_path: Path) -> None:
    # A user's own Turkish problems in train and test files: a hash split would train on some of their test questions.
    source = tmp_path / "mine"
    source.mkdir()
    for split, first in (("train", 0), ("test", 100)):
        rows = [{"question": f"Soru {i}: {i} elma ve {i + 1} armut?",
                 "answer": f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}"} for i in range(first, first + 40)]
        (source / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert run_prepare("--dataset", str(source), "--reference", "none", "--output", str(tmp_path / "out")) == 0
    split_of = {r["question"]: name for name in ("train", "validation", "test")
                for r in read_jsonl(tmp_path / "out" / f"{name}.jsonl")}
    assert len(split_of) == 80
    assert all((split_of[q] == "test") == (int(q.split()[1].rstrip(":")) >= 100) for q in split_of)
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["test_split"] == "source"
    # One file, whatever its name (a lone test.jsonl too, which would leave nothing to train on): the hash split.
    (source / "test.jsonl").rename(tmp_path / "test.jsonl")
    for alone in (source / "train.jsonl", tmp_path / "test.jsonl"):
        out = tmp_path / f"hashed-{alone.stem}"
        assert run_prepare("--dataset", str(alone), "--reference", "none", "--output", str(out)) == 0
        report = json.loads((out / "prepare_report.json").read_text())
        assert report["test_split"] == "hash" and report["written"]["train"] > 0, alone


def test_tab_separated_files_and_names_in_capitals_read_as_their_lowercase_csv_would(tmp_path: Path) -> None:
    # Before, "data.tsv" and "DATA.CSV" were "an unknown type", and "Test.csv" was a split named "Test", not test.
    source = tmp_path / "mine"
    source.mkdir()
    for name, first in (("Train.TSV", 0), ("Test.CSV", 100)):
        rows = [(f"Soru {i}: {i} elma ve {i + 1} armut?", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}")
                for i in range(first, first + 40)]
        with open(source / name, "w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t" if name.endswith("TSV") else ",").writerows([("question", "answer"), *rows])
    assert run_prepare("--dataset", str(source), "--reference", "none", "--output", str(tmp_path / "out")) == 0
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["test_split"] == "source" and report["rows_read"] == 80 and report["written"]["test"] == 40


def test_with_a_reference_a_source_test_split_still_never_reaches_training(reference_dir: Path, tmp_path: Path) -> None:
    # The user's test file holds a question without an English original (goats) and one matching an English *training*
    # question (Tom's pages): the reference alone would put both in training, one as an unaligned row.
    source = tmp_path / "mine"
    source.mkdir()
    test_rows = [TURKISH[6], TURKISH[2]]
    write_csv(source / "train.csv", [row for row in TURKISH if row not in test_rows])
    write_csv(source / "test.csv", test_rows)
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(source), "--reference", str(reference_dir), "--output", str(out)) == 0
    split_of = {r["question"]: name for name in ("train", "validation", "test")
                for r in read_jsonl(out / f"{name}.jsonl")}
    assert {q for q, name in split_of.items() if name == "test"} == {TURKISH[i][0] for i in (2, 4, 5, 6)}
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["test_split"] == "reference+source" and report["source_test_kept"] == 2
    assert report["aligned"] == 6 and report["test_rows_found"] == 2 and report["written"]["test"] == 4
    # The same rows in one file: the reference's split alone, and nothing kept back.
    one = write_csv(tmp_path / "one.csv", TURKISH)
    assert run_prepare("--dataset", str(one), "--reference", str(reference_dir), "--output", str(tmp_path / "one")) == 0
    report = json.loads((tmp_path / "one" / "prepare_report.json").read_text())
    assert report["test_split"] == "reference" and report["source_test_kept"] == 0 and report["written"]["test"] == 2


def test_unaligned_rows_can_be_dropped(turkish_csv: Path, reference_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_prepare("--dataset", str(turkish_csv), "--reference", str(reference_dir), "--output", str(out), "data.keep_unaligned=false")
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["dropped"] == {"unaligned": 1} and report["written"]["train"] + report["written"]["validation"] == 4


def test_reference_none_splits_by_hash_and_reads_hash_answers(tmp_path: Path) -> None:
    rows = [(f"Soru {i}: {i} elma ve {i + 1} armut?", f"{i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n#### {2 * i + 1}") for i in range(40)]
    src = write_csv(tmp_path / "hash.csv", rows)
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(src), "--reference", "none", "--output", str(out), "data.test_fraction=0.25") == 0
    train, test = read_jsonl(out / "train.jsonl"), read_jsonl(out / "test.jsonl")
    validation = read_jsonl(out / "validation.jsonl")
    assert len(train) + len(validation) + len(test) == 40 and 0 < len(test) < 25 and validation
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    first = next(r for r in train + validation + test if r["question"].startswith("Soru 3:"))
    assert first["answer"] == "7" and first["solution"] == "3 + 4 = 7" and first["gold_source"] == "solution"


def test_jsonl_json_parquet_and_column_mapping(tmp_path: Path, reference_dir: Path) -> None:
    records = [{"soru": q, "yanit": a} for q, a in TURKISH]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8")
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps({"data": records}, ensure_ascii=False), encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    for i, source in enumerate((jsonl, as_json, parquet)):
        out = tmp_path / f"out{i}"
        code = run_prepare("--dataset", str(source), "--reference", str(reference_dir), "--output", str(out),
                           "data.question_column=soru", "data.answer_column=yanit")
        assert code == 0, source
        assert json.loads((out / "prepare_report.json").read_text())["aligned"] == 6


def test_refuses_to_overwrite_without_flag(turkish_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    args = ["--dataset", str(turkish_csv), "--reference", "none", "--output", str(out)]
    assert run_prepare(*args) == 0
    (out / "keep.txt").write_text("mine")
    assert run_prepare(*args) == 2
    assert "pass --overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert run_prepare(*args, "--overwrite") == 0 and not (out / "keep.txt").exists()


def _bad_files(tmp_path: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("question,answer\nAyşe'nin 3 elması var,3\n".encode("latin-1", errors="replace").replace(b"?", b"\xfe"))
    torn = tmp_path / "torn.csv"  # a UTF-16 byte-order mark and an odd number of bytes: cut short mid-character
    torn.write_bytes("question,answer\nAyşe'nin 3 elması var,3\n".encode("utf-16")[:-1])
    unclosed = tmp_path / "unclosed.csv"  # the quote runs to the end: one field where the header has two
    unclosed.write_text('question,answer\n"Ali 3 elma aldı, 2 daha aldı\n', encoding="utf-8")
    listed = tmp_path / "listed.jsonl"  # a list where text belongs would be trained on as its Python repr
    listed.write_text('{"question": ["Ali 3 elma aldı"], "answer": "3"}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a 1", "answer": "1"}\n{"question": oops}\n')
    no_question = write_csv(tmp_path / "noq.csv", [("  ", "3 elma")])
    no_number = write_csv(tmp_path / "nonum.csv", [("Kaç elma var?", "Bilmiyorum.")])
    wrong_cols = write_csv(tmp_path / "cols.csv", [("a", "b")], header=("soru", "cevap"))
    capitals = write_csv(tmp_path / "caps.csv", [("a", "b")], header=("Question", "Answer"))
    good, reference = write_csv(tmp_path / "good.csv", TURKISH), write_csv(tmp_path / "reference.csv", [("a", "b")],
                                                                           header=("soru", "cevap"))
    return [
        # (arguments, message fragment) — each must be one line naming the file, row or column
        (["--dataset", str(tmp_path / "missing.csv")], "does not exist"),
        (["--dataset", str(empty)], "empty.csv: file is empty; give a file with a header and rows"),
        (["--dataset", str(empty_jsonl)], "empty.jsonl: file is empty; give a file with one JSON object a line"),
        (["--dataset", str(latin)], "latin.csv: not UTF-8 text (byte 0xfe"),
        (["--dataset", str(torn)], "torn.csv: starts as UTF-16 text but is not (byte 80 of 81: truncated data)"),
        (["--dataset", str(broken)], "broken.jsonl:2: malformed JSON line"),
        (["--dataset", str(unclosed)], "unclosed.csv:2: 1 field where the header has 2; a field that holds the "
                                        "separator ',' needs quotes, and an unclosed quote runs on into the rows"),
        (["--dataset", str(listed)], "listed.jsonl:1: column 'question' holds list ['Ali 3 elma aldı'], not text"),
        (["--dataset", str(no_question)], "noq.csv:2: empty question"),
        (["--dataset", str(no_number)], "nonum.csv:2: no number in the question or the answer"),
        (["--dataset", str(wrong_cols)], "cols.csv: no column 'question'; its columns are 'soru', 'cevap'; map it "
                                         "with data.question_column=NAME"),
        (["--dataset", str(capitals)], "no column 'question'; its columns are 'Question', 'Answer'; map it with "
                                       "data.question_column=Question"),
        (["--dataset", str(wrong_cols), "data.question_column=soru"], "no column 'answer'; its columns are 'soru', "
                                                                      "'cevap'; map it with data.answer_column=NAME"),
        (["--dataset", str(good), "--reference", str(reference)], "reference.csv: no column 'question'; its columns "
                                                                   "are 'soru', 'cevap'; give English GSM8K with its "
                                                                   "own columns, question and answer"),
        (["--dataset", "runs/çıktı"], "data file 'runs/çıktı' does not exist"),  # no Hub id: a path
        (["--dataset", "nobody/no-such-dataset-xyz"], "'nobody/no-such-dataset-xyz' is not a local path and the Hugging Face Hub could not provide it"),
    ]


def test_bad_input_gets_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for args, message in _bad_files(tmp_path):
        code = run_prepare(*args, *([] if "--reference" in args else ["--reference", "none"]),
                           "--output", str(tmp_path / "o"))
        err = capsys.readouterr().err.strip()
        assert code == 2, args
        assert message in err and "\n" not in err and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()  # nothing half-written


def test_bad_rows_can_be_skipped_and_counted(tmp_path: Path) -> None:
    rows = [("", "3"), ("Kaç elma var?", "Bilmiyorum."), ("Ali'nin 2 elması var, kaç elması var?", "2 elması var.")]
    src = write_csv(tmp_path / "mixed.csv", rows)
    with open(src, "a", encoding="utf-8") as handle:
        handle.write('"ragged row",1,2\n')
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(src), "--reference", "none", "--output", str(out), "data.skip_invalid_rows=true") == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["dropped"] == {"empty_question": 1, "no_number": 1, "ragged_csv_row": 1}
    assert sum(report["written"].values()) == 1 and report["rows_read"] == 4
    # JSON values that are not text: a number is an answer as it stands, a list or true is not.
    lines = [{"question": "Ali'nin 2 elması var, 3 tane daha aldı. Kaç elması var?", "answer": 5},
             {"question": "Ayşe'nin 4 kalemi var, 1 tane verdi. Kaç kalemi kaldı?", "answer": True},
             {"question": {"tr": "Ahmet 6 km koştu, sonra 2 km daha. Kaç km koştu?"}, "answer": "8"}]
    src = tmp_path / "typed.jsonl"
    src.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out-typed"
    args = ("--dataset", str(src), "--reference", "none", "--output", str(out), "data.skip_invalid_rows=true")
    assert run_prepare(*args) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["dropped"] == {"not_text": 2} and sum(report["written"].values()) == 1
    kept = [json.loads(line) for split in ("train", "validation", "test") for line in (out / f"{split}.jsonl").open()]
    assert [row["answer"] for row in kept] == ["5"]


def test_a_source_whose_every_row_is_skipped_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Skipped and counted, every one: an empty data folder was written, and training then had nothing to read
    src = write_csv(tmp_path / "bad.csv", [("", "3"), ("Kaç elma var?", "Bilmiyorum.")])
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(src), "--reference", "none", "--output", str(out),
                       "data.skip_invalid_rows=true") == 2
    assert ("none of its 2 rows is left to write (empty_question: 1, no_number: 1; prepare_report.json's names)"
            in capsys.readouterr().err)
    assert not out.exists()


def test_semicolon_csv_from_a_turkish_excel_reads_like_the_comma_one(turkish_csv: Path, tmp_path: Path) -> None:
    # Excel in a Turkish locale saves CSV with semicolons (the comma is the decimal separator) and a BOM.
    rows = list(csv.reader(turkish_csv.open(encoding="utf-8", newline="")))
    # A decimal comma and a semicolon in a quoted field, and a solution of two lines.
    rows.append(["Bir kilo elma 12,5 TL; 2 kilo kaç TL?", "2 x 12,5 = 25 TL eder.\nCevap: 25"])
    semicolons = tmp_path / "excel.csv"
    with open(semicolons, "w", encoding="utf-8-sig", newline="") as handle:  # and Windows line ends, in fields too
        csv.writer(handle, delimiter=";", lineterminator="\r\n").writerows(
            [["question ", " answer"]]  # spaces around the header's names, as a spreadsheet may keep them
            + [[cell.replace("\n", "\r\n") for cell in row] for row in rows[1:]])
    commas = write_csv(tmp_path / "commas.csv", [tuple(row) for row in rows[1:]])
    written = {}
    for source in (commas, semicolons):
        out = tmp_path / f"out-{source.stem}"
        assert run_prepare("--dataset", str(source), "--reference", "none", "--output", str(out)) == 0
        report = json.loads((out / "prepare_report.json").read_text())
        assert report["rows_read"] == len(rows) - 1 and not report["dropped"]
        written[source.stem] = sorted((json.loads(line)["question"], json.loads(line)["solution"],
                                       json.loads(line)["answer"])
                                      for split in ("train", "validation", "test")
                                      for line in (out / f"{split}.jsonl").read_text().splitlines())
    assert written["excel"] == written["commas"]
    assert ("Bir kilo elma 12,5 TL; 2 kilo kaç TL?", "2 x 12,5 = 25 TL eder.\nCevap: 25", "25") in written["excel"]


def test_cli_process_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run([sys.executable, "-m", "gsm8k_tr", "prepare", "--dataset", str(tmp_path / "nope.csv"),
                             "--output", str(tmp_path / "o")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k_tr_sample" / "dev.csv").exists(), reason="shared GSM8K-TR sample not present")
def test_shared_sample_aligns(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    assert run_prepare("--dataset", str(SHARED_DATA / "gsm8k_tr_sample" / "dev.csv"),
                       "--reference", str(SHARED_DATA / "gsm8k"), "--output", str(out)) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["aligned"] / report["rows_read"] >= 0.9
    # Translated test questions are found (about 15% of the data set).
    assert 0.08 <= report["test_rows_found"] / report["rows_read"] <= 0.25
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "test.jsonl")
    # Aligned gold answers agree with the machine-written solutions most of the time.
    aligned = [r for r in rows if r["aligned"]]
    assert sum(r["solution_agrees"] for r in aligned) / len(aligned) >= 0.7
    # About one answer in six only states the result ("Tom 7 yaşındadır."): counted, and left out of SFT.
    assert 0.12 <= report["solution_shows_no_work"] / sum(report["written"].values()) <= 0.25


def test_prepare_statistics_have_their_own_name_and_older_folders_still_read(tmp_path: Path) -> None:
    from gsm8k_tr.data.splits import is_prepared, report_path

    for name in ("prepare_report.json", "report.json"):  # the name now, and before 0.2
        folder = tmp_path / name
        folder.mkdir()
        for split in ("train", "test"):
            (folder / f"{split}.jsonl").write_text(json.dumps({"question": "a 1", "answer": "1"}) + "\n")
        assert not is_prepared(folder)
        (folder / name).write_text("{}")
        assert is_prepared(folder) and report_path(folder) == folder / name


# English originals of the hard rows below, with fillers; GSM8K's own wording, answers and split.
HARD_REFERENCE = {
    "train": [
        ("An alien invades Earth.  It abducts 200 people.  He returns 80% of the people abducted.  After that he takes "
         "10 people to another planet.  He took the rest to his home planet.  How many people did he take to his home "
         "planet?", "200*.8=160\n200-160=40\n40-10=30\n#### 30"),
        ("Traveling from Manhattan to the Bronx, Andrew rides the subway for 10 hours, takes the train and rides for "
         "twice as much time as the subway ride, and then bikes the remaining distance for 8 hours. What's the total "
         "time he takes to reach the Bronx from Manhattan?", "2*10=20\n10+20=30\n30+8=38\n#### 38"),
        ("Mark can jump 6 inches off the ground. Lisa can jump double the height as Mark, and Jacob can jump double "
         "the height of Lisa. If James jumps 2/3 as high Jacob, how high can James jump?",
         "6*2=12\n12*2=24\n24*2/3=16\n#### 16"),
        *((question, answer) for question, answer in REFERENCE["train"]),
    ],
    "test": [
        ("Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
         "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
         "egg. How much in dollars does she make every day at the farmers' market?", "16-3-4=9\n9*2=18\n#### 18"),
        *((question, answer) for question, answer in REFERENCE["test"]),
    ],
}
ALIEN = ("Bir uzaylı Dünya'yı istila eder. 200 kişiyi kaçırır. Kaçırılan insanların %80'ini geri getirir. Daha sonra "
         "10 kişiyi başka bir gezegene götürür. Geri kalanları kendi gezegenine götürür. Kendi gezegenine kaç kişi "
         "götürmüştür?")
# The machine-written solution is wrong, and its final number is the subway problem's official answer.
ALIEN_SOLUTION = "Uzaylı 200 kişiden 10 kişiyi başka gezegene götürdü, 2 x 10 = 20, 10 + 20 = 30. Sonra 30 + 8 = 38 kişi."
# "6 inches" became "15 cm": the official answer (16) no longer fits.
MARK = ("Mark yerden 15 cm yükseğe zıplayabilir. Lisa, Mark'ın iki katı yüksekliğe zıplayabilir ve Jacob da Lisa'nın "
        "iki katı yüksekliğe zıplayabilir. James, Jacob'ın 2/3'ü kadar yükseğe zıplarsa, James ne kadar yükseğe "
        "zıplayabilir?")
# A translated GSM8K test question whose numbers were all changed.
DUCKS = ("Janet'in ördekleri günde 20 yumurta yumurtluyor. Her sabah kahvaltıda 5 tanesini yiyor ve her gün "
         "arkadaşları için 6 tanesiyle kek pişiriyor. Geri kalanını her gün çiftçi pazarında tanesi 3 dolardan "
         "satıyor. Çiftçi pazarında her gün kaç dolar kazanıyor?")


def _hard(tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    reference = tmp_path / "gsm8k"
    reference.mkdir(parents=True)
    for split, rows in HARD_REFERENCE.items():
        (reference / f"{split}.jsonl").write_text(
            "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8")
    rows = [(ALIEN, ALIEN_SOLUTION), (MARK, "15 x 2 = 30, 30 x 2 = 60, 60 x 2/3 = 40 cm."),
            (DUCKS, "20 - 5 - 6 = 9, 9 x 3 = 27 dolar."), *TURKISH]
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(write_csv(tmp_path / "tr.csv", rows)), "--reference", str(reference),
                       "--output", str(out), *extra) == 0
    placed = {r["question"]: (split, r) for split in ("train", "validation", "test", "excluded")
              for r in read_jsonl(out / f"{split}.jsonl")}
    return out, placed


def test_a_wrong_solution_with_another_problems_answer_keeps_the_true_original(tmp_path: Path) -> None:
    _, placed = _hard(tmp_path)
    split, alien = placed[ALIEN]
    assert alien["reference_split"] == "train" and alien["reference_index"] == 0  # not the subway problem (1)
    assert alien["answer"] == "30" and alien["solution_answer"] == "38" and alien["solution_agrees"] is False
    assert split in ("train", "validation")


def test_a_translation_with_changed_numbers_is_flagged_and_kept_out_of_training(tmp_path: Path) -> None:
    out, placed = _hard(tmp_path)
    where, mark = placed[MARK]
    assert where == "excluded" and mark["reason"] == "numbers_changed" and mark["numbers_changed"] is True
    assert mark["reference_index"] == 2 and "answer" not in mark and mark["reference_answer"] == "16"
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["numbers_changed"] == 1 and report["excluded"]["numbers_changed"] == 1
    doubtful = report["samples"][0]  # the least certain alignment comes first, for a person to check
    assert doubtful["why"] == "lowest number agreement" and doubtful["question"] == MARK
    # Kept on request, with its own answer: the official one belongs to other numbers.
    _, placed = _hard(tmp_path / "keep", "data.keep_numbers_changed=true")
    where, mark = placed[MARK]
    assert where in ("train", "validation") and mark["answer"] == "40" and mark["gold_source"] == "solution"


def test_a_paraphrased_test_question_with_other_numbers_never_reaches_training(tmp_path: Path) -> None:
    out, placed = _hard(tmp_path)
    where, ducks = placed[DUCKS]
    assert where in ("test", "excluded"), ducks
    report = json.loads((out / "prepare_report.json").read_text())
    assert sum(report["excluded"].values()) == len(read_jsonl(out / "excluded.jsonl"))


def test_validation_is_disjoint_from_train_and_test_and_stable(tmp_path: Path) -> None:
    args = ("--dataset", "synthetic:600", "--reference", "none", "data.test_fraction=0.1")
    runs = []
    for name in ("a", "b"):
        assert run_prepare(*args, "--output", str(tmp_path / name)) == 0
        runs.append({split: read_jsonl(tmp_path / name / f"{split}.jsonl") for split in ("train", "validation", "test")})
    questions = {split: {r["question"] for r in rows} for split, rows in runs[0].items()}
    assert not questions["validation"] & questions["train"] and not questions["validation"] & questions["test"]
    assert len(questions["validation"]) == 64  # at least 64: 5% of ~540 train rows would be 27
    assert runs[0] == runs[1]  # the same rows, in the same order, every run


def test_answer_only_rows_are_kept_for_grpo_and_counted_apart(tmp_path: Path) -> None:
    # A user's question-and-answer pairs without worked solutions: gold from `#### N`, no solution for SFT, and not
    # counted as a solution that disagrees with the gold.
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data.examples import grpo_examples, sft_examples

    rows = [(f"Soru {i}: {i} elma ve {i + 1} armut?", f"{i} + {i + 1} = {2 * i + 1}\n#### {2 * i + 1}") for i in range(10)]
    rows += [(f"Cevap {i}: {i} kalem ve {i} silgi?", f"#### {2 * i}") for i in range(1, 11)]
    src = write_csv(tmp_path / "pairs.csv", rows)
    out = tmp_path / "out"
    assert run_prepare("--dataset", str(src), "--reference", "none", "--output", str(out), "data.test_fraction=0",
                       "data.validation_fraction=0") == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["without_solution"] == 10 and report["solution_gold_disagreements"] == 0
    assert report["sft_usable_train_rows"] == 10
    train = read_jsonl(out / "train.jsonl")
    recipe = load_recipe(None, [f"data.dataset={out}"])
    pairs, counts = sft_examples(train, recipe, "<|stop|>", lambda text: len(text.split()), 512)
    prompts, _ = grpo_examples(train, recipe, lambda text: len(text.split()), 64, 512)
    assert counts["dropped_no_solution"] == 10 and counts["used"] == 10 and len(prompts) == 20


def test_a_run_folder_serves_any_sft_row_choice_and_refuses_other_preparation(tmp_path: Path) -> None:
    # The keys SFT reads when it chooses rows do not change what prepare writes: trying SFT with stated results kept
    # (the README's comparison) reuses the run's prepared data; a key prepare reads still needs a new folder.
    from gsm8k_tr.config import load_recipe
    from gsm8k_tr.data.prepare import SFT_ROW_KEYS
    from gsm8k_tr.data.splits import ensure_prepared, prepared_folder
    from gsm8k_tr.errors import UserError

    base = [f"output_dir={tmp_path}", "data.dataset=synthetic:40", "data.reference=none"]
    ensure_prepared(load_recipe(None, base))
    written = (tmp_path / "data" / "train.jsonl").stat().st_mtime_ns
    for override in ("data.sft_keep_no_work=true", "data.sft_keep_disagreeing=true", "data.solution_fraction=0.5"):
        assert prepared_folder(load_recipe(None, [*base, override])) == (tmp_path / "data", True), override
    assert set(SFT_ROW_KEYS) <= set(vars(load_recipe(None, base).data))  # a misspelt key would never be ignored
    assert (tmp_path / "data" / "train.jsonl").stat().st_mtime_ns == written
    for override in ("data.min_align_score=0.6", "data.test_fraction=0.2", "data.dataset=synthetic:41"):
        with pytest.raises(UserError, match="prepared from a different 'data' section"):
            prepared_folder(load_recipe(None, [*base, override]))

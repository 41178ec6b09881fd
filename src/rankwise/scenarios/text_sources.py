"""Readers of a user's text data: JSONL, JSON, CSV / TSV, Parquet files and Hugging Face ``datasets``.

Every reader returns rows (``list[dict]``, one per example, in file order); `examples_from_rows`
then picks the text column(s) and the label column, giving ``(input, raw label)`` pairs where the
input is a string, or a ``(text_a, text_b)`` tuple for a sentence-pair task. A pair is joined into one
string only when the config gives a ``pair_template`` with ``{text_a}`` and ``{text_b}``: otherwise
it stays a pair, and the backbone encodes it as one (the sentence encoder: the tokenizer's pair
encoding, docs/text.md).

File formats, chosen from the extension unless given: ``.jsonl`` (one JSON object per line), ``.json``
(a list of objects), ``.csv`` / ``.tsv`` (a header row; values are strings), ``.parquet`` (through
pyarrow). Anything else is a Hugging Face dataset, read with ``datasets.load_dataset(source, subset,
split=...)``: a Hub name (cached after the first download, ``HF_DATASETS_OFFLINE=1`` then reads the
cache) or a local folder of data files or a saved dataset script, which works offline.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rankwise.errors import DataError, short_repr

FILE_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
FORMATS = ("auto", "jsonl", "json", "csv", "tsv", "parquet", "hf")

Example = tuple[Any, str]  # (text or (text_a, text_b), raw label)


def source_format(source: str, fmt: str) -> str:
    """The reader of `source`: `fmt` when given, else by extension; no known extension = ``hf``."""
    if fmt != "auto":
        return fmt
    return FILE_FORMATS.get(Path(source).suffix.lower(), "hf")


# -- files ------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number} is not valid JSON: {exc}") from exc
    return rows


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DataError(f"{path} should hold a JSON list of objects, found {type(data).__name__}")
    return data


def _read_csv(path: Path, delimiter: str) -> list[Any]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def _read_parquet(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'rankwise[datasets]'") from exc
    return pq.read_table(path).to_pylist()


def read_file_rows(path: str | Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a data file (see module doc); DataError names the file, line or row that is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (working directory {Path.cwd()})")
    try:
        readers = {
            "jsonl": lambda: _read_jsonl(path),
            "json": lambda: _read_json(path),
            "csv": lambda: _read_csv(path, ","),
            "tsv": lambda: _read_csv(path, "\t"),
            "parquet": lambda: _read_parquet(path),
        }
        rows = readers[fmt]()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid UTF-8: {exc}") from exc
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(
                f"{path} row {i}: expected an object with named columns, got {short_repr(row, 60)}"
            )
    return rows


# -- Hugging Face datasets ----------------------------------------------------------------------
def hub_dataset_path(name: str, subset: str | None) -> tuple[str, str | None]:
    """What ``datasets.load_dataset`` is given for dataset `name` (tests point a Hub name at a local folder)."""
    return name, subset


def load_hub_rows(
    name: str, subset: str | None, split: str, columns: Sequence[str], hint: str
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Rows of one split of a ``datasets`` dataset, only `columns`; and the ClassLabel names per column.

    Any failure to load (offline without a cache, a wrong name, a missing split) becomes a one-line
    DataError ending with `hint` (how to point at local files instead).
    """
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"Hugging Face dataset {name!r} needs the datasets package: pip install 'rankwise[datasets]'; {hint}"
        ) from exc
    path, config_name = hub_dataset_path(name, subset)
    try:
        data = datasets.load_dataset(path, config_name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, unknown name, missing split: all end the run here
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"Hugging Face dataset {name!r}"
            + (f" ({subset})" if subset else "")
            + f" split {split!r} could not be loaded ({type(exc).__name__}: {reason}); {hint}"
        ) from exc
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise DataError(
            f"Hugging Face dataset {name!r} split {split!r} has no column {missing[0]!r}; "
            f"its columns are {data.column_names}"
        )
    names = {
        c: list(data.features[c].names) for c in columns if hasattr(data.features[c], "names")
    }  # ClassLabel columns
    values = {c: data[c] for c in columns}
    rows = [{c: values[c][i] for c in columns} for i in range(len(data))]
    return rows, names


# -- rows -> examples ---------------------------------------------------------------------------
def _text(row: dict[str, Any], column: str, where: str, i: int) -> str:
    if column not in row:
        raise DataError(f"{where} row {i}: no column {column!r}; its columns are {sorted(row)}")
    value = row[column]
    if not isinstance(value, str):
        raise DataError(
            f"{where} row {i}: {column!r} is {short_repr(value, 60)} ({type(value).__name__}); expected a string"
        )
    return value


def raw_label(value: Any, where: str, i: int, column: str) -> str:
    """A label value as the string the class-name table is keyed by (``1`` and ``"1"`` are one label)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(
            f"{where} row {i}: label {column!r} is {short_repr(value, 60)} ({type(value).__name__}); "
            "expected a string or an integer"
        )
    return str(value)


def examples_from_rows(
    rows: Sequence[dict[str, Any]],
    text_columns: Sequence[str],
    label_column: str,
    pair_template: str | None,
    where: str,
) -> list[Example]:
    """``(input, raw label)`` per row: one text column gives a string; two give a pair, or one string
    ``pair_template.format(text_a=..., text_b=...)`` when a template is set."""
    out: list[Example] = []
    for i, row in enumerate(rows):
        texts = [_text(row, c, where, i) for c in text_columns]
        if label_column not in row:
            raise DataError(
                f"{where} row {i}: no label column {label_column!r}; its columns are {sorted(row)}"
            )
        label = raw_label(row[label_column], where, i, label_column)
        if len(texts) == 1:
            out.append((texts[0], label))
        elif pair_template is not None:
            out.append((pair_template.format(text_a=texts[0], text_b=texts[1]), label))
        else:
            out.append(((texts[0], texts[1]), label))
    return out


def split_marked_pair(text: str, markers: tuple[str, str], where: str) -> tuple[str, str]:
    """``"sentence 1: A\\nsentence 2: B"`` -> ``("A", "B")`` (O-LoRA cl_benchmark stores pairs so)."""
    first, second = markers
    head, sep, tail = text.partition(second)
    if not text.startswith(first) or not sep or second in tail:
        raise DataError(f"{where}: expected {first!r}<text a>{second!r}<text b>, got {short_repr(text, 80)}")
    return head[len(first) :].strip(), tail.strip()


def seeded_split(
    examples: Sequence[Example], test_fraction: float, seed_key: str
) -> dict[str, list[Example]]:
    """A stratified split: each label's items shuffled with ``random.Random(f"{seed_key}:{label}")``,
    the first ``round(test_fraction * n_label)`` are test, the rest train, both in file order (the rule
    text-mtil applies to its unsplit SentEval files)."""
    by_label: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(examples):
        by_label.setdefault(label, []).append(i)
    test_ids: set[int] = set()
    for label in sorted(by_label):
        ids = list(by_label[label])
        random.Random(f"{seed_key}:{label}").shuffle(ids)
        test_ids.update(ids[: round(test_fraction * len(ids))])
    return {
        "train": [e for i, e in enumerate(examples) if i not in test_ids],
        "test": [e for i, e in enumerate(examples) if i in test_ids],
    }

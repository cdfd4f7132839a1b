"""Loaders that turn fact datasets into `EditRequest`s. Every loader takes a path.

Errors name the file and the record: a wrong schema, an empty file or truncated JSON fails with
one line instead of a traceback.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from .requests import EditRequest, InvalidRequestError

SPORTS = ("basketball", "football", "baseball")


class DatasetError(ValueError):
    pass


def _read_json_records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"{path}: file is empty")
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and "\n{" in text.strip()):
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {lineno}: invalid JSON ({exc.msg})") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg}); truncated file?") from None
    if isinstance(data, dict):
        data = data.get("requests", [data])
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of records")
    return data


def _convert(path: Path, records: list, convert: Callable[[dict], EditRequest]) -> list[EditRequest]:
    if not records:
        raise DatasetError(f"{path}: no records")
    out = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: record {index}: expected an object")
        try:
            out.append(convert(record))
        except KeyError as exc:
            raise DatasetError(f"{path}: record {index}: missing field {exc.args[0]!r}") from None
        except (InvalidRequestError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{path}: record {index}: {exc}") from None
    return out


def _from_ours(record: dict) -> EditRequest:
    return EditRequest.from_dict(record)


def _from_counterfact(record: dict) -> EditRequest:
    """Simplified schema (MEND/EasyEdit): prompt, subject, ground_truth, target_new, ..."""
    neighbours = []
    if record.get("locality_prompt"):
        neighbours.append({"prompt": record["locality_prompt"], "answer": record["locality_ground_truth"]})
    return EditRequest(
        subject=record["subject"],
        prompt=record["prompt"],
        old_object=record["ground_truth"],
        new_object=record["target_new"],
        test_paraphrases=[record["rephrase_prompt"]] if record.get("rephrase_prompt") else [],
        neighbourhood=neighbours,
        case_id=str(record.get("case_id")),
    )


def _from_counterfact_rome(record: dict) -> EditRequest:
    rewrite = record["requested_rewrite"]
    old = rewrite["target_true"]["str"]
    return EditRequest(
        subject=rewrite["subject"],
        prompt=rewrite["prompt"],
        old_object=old,
        new_object=rewrite["target_new"]["str"],
        test_paraphrases=list(record.get("paraphrase_prompts", [])),
        neighbourhood=[{"prompt": p, "answer": old} for p in record.get("neighborhood_prompts", [])],
        relation=rewrite.get("relation_id"),
        case_id=str(record.get("case_id")),
    )


def _from_zsre(record: dict) -> EditRequest:
    question = record["src"]
    subject = record["subject"]
    neighbours = [{"prompt": record["loc"], "answer": record["loc_ans"]}] if record.get("loc") else []
    return EditRequest(
        subject=subject,
        prompt=question if subject in question else f"{question} {subject}",
        old_object=record["answers"][0],
        new_object=record["alt"],
        test_paraphrases=[record["rephrase"]] if subject in record.get("rephrase", "") else [],
        neighbourhood=neighbours,
        questions=[question],
    )


def load_sports(path: Path, seed: int = 0) -> list[EditRequest]:
    """Sports Facts: the new object is another of the three sports (seeded choice)."""
    rng = random.Random(seed)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise DatasetError(f"{path}: invalid CSV ({exc})") from None
    missing = [c for c in ("athlete", "sport") if c not in columns]
    if columns and missing:  # a CSV is read as Sports Facts, the one CSV schema; say so rather than fail per row
        if columns[0].lstrip()[:1] in ("[", "{"):
            raise DatasetError(f"{path}: read as Sports Facts (CSV) but it is JSON; give its --format "
                               "(counterfact, counterfact-rome, zsre or jsonl)")
        found = ", ".join(columns[:8]) + (f", ... ({len(columns)} in all)" if len(columns) > 8 else "")
        raise DatasetError(f"{path}: a CSV of requests must be Sports Facts (columns athlete, sport); "
                           f"missing column(s) {', '.join(missing)} among {found}")

    def convert(row: dict) -> EditRequest:
        athlete, sport = row["athlete"].strip(), row["sport"].strip()
        new = rng.choice([s for s in SPORTS if s != sport])
        return EditRequest(
            subject=athlete, prompt="{} plays the sport of", old_object=sport, new_object=new,
            test_paraphrases=["{} is a professional player of", "The sport {} is known for is"],
            relation="plays_sport",
        )

    return _convert(path, rows, convert)


FORMATS: dict[str, Callable[[dict], EditRequest]] = {
    "jsonl": _from_ours,
    "json": _from_ours,
    "counterfact": _from_counterfact,
    "counterfact-rome": _from_counterfact_rome,
    "zsre": _from_zsre,
}


def detect_format(path: Path, records: list) -> str:
    """The schema of a file's records, from the fields of the first: ours (jsonl), CounterFact's
    ROME or simplified schema, or zsRE."""
    first = records[0] if records and isinstance(records[0], dict) else {}
    if "requested_rewrite" in first:
        return "counterfact-rome"
    if "target_new" in first and "ground_truth" in first:
        return "counterfact"
    if "src" in first and "alt" in first:
        return "zsre"
    return "jsonl"


def load_requests(path: str | Path, fmt: str = "auto", seed: int = 0) -> list[EditRequest]:
    """fmt: "auto" (a .csv is Sports Facts, JSON records by their fields), "sports", or a FORMATS key."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if fmt == "sports" or (fmt == "auto" and path.suffix == ".csv"):
        return load_sports(path, seed)
    if fmt not in (*FORMATS, "auto"):
        raise DatasetError(f"unknown format {fmt!r}; use one of {', '.join(['auto', *FORMATS, 'sports'])}")
    records = _read_json_records(path)
    return _convert(path, records, FORMATS[detect_format(path, records) if fmt == "auto" else fmt])

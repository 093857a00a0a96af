"""Named datasets, loaded into canonical records.

A canonical record is `{"id", "source", "question", "answer", "solution", "meta"}`: `answer` is the gold final
answer as a non-empty string, taken the way each benchmark defines it; `solution` is the reference solution
text or None; `meta` keeps the dataset's other fields that matter for grading or analysis.

Every name in `DATASETS` loads from one of:
- a local file or folder (`path`): a folder laid out as `<DIR>/<name>/<split>.jsonl` (the layout of the
  shared data folder; `.json` arrays and `.parquet` also work), a folder holding `<split>.jsonl` directly,
  or a file;
- its Hugging Face hub copy via `datasets.load_dataset`, when no path is given;
- a generator (`synthetic`), which takes loader options instead of files.

Rows from files and from the hub go through the same per-dataset mapping, which accepts both the local
field names and the hub's where they differ. Bad data raises `UserError` naming the file and line.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from srlm.data.jsonl import json_objects
from srlm.errors import UserError

Record = dict[str, Any]

# File formats a local dataset may use, in lookup order.
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


# --------------------------------------------------------------------------------------------------------
# Gold-answer extraction (pure text functions; prepare.py uses them too)
# --------------------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\b")


def _braced(text: str, start: int) -> str | None:
    """The content of the `{...}` group opening at `text[start]`, nested braces included; None if unclosed."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # `\{`, `\}` and `\\` are escapes, never group delimiters: skip both characters
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def boxed_gold(text: str) -> str | None:
    """The gold a reference solution boxes: the content of its last `\\boxed{...}` (or `\\fbox{...}`), nested
    braces kept; None if absent. (The grader reads a *response's* boxes with `grading.extract.last_boxed`.)

    MATH also writes a few single-token answers without braces (`$\\boxed 2$`); those are read up to the
    next space or `$`.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            inner = _braced(text, rest)
            if inner is not None and inner.strip():
                return inner.strip()
        elif rest > match.end():
            token = re.match(r"[^\s$]+", text[rest:])
            if token:
                return token.group(0)
    return None


def gsm8k_final_answer(solution: str) -> str | None:
    """The GSM8K gold answer: the text after the last `####`, thousands separators removed; None if absent."""
    if "####" not in solution:
        return None
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return answer or None


def number_answer(value: Any) -> str:
    """A numeric gold answer as text: `27.0` -> `"27"`, `2.5` -> `"2.5"`, `"025"` -> `"25"`.

    AMC23 stores answers as floats and AIME24 as zero-padded strings; both are integers to the benchmark.
    Text that is not a plain number is returned stripped and unchanged.
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return str(int(text))
    if re.fullmatch(r"[+-]?\d+\.\d*", text) and float(text).is_integer():
        return str(int(float(text)))
    return text


def strip_math_delimiters(text: str) -> str:
    """Remove `$...$` wrapping from an OlympiadBench answer: `$2^{1009}$` -> `2^{1009}`.

    Multi-part answers are written as several spans (`$69$,$84$`); every unescaped `$` is dropped then,
    giving `69,84`. A sentence period after the closing `$` (`$x$.`, one OlympiadBench row) is dropped too.
    Text not wrapped in `$` is returned stripped.
    """
    text = text.strip()
    if text.endswith("$."):
        text = text[:-1]
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        return re.sub(r"(?<!\\)\$", "", text).strip()
    return text


def _first_of_list(value: Any) -> Any:
    """The first element of a list answer (`["2"]`, or its string form `"['2']"`); other values unchanged.

    A string is only read as a list when it is a list of strings, so an interval answer like `[0, 1]`
    stays as written.
    """
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, list) and parsed and all(isinstance(v, str) for v in parsed):
            return parsed[0]
        return value
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


# Named answer extractors for custom datasets: field value -> gold answer text (None when not found).
ANSWER_EXTRACTORS: dict[str, Callable[[Any], str | None]] = {
    "raw": lambda value: number_answer(value) if isinstance(value, (int, float)) else str(value).strip() or None,
    "gsm8k": lambda value: gsm8k_final_answer(str(value)),
    "boxed": lambda value: boxed_gold(str(value)),
}
AnswerExtractor = Literal["raw", "gsm8k", "boxed"]


# --------------------------------------------------------------------------------------------------------
# Raw rows: one source row plus where it came from, so every error can point at it
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One raw row of a dataset file or hub split, with its location (`file:line` or hub row) and index."""

    data: Mapping[str, Any]
    where: str
    index: int

    def value(self, *names: str, required: bool = True) -> Any:
        """The first of `names` present and not null; a missing required field raises UserError."""
        for name in names:
            if self.data.get(name) is not None:
                return self.data[name]
        if not required:
            return None
        present = [n for n in names if n in self.data]
        wanted = " or ".join(repr(n) for n in names)
        if present:
            raise UserError(f"{self.where}: field {wanted} is null")
        raise UserError(f"{self.where}: missing field {wanted} (fields present: {', '.join(sorted(self.data))})")

    def text(self, *names: str, required: bool = True) -> str | None:
        """Like `value`, but the field must be a non-empty string; returned stripped."""
        value = self.value(*names, required=required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise UserError(f"{self.where}: field {names[0]!r} should be text, got {type(value).__name__}")
        if not value.strip():
            if required:
                raise UserError(f"{self.where}: field {names[0]!r} is empty")
            return None
        return value.strip()

    def gold(self, answer: str | None, what: str) -> str:
        """`answer` if found; otherwise a UserError saying which field held no answer."""
        if answer is None or not str(answer).strip():
            raise UserError(f"{self.where}: no gold answer found in {what}")
        return str(answer).strip()


@dataclass(frozen=True)
class Mapped:
    """What a dataset's mapping makes of a raw row; `key` is the row's own id when it has one."""

    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    key: Any = None


RowMapper = Callable[[Row], Mapped]


# --------------------------------------------------------------------------------------------------------
# Per-dataset field mappings
# --------------------------------------------------------------------------------------------------------


def _map_gsm8k(row: Row) -> Mapped:
    solution = row.text("answer")
    gold = row.gold(gsm8k_final_answer(solution), "field 'answer' (no '#### <answer>' line)")
    return Mapped(row.text("question"), gold, solution, {"solution_format": "gsm8k"})


def _map_math500(row: Row) -> Mapped:
    meta = {k: row.data.get(k) for k in ("subject", "level", "unique_id")}
    answer = row.gold(str(row.value("answer")), "field 'answer'")  # LaTeX, kept as given
    return Mapped(row.text("problem"), answer, row.text("solution", required=False),
                  {**meta, "solution_format": "latex"})


# Known defects in upstream data, keyed by (dataset, sha256 of the stripped question)[:16]:
# gold answer to use and why. Hendrycks MATH train has two solutions ending in an empty `\boxed{}`
# (number_theory, multiple choice); both solutions argue that no term is prime, i.e. choice (A) 0.
ANSWER_ERRATA: dict[tuple[str, str], tuple[str, str]] = {
    ("math", "34d3b36d1c419100"): ("0", "source solution has an empty \\boxed{}; it shows there are 0 primes (A)"),
    ("math", "641a7ef94229c8ca"): ("0", "source solution has an empty \\boxed{}; it shows N = 0 (A)"),
}


def _erratum(dataset: str, question: str) -> tuple[str, str] | None:
    """The (answer, reason) patch for a known upstream defect, if this question has one."""
    digest = hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:16]
    return ANSWER_ERRATA.get((dataset, digest))


def _map_math(row: Row) -> Mapped:
    question, solution = row.text("problem"), row.text("solution")
    meta = {"level": row.data.get("level"), "type": row.data.get("type"), "solution_format": "latex"}
    gold = boxed_gold(solution)
    patch = _erratum("math", question) if gold is None else None
    if patch:
        gold, meta["answer_erratum"] = patch
    gold = row.gold(gold, "field 'solution' (no non-empty \\boxed{...})")
    return Mapped(question, gold, solution, meta)


def _map_minerva(row: Row) -> Mapped:
    # The hub copy carries an `answer` field; the original release only has the boxed answer in the solution.
    given = _first_of_list(row.value("answer", required=False))
    if given is not None and str(given).strip():
        solution = row.text("solution", required=False)
        gold = row.gold(str(given), "field 'answer'")
    else:
        solution = row.text("solution")
        gold = row.gold(boxed_gold(solution), "field 'solution' (no \\boxed{...}) and no 'answer' field")
    meta = {"type": row.data.get("type"), "idx": row.data.get("idx"), "solution_format": "latex"}
    return Mapped(row.text("problem", "question"), gold, solution, meta, key=row.data.get("idx"))


def _map_olympiadbench(row: Row) -> Mapped:
    raw = row.value("final_answer")
    first = _first_of_list(raw)
    gold = row.gold(strip_math_delimiters(str(first)) if first is not None else None, "field 'final_answer'")
    solutions = row.value("solution", required=False)
    solution = _first_of_list(solutions)
    question = row.text("question")
    context = row.text("context", required=False)
    if context:  # a few OlympiadBench problems share a preamble the question depends on
        question = f"{context}\n\n{question}"
    meta = {k: row.data.get(k) for k in ("unit", "answer_type", "is_multiple_answer", "error", "subfield")}
    meta.update(final_answer=raw, solution_format="latex")
    return Mapped(question, gold, str(solution).strip() if solution else None, meta, key=row.data.get("id"))


def _map_amc23(row: Row) -> Mapped:
    raw = row.value("answer")
    gold = row.gold(number_answer(raw), "field 'answer'")
    meta = {"answer_raw": raw, "url": row.data.get("url")}
    return Mapped(row.text("problem", "question"), gold, row.text("solution", required=False), meta,
                  key=row.data.get("id"))


def _map_aime24(row: Row) -> Mapped:
    raw = row.value("answer")
    # Answers are zero-padded ("025"); AIME answers are integers 0-999, so store the integer form.
    gold = row.gold(number_answer(raw), "field 'answer'")
    meta = {"answer_raw": raw, "url": row.data.get("url"), "solution_format": "latex"}
    return Mapped(row.text("problem", "question"), gold, row.text("solution", required=False), meta,
                  key=row.data.get("id"))


def _map_camel_gsm8k(row: Row) -> Mapped:
    # The hub field really is spelled `groud_truth_solution`; accept the corrected spelling too.
    truth = row.text("groud_truth_solution", "ground_truth_solution")
    gold = gsm8k_final_answer(truth) or boxed_gold(truth)
    gold = row.gold(gold, "field 'groud_truth_solution' (no '####' line or \\boxed{...})")
    meta = {"boxed_answer_success": row.data.get("boxed_answer_success"), "ground_truth_solution": truth,
            "solution_format": "trace"}
    return Mapped(row.text("problem", "question"), gold, row.text("reasoning_solution"), meta,
                  key=row.data.get("id"))


# --------------------------------------------------------------------------------------------------------
# Specs and registry
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """Where a dataset lives on the Hugging Face hub. `configs` are concatenated in order (MATH ships one
    config per subject); `splits` maps our split names to the hub's."""

    repo_id: str
    configs: tuple[str | None, ...] = (None,)
    splits: Mapping[str, str] = field(default_factory=dict)


# A generator: (split, options) -> canonical records.
RecordGenerator = Callable[[str, dict[str, Any]], list[Record]]


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset: how to find its rows and how to map them to canonical records.

    `splits` empty means any split name is accepted (custom datasets: the file `<dir>/<split>.jsonl`).
    Exactly one of `map_row` (file/hub data) or `generate` (generated data) is set.
    """

    name: str
    description: str
    splits: tuple[str, ...]
    default_split: str
    map_row: RowMapper | None = None
    hub: HubSource | None = None
    local_path: Path | None = None
    generate: RecordGenerator | None = None
    options: frozenset[str] = frozenset()
    # golds are exact values (integers, exact LaTeX): the grader allows no rounding of a response's decimal
    exact_answers: bool = False

    @property
    def source_hint(self) -> str:
        """Where the data comes from, for listings."""
        if self.generate is not None:
            return "generated"
        if self.local_path is not None:
            return str(self.local_path)
        return f"hf:{self.hub.repo_id}" if self.hub else "local files only"


def _synthetic(split: str, options: dict[str, Any]) -> list[Record]:
    """Generate the synthetic split; imported lazily so the registry loads without the generator's deps."""
    from srlm.data import synthetic

    sizes = {"train": 2000, "validation": 200, "test": 200}
    n = int(options.get("n", sizes[split]))
    try:
        return synthetic.make_split(split, n, seed=int(options.get("seed", 0)),
                                    min_ops=int(options.get("min_ops", 1)),
                                    max_ops=int(options.get("max_ops", 3)))
    except ValueError as e:  # bad option values are the user's to fix
        raise UserError(f"synthetic: {e}") from e


_BUILTIN: tuple[DatasetSpec, ...] = (
    DatasetSpec("gsm8k", "GSM8K grade-school math; gold = number after '####' (commas removed)",
                ("train", "test"), "test", _map_gsm8k,
                HubSource("openai/gsm8k", ("main",), {"train": "train", "test": "test"}), exact_answers=True),
    DatasetSpec("math500", "MATH500 (PRM800K test subset of MATH); gold = 'answer'",
                ("test",), "test", _map_math500, HubSource("HuggingFaceH4/MATH-500", splits={"test": "test"}),
                exact_answers=True),
    DatasetSpec("math", "Hendrycks MATH train (7,500); gold = last \\boxed{} of the solution",
                ("train",), "train", _map_math,
                HubSource("EleutherAI/hendrycks_math",
                          ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                           "number_theory", "prealgebra", "precalculus"),
                          {"train": "train"}), exact_answers=True),
    DatasetSpec("minerva_math", "Minerva Math (272 STEM problems); gold = 'answer' if present, else last \\boxed{}",
                ("test",), "test", _map_minerva, HubSource("math-ai/minervamath", splits={"test": "test"})),
    DatasetSpec("olympiadbench", "OlympiadBench OE_TO_maths_en_COMP; gold = final_answer[0] without $...$",
                ("test",), "test", _map_olympiadbench,
                HubSource("Hothan/OlympiadBench", ("OE_TO_maths_en_COMP",), {"test": "train"})),
    DatasetSpec("amc23", "AMC 2023 (40 problems); gold = answer as integer text",
                ("test",), "test", _map_amc23, HubSource("math-ai/amc23", splits={"test": "test"}),
                exact_answers=True),
    DatasetSpec("aime24", "AIME 2024 I+II (30 problems); gold = answer as integer text ('025' -> '25')",
                ("test",), "test", _map_aime24, HubSource("HuggingFaceH4/aime_2024", splits={"test": "train"}),
                exact_answers=True),
    DatasetSpec("camel_gsm8k", "CAMEL GSM8K distilled R1 traces; gold from the ground-truth solution",
                ("train",), "train", _map_camel_gsm8k,
                HubSource("camel-ai/gsm8k_distilled", splits={"train": "train"}), exact_answers=True),
    DatasetSpec("synthetic", "generated GSM8K-style arithmetic problems (options: n, seed, min_ops, max_ops)",
                ("train", "validation", "test"), "test", generate=_synthetic,
                options=frozenset({"n", "seed", "min_ops", "max_ops"}), exact_answers=True),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _BUILTIN}
_BUILTIN_NAMES = frozenset(DATASETS)


def list_datasets() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, description, splits) of every registered dataset, in registry order."""
    return [(s.name, s.description, s.splits) for s in DATASETS.values()]


def exact_answers(name: str | None) -> bool:
    """Whether the dataset `name`'s golds are exact values (`DatasetSpec.exact_answers`), what the grader's
    `exact` takes. A name not registered (e.g. `srlm grade --benchmark` on another file) is not exact."""
    spec = DATASETS.get(name) if name else None
    return bool(spec and spec.exact_answers)


def get_spec(name: str) -> DatasetSpec:
    """The spec registered as `name`; an unknown name raises UserError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


# --------------------------------------------------------------------------------------------------------
# Custom datasets (registered from config)
# --------------------------------------------------------------------------------------------------------


def register_custom(name: str, path: str | Path, question_field: str, answer_field: str,
                    solution_field: str | None = None, answer_extractor: AnswerExtractor = "raw",
                    *, description: str = "", default_split: str = "train") -> DatasetSpec:
    """Register a local jsonl/json/parquet file (or `<dir>/<split>.jsonl` folder) as dataset `name`.

    `answer_extractor` says how the gold answer is read from `answer_field`: "raw" (the value itself),
    "gsm8k" (text after `####`) or "boxed" (last `\\boxed{}`). Re-registering a custom name replaces it;
    built-in names cannot be replaced.
    """
    if name in _BUILTIN_NAMES:
        raise UserError(f"custom dataset name {name!r} is taken by a built-in dataset; choose another name")
    if answer_extractor not in ANSWER_EXTRACTORS:
        raise UserError(f"custom dataset {name!r}: unknown answer_extractor {answer_extractor!r}; "
                        f"choose one of {', '.join(ANSWER_EXTRACTORS)}")
    extract = ANSWER_EXTRACTORS[answer_extractor]

    def map_row(row: Row) -> Mapped:
        gold = row.gold(extract(row.value(answer_field)), f"field {answer_field!r} ({answer_extractor} extractor)")
        solution = row.text(solution_field, required=False) if solution_field else None
        meta = {k: v for k, v in row.data.items() if k not in {question_field, answer_field, solution_field}}
        return Mapped(row.text(question_field), gold, solution, meta)

    spec = DatasetSpec(name, description or f"custom dataset from {path}", (), default_split, map_row,
                       local_path=Path(path))
    DATASETS[name] = spec
    return spec


class CustomDatasetSpec(BaseModel):
    """A user's own dataset, declared in config and registered with `register()`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Name to load it by (letters, digits, '_', '.', '-'); must not be a built-in name.")
    path: Path = Field(description="A jsonl/json/parquet file, or a folder holding <split>.jsonl files.")
    question_field: str = Field("question", description="Field holding the question text.")
    answer_field: str = Field("answer", description="Field holding the gold answer (or the text it is extracted from).")
    solution_field: str | None = Field(None, description="Field holding a reference solution, if any.")
    answer_extractor: AnswerExtractor = Field(
        "raw", description="How to read the gold answer: 'raw' (as is), 'gsm8k' (after '####'), "
                           "'boxed' (last \\boxed{}).")
    description: str = Field("", description="One line shown by `srlm data list`.")
    default_split: str = Field("train", description="Split used when none is given.")

    def register(self) -> DatasetSpec:
        """Add this dataset to the registry and return its spec."""
        return register_custom(**self.model_dump())


# --------------------------------------------------------------------------------------------------------
# Reading rows: local files and the hub
# --------------------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[Row]:
    n = 0
    for data, where in json_objects(path):
        yield Row(data, where, n)
        n += 1
    if n == 0:
        raise UserError(f"{path} is empty (no records)")


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    if not data:
        raise UserError(f"{path} is empty (no records)")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise UserError(f"{path}[{i}]: expected a JSON object, got {type(item).__name__}")
        yield Row(item, f"{path}[{i}]", i)


def _read_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq  # installed with `datasets`

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    if not rows:
        raise UserError(f"{path} is empty (no records)")
    for i, item in enumerate(rows):
        yield Row(item, f"{path}: row {i + 1}", i)


FILE_READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
}


# The one wording of where local data may live, for every --path / --data-path / data_path help text.
DATA_LAYOUT = ("a data folder laid out as DIR/NAME/SPLIT.jsonl (.json and .parquet also work), a folder of "
               "SPLIT.jsonl files, or one file")
DATA_PATH_ENV = "SRLM_DATA_PATH"


def default_data_path() -> str | None:
    """Where datasets without a path of their own load from: $SRLM_DATA_PATH (the config's `data_path`
    sets it for a run), else None, the hub."""
    return os.environ.get(DATA_PATH_ENV) or None


def _layout_hint(name: str, split: str) -> str:
    return f"DIR/{name}/{split}.jsonl (or .json/.parquet), DIR/{split}.jsonl, or the file itself"


def resolve_local(spec: DatasetSpec, split: str, path: str | Path) -> Path:
    """The file holding `split` of `spec` under `path` (a data folder, a dataset folder, or a file)."""
    base = Path(path).expanduser()
    if base.is_file():
        return base
    if not base.is_dir():
        raise UserError(f"{spec.name}: path {base} does not exist (expected {_layout_hint(spec.name, split)})")
    candidates = [base / spec.name / f"{split}{s}" for s in FILE_SUFFIXES]
    candidates += [base / f"{split}{s}" for s in FILE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"{spec.name}: no {split} file found; looked for {candidates[0]} and {candidates[3]} "
                    f"(and .json/.parquet versions)")


def _read_file(path: Path) -> Iterator[Row]:
    reader = FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use {', '.join(FILE_SUFFIXES)}")
    try:
        yield from reader(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning "the hub cannot be reached / has no such data" rather than a bug.

    `datasets` reports no network as ConnectionError and a missing/uncached dataset as a FileNotFoundError
    subclass, both OSErrors; newer hub clients raise httpx transport errors, which are not.
    """
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    return tuple(errors)


def _read_hub(spec: DatasetSpec, split: str) -> Iterator[Row]:
    hub = spec.hub
    if hub is None:
        raise UserError(f"{spec.name} has no hub copy; pass --path pointing at {_layout_hint(spec.name, split)}")
    if split not in hub.splits:
        raise UserError(f"{spec.name}: split {split!r} has no hub copy; hub splits: {', '.join(hub.splits)}")
    import datasets  # heavy; only needed on this path

    index = 0
    for config in hub.configs:
        try:
            rows = datasets.load_dataset(hub.repo_id, config, split=hub.splits[split])
        except _hub_errors() as e:
            raise UserError(
                f"the Hugging Face hub is unreachable for {hub.repo_id} ({type(e).__name__}: {e}); "
                f"use a local copy instead: --path DIR (or data.path in config) where DIR holds "
                f"{spec.name}/{split}.jsonl, or --path FILE") from None
        label = f"hf:{hub.repo_id}" + (f"[{config}]" if config else "") + f" {hub.splits[split]}"
        for i, data in enumerate(rows):
            yield Row(dict(data), f"{label} row {i + 1}", index)
            index += 1


# --------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------


def _record(spec: DatasetSpec, split: str, row: Row, origin: str) -> Record:
    assert spec.map_row is not None
    m = spec.map_row(row)
    key = m.key if m.key is not None else row.index
    return {"id": f"{spec.name}-{split}-{key}", "source": spec.name, "question": m.question,
            "answer": m.answer, "solution": m.solution, "meta": {**m.meta, "origin": origin}}


def _check_generated(name: str, records: list[Record]) -> list[Record]:
    """Generated records must already be canonical; a bad one is a generator bug, said plainly."""
    for r in records:
        if not (isinstance(r.get("answer"), str) and r["answer"].strip() and r.get("question")):
            raise RuntimeError(f"{name} generator produced a record without question/answer: {r.get('id')}")
    return records


def load_records(name: str, split: str | None = None, path: str | Path | None = None,
                 limit: int | None = None, **options: Any) -> list[Record]:
    """Load dataset `name` as canonical records.

    `split` defaults to the dataset's default split (test for benchmarks). `path` is a local data folder
    (`<path>/<name>/<split>.jsonl`), a dataset folder or a file; without it $SRLM_DATA_PATH, else the hub.
    `limit` keeps the first N records. `options` go to generated datasets (e.g. synthetic's n, seed).
    """
    spec = get_spec(name)
    split = split or spec.default_split
    if spec.splits and split not in spec.splits:
        raise UserError(f"{name} has no split {split!r}; splits: {', '.join(spec.splits)}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of records, got {limit}")
    unknown = sorted(set(options) - spec.options)
    if unknown:
        accepted = ", ".join(sorted(spec.options)) or "none"
        raise UserError(f"{name} does not take option(s) {', '.join(unknown)} (accepted: {accepted})")

    if spec.generate is not None:  # generated data has no files; a data folder given for others is ignored
        return _check_generated(name, spec.generate(split, options))[:limit]

    local = path if path is not None else (spec.local_path or default_data_path())
    if local is not None:
        file = resolve_local(spec, split, local)
        rows, origin = _read_file(file), str(file)
    else:
        assert spec.hub is not None
        rows, origin = _read_hub(spec, split), f"hf:{spec.hub.repo_id}"
    return [_record(spec, split, row, origin) for row in islice(rows, limit)]


# A records file written by `srlm kd generate` (or any file of canonical records) loads under this name.
RECORDS_DATASET = "records"


def load_stage_records(ref) -> list[Record]:
    """A stage's canonical records (`ref`: its `DatasetRef`). `name: records` with a `path` reads a file of
    canonical records (`{"id", "question", "answer", "solution", ...}` per line), e.g. teacher traces from
    `srlm kd generate`."""
    spec = DATASETS.get(ref.name)
    if ref.name == RECORDS_DATASET and (spec is None or spec.local_path is not None):  # not a built-in
        if not ref.path:
            raise UserError("data.name 'records' needs data.path: a jsonl file of canonical records")
        register_custom(RECORDS_DATASET, ref.path, "question", "answer", "solution",
                        description="canonical records from a file (e.g. `srlm kd generate --out`)")
    return load_records(ref.name, split=ref.split, path=ref.path, limit=ref.limit, **ref.options)

"""Dataset registry: answer extraction, each loader's field mapping (hub shapes and local shapes), bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from srlm.data import sources
from srlm.data.sources import (
    CustomDatasetSpec,
    boxed_gold,
    gsm8k_final_answer,
    list_datasets,
    load_records,
    number_answer,
    register_custom,
    strip_math_delimiters,
)
from srlm.errors import UserError

HUB_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hub"
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CANONICAL_KEYS = {"id", "source", "question", "answer", "solution", "meta"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def fixture_load_dataset(repo_id: str, name: str | None = None, split: str | None = None, **_: object) -> list[dict]:
    """Stand-in for `datasets.load_dataset`: rows of tests/fixtures/hub/<owner>__<repo>/[<config>/]<split>.jsonl.

    A config without a fixture folder yields no rows (MATH has seven subject configs; two have fixtures).
    """
    repo = HUB_FIXTURES / repo_id.replace("/", "__")
    if not repo.is_dir():
        raise ConnectionError(f"Couldn't reach '{repo_id}' on the Hub (fixture missing)")
    folder = repo / name if name else repo
    file = folder / f"{split}.jsonl"
    if not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fixture_load_dataset)


@pytest.fixture
def restore_registry():
    saved = dict(sources.DATASETS)
    yield
    sources.DATASETS.clear()
    sources.DATASETS.update(saved)


def check_canonical(records: list[dict]) -> None:
    for r in records:
        assert set(r) == CANONICAL_KEYS
        assert isinstance(r["answer"], str) and r["answer"].strip()
        assert isinstance(r["question"], str) and r["question"].strip()
        assert r["solution"] is None or isinstance(r["solution"], str)
        assert isinstance(r["meta"], dict)
    assert len({r["id"] for r in records}) == len(records)


# ----- answer extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("so $x=\\boxed{5}$", "5"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{\\left\\{ 1, \\sqrt{2} \\right\\}}.", "\\left\\{ 1, \\sqrt{2} \\right\\}"),
    ("our answer is $\\boxed 2$.", "2"),
    ("an \\fbox{7} box", "7"),
    ("empty \\boxed{} after \\boxed{3}", "3"),
    ("no box here", None),
    ("unclosed \\boxed{3", None),
])
def test_boxed_gold(text: str, expected: str | None) -> None:
    assert boxed_gold(text) == expected


@pytest.mark.parametrize("solution, expected", [
    ("a\n#### 12", "12"), ("x\n#### 2,080", "2080"), ("#### -5", "-5"), ("no marker", None), ("####  ", None),
])
def test_gsm8k_final_answer(solution: str, expected: str | None) -> None:
    assert gsm8k_final_answer(solution) == expected


@pytest.mark.parametrize("value, expected", [
    (27.0, "27"), (-1.0, "-1"), (2.5, "2.5"), (7, "7"), ("025", "25"), ("204", "204"), ("3.0", "3"),
    (" \\frac{1}{2} ", "\\frac{1}{2}"),
])
def test_number_answer(value: object, expected: str) -> None:
    assert number_answer(value) == expected


@pytest.mark.parametrize("text, expected", [
    ("$2^{1009}$", "2^{1009}"), ("2", "2"), ("$69$,$84$", "69,84"), ("$f(n)=n$, $g(n)=1$", "f(n)=n, g(n)=1"),
    ("$(-\\infty, 0) \\cup\\{1\\}$.", "(-\\infty, 0) \\cup\\{1\\}"), ("$\\$5$", "\\$5"),
])
def test_strip_math_delimiters(text: str, expected: str) -> None:
    assert strip_math_delimiters(text) == expected


# ----- registry ----------------------------------------------------------------------------------------


def test_registry_lists_every_dataset_with_a_default_split() -> None:
    names = [name for name, _, _ in list_datasets()]
    assert names == list(sources.DATASETS)
    for expected in ("gsm8k", "math500", "math", "minerva_math", "olympiadbench", "amc23", "aime24",
                     "camel_gsm8k", "synthetic"):
        assert expected in names
    for spec in (sources.DATASETS[n] for n in sources._BUILTIN_NAMES):  # other tests may add custom ones
        assert spec.default_split in spec.splits
        assert (spec.map_row is None) != (spec.generate is None)
    benchmarks = ("gsm8k", "math500", "minerva_math", "olympiadbench", "amc23", "aime24")
    assert all(sources.DATASETS[b].default_split == "test" for b in benchmarks)


def test_unknown_dataset_and_split_and_option() -> None:
    with pytest.raises(UserError, match="unknown dataset 'nope'.*gsm8k"):
        load_records("nope")
    with pytest.raises(UserError, match="no split 'dev'"):
        load_records("gsm8k", split="dev", path=HUB_FIXTURES)
    with pytest.raises(UserError, match="does not take option"):
        load_records("gsm8k", path=HUB_FIXTURES, n=3)


# ----- hub code path on fixtures in the hub's shapes -----------------------------------------------------


def test_hub_gsm8k(fake_hub: None) -> None:
    records = load_records("gsm8k", split="train")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["12", "2080", "-5", "12"]
    assert records[0]["solution"].endswith("#### 12")  # full reference solution kept
    assert records[0]["id"] == "gsm8k-train-0" and records[0]["source"] == "gsm8k"
    assert records[0]["meta"]["origin"] == "hf:openai/gsm8k"
    assert len(load_records("gsm8k")) == 1  # default split: test


def test_hub_math500(fake_hub: None) -> None:
    records = load_records("math500")
    check_canonical(records)
    assert records[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert records[0]["meta"]["unique_id"] == "test/precalculus/807.json"
    assert records[0]["meta"]["level"] == 2


def test_hub_math_concatenates_subject_configs(fake_hub: None) -> None:
    records = load_records("math")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["\\frac{1}{4}", "2"]  # last \boxed, and the brace-less form
    assert records[0]["meta"]["level"] == "Level 2" and records[0]["meta"]["type"] == "Algebra"
    assert [r["id"] for r in records] == ["math-train-0", "math-train-1"]


def test_hub_minerva_prefers_answer_field(fake_hub: None) -> None:
    records = load_records("minerva_math")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["1.6", "4.5e33"]
    assert records[0]["question"] == "Find the image diameter in cm."
    assert records[1]["solution"] is None


def test_hub_olympiadbench(fake_hub: None) -> None:
    records = load_records("olympiadbench")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["2", "2^{n+1}-2", "\\frac{41}{12}"]
    first, second, third = records
    assert first["id"] == "olympiadbench-test-1606"
    assert first["solution"] == "Sergey needs 2 moves."  # first of the list
    assert second["question"].startswith("Let $n$ be a positive integer.\n\n")  # context kept
    assert third["meta"]["unit"] == "km" and third["meta"]["error"] == "1e-1"
    assert third["meta"]["answer_type"] == "Numerical" and third["meta"]["is_multiple_answer"] is False
    assert third["meta"]["final_answer"] == ["$\\frac{41}{12}$"]


def test_hub_amc23(fake_hub: None) -> None:
    records = load_records("amc23")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["27", "-1", "2.5"]
    assert records[0]["meta"]["answer_raw"] == 27.0
    assert records[0]["id"] == "amc23-test-0"


def test_hub_aime24(fake_hub: None) -> None:
    records = load_records("aime24")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["204", "25"]
    assert records[1]["meta"]["answer_raw"] == "025"


def test_hub_camel_gsm8k(fake_hub: None) -> None:
    records = load_records("camel_gsm8k")
    check_canonical(records)
    assert [r["answer"] for r in records] == ["12", "750"]  # from '####' and from \boxed
    assert records[0]["solution"].startswith("<think>")  # the teacher trace
    assert records[0]["meta"]["boxed_answer_success"] is True
    assert records[0]["meta"]["solution_format"] == "trace"


def test_hub_unreachable_says_how_to_use_local_files(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as e:
        load_records("gsm8k")
    message = str(e.value)
    assert "unreachable" in message and "openai/gsm8k" in message
    assert "--path" in message and "data.path" in message and "gsm8k/test.jsonl" in message


def test_hub_path_through_real_datasets_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The rows `datasets` itself yields (a Dataset, from parquet) map like plain dicts."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_load_dataset("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")
    parquet = tmp_path / "olympiad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    real = datasets.load_dataset
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))

    def from_parquet(repo_id: str, name: str | None = None, split: str | None = None, **_: object):
        assert (repo_id, name, split) == ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")
        return real("parquet", data_files=str(parquet), split="train", cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", from_parquet)
    records = load_records("olympiadbench")
    assert [r["answer"] for r in records] == ["2", "2^{n+1}-2", "\\frac{41}{12}"]


# ----- local files: original (non-hub) shapes and layouts ----------------------------------------------


def test_local_layout_folder_dataset_folder_and_file(tmp_path: Path) -> None:
    rows = fixture_load_dataset("openai/gsm8k", "main", "train")
    write_jsonl(tmp_path / "data" / "gsm8k" / "train.jsonl", rows)
    by_data_dir = load_records("gsm8k", split="train", path=tmp_path / "data")
    by_dataset_dir = load_records("gsm8k", split="train", path=tmp_path / "data" / "gsm8k")
    by_file = load_records("gsm8k", split="train", path=tmp_path / "data" / "gsm8k" / "train.jsonl")
    assert [r["answer"] for r in by_data_dir] == ["12", "2080", "-5", "12"]
    assert by_data_dir == by_dataset_dir == by_file
    assert load_records("gsm8k", split="train", path=tmp_path / "data", limit=2) == by_data_dir[:2]


def test_srlm_data_path_is_the_default_folder_and_config_data_path_sets_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "data" / "gsm8k" / "train.jsonl", fixture_load_dataset("openai/gsm8k", "main", "train"))
    monkeypatch.setenv("SRLM_DATA_PATH", str(tmp_path / "data"))
    assert [r["answer"] for r in load_records("gsm8k", split="train")] == ["12", "2080", "-5", "12"]
    with pytest.raises(UserError, match="no test file found"):  # a folder without the split: one clear line
        load_records("gsm8k", split="test")

    from srlm.config import load_config
    from srlm.pipeline import content_key, use_data_path

    monkeypatch.setenv("SRLM_DATA_PATH", "/elsewhere")
    cfg = load_config(None, [f"data_path={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"])
    use_data_path(cfg)  # what `srlm run` does first: the config's folder wins for the run
    assert load_records("gsm8k", split="train")[0]["answer"] == "12"
    # not part of a stage's config, so pointing at moved data keeps finished stages' keys
    assert content_key(cfg.sft.model_dump()) == content_key(load_config(None, []).sft.model_dump())


def test_local_minerva_original_shape_takes_last_boxed(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "minerva_math" / "test.jsonl", [
        {"problem": "Find s.", "solution": "$s=\\boxed{1.6} \\mathrm{~cm}$", "type": "Astronomy", "idx": 0},
        {"problem": "Find L.", "solution": "$L \\simeq \\boxed{4.5e33}$", "type": "Astronomy", "idx": 1},
    ])
    records = load_records("minerva_math", path=file)
    assert [r["answer"] for r in records] == ["1.6", "4.5e33"]
    assert records[1]["id"] == "minerva_math-test-1" and records[1]["meta"]["type"] == "Astronomy"


def test_local_olympiadbench_and_aime_and_amc_shapes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "olympiadbench" / "test.jsonl", [
        {"id": 1, "subfield": "Algebra", "context": None, "question": "Q?", "solution": ["S."],
         "final_answer": ["$69$,$84$"], "is_multiple_answer": True, "unit": None, "answer_type": "Numerical",
         "error": None},
    ])
    write_jsonl(tmp_path / "aime24" / "test.jsonl", [
        {"id": 67, "problem": "P?", "solution": "S", "answer": "073", "url": "u", "question": "P?"},
    ])
    write_jsonl(tmp_path / "amc23" / "test.jsonl", [
        {"id": 3, "problem": "P?", "answer": 3159.0, "url": "u", "question": "P?"},
    ])
    assert load_records("olympiadbench", path=tmp_path)[0]["answer"] == "69,84"
    aime = load_records("aime24", path=tmp_path)[0]
    assert aime["answer"] == "73" and aime["meta"]["answer_raw"] == "073"
    assert load_records("amc23", path=tmp_path)[0]["answer"] == "3159"


def test_local_json_array_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_load_dataset("HuggingFaceH4/MATH-500", None, "test")
    (tmp_path / "a.json").write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math500.parquet")
    from_json = load_records("math500", path=tmp_path / "a.json")
    from_parquet = load_records("math500", path=tmp_path / "math500.parquet")
    assert [r["answer"] for r in from_json] == [r["answer"] for r in from_parquet] == [rows[0]["answer"], "2"]


def test_math_erratum_patches_an_empty_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    question = "How many primes lie strictly between $n!+1$ and $n!+n$?"
    digest = hashlib.sha256(question.encode()).hexdigest()[:16]
    monkeypatch.setitem(sources.ANSWER_ERRATA, ("math", digest), ("0", "empty box upstream"))
    file = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": question, "level": "Level 5", "type": "Number Theory", "solution": "there are $\\boxed{}$."},
        {"problem": "Other?", "level": "Level 1", "type": "Algebra", "solution": "it is $\\boxed{}$."},
    ])
    with pytest.raises(UserError, match=r"m.jsonl:2: no gold answer found in field 'solution'"):
        load_records("math", path=file)
    record = load_records("math", path=file, limit=1)[0]
    assert record["answer"] == "0" and record["meta"]["answer_erratum"] == "empty box upstream"


# ----- bad input ----------------------------------------------------------------------------------------


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "gsm8k" / "test.jsonl"
    file.parent.mkdir()
    file.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2", "answer": \n', encoding="utf-8")
    with pytest.raises(UserError, match=r"test\.jsonl:2: malformed JSON line \(Expecting value"):
        load_records("gsm8k", path=tmp_path)


def test_non_object_line(tmp_path: Path) -> None:
    file = tmp_path / "x.jsonl"
    file.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"x\.jsonl:1: expected a JSON object, got list"):
        load_records("gsm8k", path=file)


def test_missing_field_names_field_and_record(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q2"}])
    with pytest.raises(UserError, match=r"x\.jsonl:2: missing field 'answer' \(fields present: question\)"):
        load_records("gsm8k", path=file)


def test_null_or_empty_field(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "x.jsonl", [{"question": " ", "answer": "#### 1"}])
    with pytest.raises(UserError, match=r"x\.jsonl:1: field 'question' is empty"):
        load_records("gsm8k", path=file)
    file = write_jsonl(tmp_path / "y.jsonl", [{"question": "q", "answer": None}])
    with pytest.raises(UserError, match=r"y\.jsonl:1: field 'answer' is null"):
        load_records("gsm8k", path=file)


def test_gsm8k_answer_without_marker(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "x.jsonl", [{"question": "q", "answer": "just 5"}])
    with pytest.raises(UserError, match=r"x\.jsonl:1: no gold answer found in field 'answer'.*####"):
        load_records("gsm8k", path=file)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    file = tmp_path / "x.jsonl"
    file.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=r"x\.jsonl is empty"):
        load_records("gsm8k", path=file)


def test_empty_json_array_and_bad_json(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text("[]", encoding="utf-8")
    with pytest.raises(UserError, match=r"e\.json is empty"):
        load_records("gsm8k", path=tmp_path / "e.json")
    (tmp_path / "b.json").write_text('[\n{"a": 1},\n{oops}\n]', encoding="utf-8")
    with pytest.raises(UserError, match=r"b\.json:3: malformed JSON"):
        load_records("gsm8k", path=tmp_path / "b.json")


def test_missing_path_and_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"path .*nowhere does not exist"):
        load_records("gsm8k", path=tmp_path / "nowhere")
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(UserError, match=r"no test file found; looked for .*gsm8k/test\.jsonl"):
        load_records("gsm8k", path=tmp_path)


def test_unsupported_suffix_and_non_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match="unsupported file type '.csv'"):
        load_records("gsm8k", path=tmp_path / "x.csv")
    (tmp_path / "x.jsonl").write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(UserError, match="not UTF-8"):
        load_records("gsm8k", path=tmp_path / "x.jsonl")


def test_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="limit must be a positive"):
        load_records("gsm8k", path=HUB_FIXTURES, limit=0)


# ----- custom datasets ----------------------------------------------------------------------------------


def test_custom_spec_model_is_strict_and_documented() -> None:
    from pydantic import ValidationError

    for name, info in CustomDatasetSpec.model_fields.items():
        assert info.description, f"{name} has no description"
    with pytest.raises(ValidationError):
        CustomDatasetSpec(name="x", path="a.jsonl", typo_field="q")
    with pytest.raises(ValidationError):
        CustomDatasetSpec(name="bad name", path="a.jsonl")
    with pytest.raises(ValidationError):
        CustomDatasetSpec(name="x", path="a.jsonl", answer_extractor="regex")


@pytest.mark.usefixtures("restore_registry")
@pytest.mark.parametrize("extractor, field_value, expected", [
    ("raw", "42", "42"), ("raw", 7.0, "7"), ("gsm8k", "work\n#### 1,234", "1234"),
    ("boxed", "so \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
])
def test_register_custom_maps_fields(tmp_path: Path, extractor: str, field_value: object, expected: str) -> None:
    file = write_jsonl(tmp_path / "mine.jsonl", [{"q": "What?", "gold": field_value, "why": "because", "tag": 1}])
    spec = CustomDatasetSpec(name="mine", path=file, question_field="q", answer_field="gold",
                             solution_field="why", answer_extractor=extractor)
    spec.register()
    assert "mine" in [name for name, _, _ in list_datasets()]
    [record] = load_records("mine")
    assert record["question"] == "What?" and record["answer"] == expected and record["solution"] == "because"
    assert record["meta"]["tag"] == 1 and record["source"] == "mine" and record["id"] == "mine-train-0"


@pytest.mark.usefixtures("restore_registry")
def test_register_custom_folder_splits_and_errors(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "dev.jsonl", [{"question": "a", "answer": "1"}])
    register_custom("folder_ds", tmp_path / "d", "question", "answer")
    assert load_records("folder_ds", split="dev")[0]["answer"] == "1"
    with pytest.raises(UserError, match="no train file found"):
        load_records("folder_ds")
    with pytest.raises(UserError, match="taken by a built-in"):
        register_custom("gsm8k", tmp_path / "d", "question", "answer")
    write_jsonl(tmp_path / "n.jsonl", [{"question": "a", "answer": "no box"}])
    register_custom("nobox", tmp_path / "n.jsonl", "question", "answer", answer_extractor="boxed")
    with pytest.raises(UserError, match=r"n\.jsonl:1: no gold answer found in field 'answer' \(boxed extractor\)"):
        load_records("nobox")


# ----- synthetic ----------------------------------------------------------------------------------------


def test_synthetic_passes_options_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def make_split(split: str, n: int, seed: int = 0, min_ops: int = 1, max_ops: int = 3) -> list[dict]:
        calls.append((split, n, seed, min_ops, max_ops))
        return [{"id": f"s{i}", "source": "synthetic", "question": f"q{i}", "answer": str(i), "solution": None,
                 "meta": {}} for i in range(n)]

    monkeypatch.setitem(sys.modules, "srlm.data.synthetic", types.SimpleNamespace(make_split=make_split))
    import srlm.data

    monkeypatch.setattr(srlm.data, "synthetic", sys.modules["srlm.data.synthetic"], raising=False)
    assert len(load_records("synthetic")) == 200  # the held-out test split by default, like a benchmark
    assert len(load_records("synthetic", split="train")) == 2000
    assert len(load_records("synthetic", split="train", n=5, seed=3, max_ops=4, limit=2)) == 2
    assert calls == [("test", 200, 0, 1, 3), ("train", 2000, 0, 1, 3), ("train", 5, 3, 1, 4)]


def test_synthetic_real_generator() -> None:
    pytest.importorskip("srlm.data.synthetic")
    records = load_records("synthetic", split="test", n=12, seed=1)
    check_canonical(records)
    assert len(records) == 12 and all(r["source"] == "synthetic" for r in records)
    with pytest.raises(UserError, match="synthetic"):
        load_records("synthetic", n=2, min_ops=3, max_ops=1)


# ----- the shared data folder (acceptance counts) --------------------------------------------------------

SHARED_COUNTS = [
    ("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("math500", None, 500), ("math", "train", 7500),
    ("minerva_math", None, 272), ("olympiadbench", None, 675), ("amc23", None, 40), ("aime24", None, 30),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no shared data folder at {SHARED_DATA}")
@pytest.mark.parametrize("name, split, count", SHARED_COUNTS)
def test_shared_data_counts(name: str, split: str | None, count: int) -> None:
    records = load_records(name, split=split, path=SHARED_DATA)
    assert len(records) == count
    check_canonical(records)


def test_exact_answers_is_a_field_of_the_registration():
    from srlm.data.sources import DATASETS, exact_answers

    # integer or exact-LaTeX golds; Minerva and OlympiadBench golds are rounded values and keep the tolerance
    exact = {name for name in DATASETS if exact_answers(name)}
    assert exact == {"gsm8k", "math500", "math", "amc23", "aime24", "camel_gsm8k", "synthetic"}
    assert not exact_answers(None) and not exact_answers("not_registered")

"""The compatibility checker: schema pairs it must call breaking or allow; a real git history."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.contracts.check import check
from tools.contracts.compat import narrowing

OBJ = {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "string"}},
       "required": ["a"], "additionalProperties": False}  # fmt: skip


def changed(**edits: object) -> dict:
    schema = json.loads(json.dumps(OBJ))
    for key, value in edits.items():
        schema[key] = value
    return schema


BREAKING = [
    ("required added", changed(required=["a", "b"]), "required added: 'b'"),
    ("field removed", changed(properties={"a": {"type": "number"}}), "field removed: 'b'"),
    ("type narrowed", changed(properties={**OBJ["properties"], "a": {"type": "integer"}}),
     "type narrowed: number -> integer"),
    ("additional properties closed", ({**OBJ, "additionalProperties": True}, OBJ),
     "additional properties closed"),
    ("enum value removed", ({"enum": ["x", "y"]}, {"enum": ["x"]}), "enum value removed: 'y'"),
    ("minimum raised", ({"type": "number", "minimum": 0}, {"type": "number", "minimum": 1}),
     "constraint tightened: minimum 0 -> 1"),
    ("maxLength lowered", ({"type": "string"}, {"type": "string", "maxLength": 5}),
     "constraint tightened: maxLength None -> 5"),
    ("pattern changed", ({"type": "string", "pattern": "^a"}, {"type": "string", "pattern": "^b"}),
     "constraint changed: pattern '^a' -> '^b'"),
    ("nested", ({"type": "object", "properties": {"f": OBJ}},
                {"type": "object", "properties": {"f": changed(required=["a", "b"])}}),
     "at f: required added: 'b'"),
    ("items narrowed", ({"type": "array", "items": {"type": "number"}},
                        {"type": "array", "items": {"type": "integer"}}), "at []: type narrowed"),
    ("unknown keyword", ({"type": "string"}, {"type": "string", "contentEncoding": "base64"}),
     "keyword 'contentEncoding' changed"),
]  # fmt: skip
ALLOWED = [
    ("optional field added to a closed object",
     changed(properties={**OBJ["properties"], "c": {"type": "number"}})),
    ("required removed", changed(required=[])),
    ("integer widened to number", changed(properties={**OBJ["properties"],
                                                      "a": {"type": ["number", "null"]}})),
    ("enum value added", ({"enum": ["x"]}, {"enum": ["x", "y"]})),
    ("minimum lowered", ({"type": "number", "minimum": 1}, {"type": "number", "minimum": 0})),
    ("description changed", changed(description="now documented")),
    ("additional properties opened", (OBJ, {**OBJ, "additionalProperties": True})),
]  # fmt: skip


def _pair(case: object) -> tuple[dict, dict]:
    return case if isinstance(case, tuple) else (OBJ, case)


@pytest.mark.parametrize(("name", "case", "expected"), BREAKING, ids=[b[0] for b in BREAKING])
def test_breaking_change_is_named(name: str, case: object, expected: str) -> None:
    before, after = _pair(case)
    found = [str(c) for c in narrowing(before, after)]
    assert any(expected in f for f in found), found


@pytest.mark.parametrize(("name", "case"), ALLOWED, ids=[a[0] for a in ALLOWED])
def test_compatible_change_is_allowed(name: str, case: object) -> None:
    before, after = _pair(case)
    assert narrowing(before, after) == []


@pytest.mark.npm  # the AsyncAPI parser and diff run on node
def test_the_repository_contracts_pass() -> None:
    report = check(REPO / "contracts")
    assert report.problems == []
    assert "asyncapi.yaml valid (@asyncapi/parser)" in report.notes


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A git repository holding a copy of contracts/, committed once."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "contracts", repo / "contracts")
    git(repo, "init", "-q", "-b", "main")
    git(
        repo,
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "0",
    )
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "released")
    return repo


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message)


def edit_schema(repo: Path, rel: str, edit) -> None:
    path = repo / "contracts" / rel
    schema = json.loads(path.read_text())
    edit(schema)
    path.write_text(json.dumps(schema, indent=2))


def run_checker(repo: Path, base: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "contracts", "check", "--base", base],
        env={**os.environ, "CONTRACTS_DIR": str(repo / "contracts")},
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip


def test_a_breaking_edit_in_place_fails_naming_field_change_and_consumers(history: Path) -> None:
    def add_required(schema: dict) -> None:
        schema["properties"]["confidence"] = {"type": "number"}
        schema["required"].append("confidence")

    edit_schema(history, "y_pred/v1/schema.json", add_required)
    commit(history, "y_pred needs a confidence")
    done = run_checker(history, "HEAD~1")
    assert done.returncode == 1, done.stdout
    assert (
        "y_pred v1 (y_pred/v1/schema.json) edited in place since HEAD~1 at (root): "
        "required added: 'confidence' - breaks metric (metric.y_pred)"
    ) in done.stdout
    # The valid example no longer passes either: the checker says that too.
    assert "y_pred/v1/examples/valid/prediction.json should be valid" in done.stdout


def test_loosening_a_released_version_is_breaking_too(history: Path) -> None:
    edit_schema(history, "y_true/v1/schema.json", lambda s: s.pop("additionalProperties"))
    commit(history, "accept extra fields")
    done = run_checker(history, "HEAD~1")
    assert done.returncode == 1
    assert "loosened" in done.stdout and "additional properties closed" in done.stdout


def test_removing_a_released_version_is_breaking(history: Path) -> None:
    shutil.rmtree(history / "contracts" / "features" / "v2")
    catalog = json.loads((history / "contracts" / "catalog.json").read_text())
    del catalog["types"]["features"]["versions"]["2"]
    catalog["types"]["features"]["consumers"][0]["accepts"] = [1]
    (history / "contracts" / "catalog.json").write_text(json.dumps(catalog))
    commit(history, "drop v2")
    done = run_checker(history, "HEAD~1")
    assert done.returncode == 1
    assert "features/v2/schema.json was released at HEAD~1 and is gone" in done.stdout


def test_a_new_version_is_checked_against_the_previous_under_the_mode(history: Path) -> None:
    contracts = history / "contracts"
    shutil.copytree(contracts / "y_true" / "v1", contracts / "y_true" / "v2")
    edit_schema(history, "y_true/v2/schema.json", lambda s: s.update(
        {"$id": s["$id"].replace("/v1/", "/v2/"), "title": "y_true v2",
         "required": [*s["required"], "unit"],
         "properties": {**s["properties"], "unit": {"type": "string"}}}))  # fmt: skip
    for example in (contracts / "y_true" / "v2" / "examples" / "valid").glob("*.json"):
        example.write_text(json.dumps({**json.loads(example.read_text()), "unit": "points"}))
    catalog = json.loads((contracts / "catalog.json").read_text())
    catalog["types"]["y_true"]["versions"]["2"] = "y_true/v2/schema.json"
    (contracts / "catalog.json").write_text(json.dumps(catalog))
    done = run_checker(history, "HEAD")
    assert done.returncode == 1
    assert (
        "y_true v2 is not backward-compatible with v1 at (root): required added: 'unit' - "
        "breaks metric (metric.y_true)"
    ) in done.stdout


@pytest.mark.npm  # the AsyncAPI parser and diff run on node
def test_an_unchanged_history_passes(history: Path) -> None:
    done = run_checker(history, "HEAD~1")
    assert done.returncode == 0, done.stdout
    assert "0 problem(s)" in done.stdout

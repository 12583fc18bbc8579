"""The committed stubs are what protos/ generates; buf lint passes and finds no breaking change."""
import shutil
import subprocess
from pathlib import Path

import pytest

from protos.generate import PROTO_ROOT, generate


def test_committed_stubs_are_fresh(tmp_path):
    for path in generate(tmp_path):
        committed = PROTO_ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make protos`"
    assert sorted(p.name for p in (PROTO_ROOT / "tradeup/v1").glob("*_pb2*")) == sorted(
        p.name for p in (tmp_path / "tradeup/v1").glob("*_pb2*"))


def test_every_field_is_documented():
    """The .proto files are the API reference: every field carries a comment."""
    for proto in Path(PROTO_ROOT).glob("tradeup/v1/*.proto"):
        for number, line in enumerate(proto.read_text().splitlines(), 1):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("//", "option", "syntax"))
            if is_field and "//" not in line:
                previous = proto.read_text().splitlines()[number - 2].strip()
                assert previous.startswith("//"), f"{proto.name}:{number} has no comment: {stripped}"


# --- buf: lint and breaking-change check (make buf installs the pinned binary) --------------------
ROOT = PROTO_ROOT.parent
BUF = ROOT / "tools/buf/node_modules/.bin/buf"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if not BUF.exists():
        pytest.fail(f"{BUF.relative_to(ROOT)} is missing: run `make buf` (make test does)")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    result = buf("lint", "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def previous_commit() -> str:
    """The commit before this one: on main, the previous commit on main."""
    result = subprocess.run(["git", "rev-parse", "--verify", "HEAD~1"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail("buf breaking needs the previous commit: run the tests in a clone with history")
    return result.stdout.strip()


def test_no_breaking_change_against_the_previous_commit():
    result = buf("breaking", "protos", "--against", f".git#ref={previous_commit()},subdir=protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_renumbered_field(tmp_path):
    """The check is live: renumbering a field of a copy of the contract is reported."""
    changed = tmp_path / "protos"
    shutil.copytree(PROTO_ROOT, changed, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    offers = changed / "tradeup/v1/offers.proto"
    text = offers.read_text()
    assert "string car_id = 1;" in text
    offers.write_text(text.replace("string car_id = 1;", "string car_id = 99;", 1))
    result = buf("breaking", str(changed), "--against", str(PROTO_ROOT))
    assert result.returncode != 0 and "car_id" in result.stdout + result.stderr

"""The committed stubs are what protos/ generates."""
from pathlib import Path

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

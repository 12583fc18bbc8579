"""Generates the Python stubs of protos/tradeup/v1/*.proto next to them (`make protos`).

The stubs are committed; tests/test_protos.py regenerates them into a temporary folder and
fails when the committed ones are stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.glob("tradeup/v1/*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write the *_pb2.py, *_pb2.pyi and *_pb2_grpc.py files under out_dir; return them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    status = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out_dir}",
                          f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTO_FILES])
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    written = sorted(p for p in out_dir.glob("tradeup/v1/*_pb2*.py*"))
    for path in written:
        # Imports relative to the protos package, so no path tricks are needed to import them.
        text = re.sub(r"^from tradeup\.v1 import", "from protos.tradeup.v1 import", path.read_text(), flags=re.M)
        path.write_text(text)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT):
        print(path)

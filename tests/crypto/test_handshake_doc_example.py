"""docs/handshake.md's usage example runs as written."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "handshake.md"


def test_usage_example_runs() -> None:
    text = DOC.read_text()
    block = text.split("<!-- usage-example:begin -->")[1].split("<!-- usage-example:end -->")[0]
    code = block.strip().removeprefix("```python").removesuffix("```")
    exec(compile(code, f"{DOC}:usage-example", "exec"), {})  # its asserts are the test

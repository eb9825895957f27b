from __future__ import annotations

from pathlib import Path

import pytest

from covidct.cli.serve import read_token
from covidct.errors import ConfigError


@pytest.mark.parametrize("content", ["", "   \n\t\n", "\n\n"], ids=["empty", "whitespace", "blank-lines"])
def test_empty_token_files_are_config_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="token file is empty"):
        read_token(path)


def test_token_file_first_nonblank_line_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("\n  s3cret-token-123  \nsecond line\n", encoding="utf-8")
    assert read_token(path) == "s3cret-token-123"
    path.write_text("short\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 8"):
        read_token(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_token(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")

"""Issue 12, item 4: malformed multipart uploads are client errors (400 with the reason), never a 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

_PART = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n\r\nabc\r\n'
CASES = {
    "no boundary": ("multipart/form-data", _PART + b"--xyz--\r\n", "no boundary"),
    "mismatched boundary": ("multipart/form-data; boundary=other", _PART + b"--xyz--\r\n", "boundary"),
    "part without Content-Disposition": (
        "multipart/form-data; boundary=xyz",
        b"--xyz\r\nContent-Type: application/octet-stream\r\n\r\nabc\r\n--xyz--\r\n",
        "Content-Disposition",
    ),
    "two file parts": (
        "multipart/form-data; boundary=xyz",
        _PART + _PART.replace(b"a.dcm", b"b.dcm") + b"--xyz--\r\n",
        "one study",
    ),
    "two file fields, one without a file name": (
        "multipart/form-data; boundary=xyz",
        _PART + b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\ndef\r\n--xyz--\r\n',
        "2 parts named 'file'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_multipart_is_400_with_the_reason(
    case: str, make_app: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    content_type, body, reason = CASES[case]
    with caplog.at_level(logging.INFO), TestClient(make_app(), raise_server_exceptions=False) as client:
        resp = client.post("/v1/studies", content=body, headers={"content-type": content_type})
        assert resp.status_code == 400, resp.text
        detail = resp.json()["detail"]
        assert "multipart" in detail and reason in detail
        assert "field 'file'" in detail  # the fix
        assert client.get("/healthz").json()["jobs"]["queued"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

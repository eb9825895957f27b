"""Hardening headers of every service response: nosniff, no framing, no referrer, a Content-Security-Policy per
kind of page, and ``Cache-Control: no-store`` on everything under ``/v1`` (results carry patient data)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Content-Security-Policy of the viewer and the API: only this origin's scripts, styles and connections;
#: images from this origin or the viewer's blob: URLs; never framed.
APP_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The self-contained HTML report: inline styles and data: images, no scripts at all.
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; frame-ancestors 'none'"
)
#: FastAPI's Swagger UI and ReDoc pages load their assets from the jsDelivr CDN (and start with an inline
#: script); only these pages get that allowance.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; font-src https://fonts.gstatic.com; "
    "connect-src 'self'; worker-src blob:; base-uri 'none'; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def security_headers(path: str) -> dict[str, str]:
    """The hardening headers of a response to ``path`` (lower-case names)."""
    if path in _DOCS_PATHS:
        csp = DOCS_CSP
    elif path.startswith("/v1/") and path.endswith("/report.html"):
        csp = REPORT_CSP
    else:
        csp = APP_CSP
    headers = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "content-security-policy": csp,
        "cross-origin-opener-policy": "same-origin",
    }
    if path.startswith("/v1/"):  # results and images carry patient data: no copy in any cache
        headers["cache-control"] = "no-store"
    return headers


class SecurityHeaders:
    """ASGI middleware adding :func:`security_headers` to every HTTP response (``Cache-Control`` replaced)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(str(scope.get("path", "")))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name == "cache-control" or name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

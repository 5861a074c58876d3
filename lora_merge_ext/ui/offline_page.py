"""Serve the standalone tool's pages without anything that reaches outside the machine: gradio's
page template loads a script from cdnjs and opens connections to Google's font servers, which an
offline tool must not do (and which fail, slowly, where there is no network).  OfflinePage wraps the
ASGI app and drops those tags from the HTML it serves; every other response passes untouched."""
from __future__ import annotations

import re

_EXTERNAL_TAG = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"']https?://[^\"']*[\"'][^>]*>\s*</script>"  # a script from another host
    r"|<link\b[^>]*\bhref\s*=\s*[\"']https?://[^\"']*[\"'][^>]*/?>",  # a preconnect or style from another host
    re.IGNORECASE)


def without_external_tags(html: str) -> str:
    """html without the <script src> and <link href> tags that point at another host."""
    return _EXTERNAL_TAG.sub("", html)


class OfflinePage:
    """ASGI middleware: HTML responses (not compressed) lose their external tags."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict = {}
        chunks: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if (headers.get(b"content-type", b"").startswith(b"text/html")
                        and b"content-encoding" not in headers):
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                text = b"".join(chunks).decode("utf-8", "surrogateescape")
                body = without_external_tags(text).encode("utf-8", "surrogateescape")
                start = held.pop("start")
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, rewrite)

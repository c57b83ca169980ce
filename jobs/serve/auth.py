"""Optional API keys: with keys set, every `/v1/` route but `/v1/health` needs `Authorization: Bearer <key>`.

Keys come from `--api-key-file` (`ServeOptions.api_key_file`: one key per line, blank lines and
`#` comments skipped) and from the `MASKGIT_API_KEYS` environment variable (comma-separated), read
by the process that builds the application (`maskgit serve`, `serve run`). Only their SHA-256
digests travel on to the ingress replica, so no key appears in a deployment's arguments, the Serve
config or a log line; a presented key is hashed and compared in constant time. Without keys the
service is open, as before (and `maskgit serve` warns when it binds a non-loopback address so).

A refused request gets 401 with `WWW-Authenticate: Bearer` in the route's error shape (OpenAI's
under `/v1/images/`). The web page, `/docs` and `/openapi.json` stay open: the page asks for a key
when an API call answers 401.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from jobs.serve.errors import Render, default_render

ENV_VAR = "MASKGIT_API_KEYS"
OPEN_ROUTES = ("/v1/health",)  # load balancers and orchestrators probe it without a key


def digest(key: str) -> str:
    """SHA-256 hex digest of a key (what the ingress keeps)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_api_keys(path: str | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The keys of `path` (one per line; blank lines and # comments skipped) and of $MASKGIT_API_KEYS.

    Raises:
        FileNotFoundError: `path` does not exist (the message names the flag, never a key).
    """
    keys = [key.strip() for key in environ.get(ENV_VAR, "").split(",")]
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--api-key-file {path} does not exist")
        with open(path, encoding="utf-8") as lines:
            keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return [key for key in keys if key]


def key_digests(path: str | None, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Digests of the configured keys (empty: no key required)."""
    return tuple(sorted({digest(key) for key in read_api_keys(path, environ)}))


class ApiKeyMiddleware:
    """Pure ASGI middleware answering 401 to `/v1/` requests without one of the keys whose digests it holds.

    Args:
        app: the ASGI app.
        digests: SHA-256 hex digests of the accepted keys; empty lets every request through.
        render: builds the error answer for a path (the route's error shape).
    """

    def __init__(self, app, digests: Iterable[str], render: Render = default_render):
        self.app, self.digests, self.render = app, tuple(digests), render

    def _accepts(self, header: bytes | None) -> bool:
        scheme, _, key = (header or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return False
        presented = digest(key.strip())
        return any(hmac.compare_digest(presented, known) for known in self.digests)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.digests:
            return await self.app(scope, receive, send)
        path, root = scope.get("path", ""), scope.get("root_path", "")
        route = path[len(root) :] if root and path.startswith(root) else path
        if not route.startswith("/v1/") or route.rstrip("/") in OPEN_ROUTES:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization")
        if self._accepts(header):
            return await self.app(scope, receive, send)
        message = (
            "this server requires an API key: send it as 'Authorization: Bearer <key>'"
            if header is None
            else "invalid API key (give one of the server's keys as 'Authorization: Bearer <key>')"
        )
        answer = self.render(path, 401, message, [])
        answer.headers["WWW-Authenticate"] = "Bearer"
        await answer(scope, receive, send)

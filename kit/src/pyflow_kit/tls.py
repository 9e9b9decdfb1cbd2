"""One TLS context per CA file for every Prefect API client of a process (`share_tls_contexts`).

Prefect makes a new API client for a flow run, for its events and for its logs, and each loads
its CA file into a new TLS context: some 40 ms each on a small machine, on every run, even
against a server on ``http://`` that never uses it. Dask workers apply this from their preload
(`pyflow_kit.preload`); `python -m pyflow` applies it before its run (`pyflow_kit.runtime`).
"""

from __future__ import annotations

import functools
import ssl
import types
from typing import Any

import prefect.client.orchestration


class SharedTLS(types.ModuleType):
    """The `ssl` module as Prefect's client module sees it, with one TLS context per CA file.

    Prefect hands a context made for a CA file to httpx as it is, and httpx sets only its ALPN
    protocols on it, the same for every Prefect client of a process (one
    ``PREFECT_API_ENABLE_HTTP2`` setting): so one context serves every client. A call without a
    CA file (Prefect's insecure option, which changes its context) still gets a new one.
    """

    def __init__(self) -> None:
        """Stand in for `ssl` under its own name."""
        super().__init__(ssl.__name__, ssl.__doc__)

    def __getattr__(self, name: str) -> Any:
        """Everything else is the `ssl` module's own."""
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        """Return the context made for these arguments before, if it has a CA file to trust."""
        if cafile is None:
            return ssl.create_default_context(purpose, capath=capath, cadata=cadata)
        return _verified_context(purpose, cafile, capath, cadata)


@functools.cache
def _verified_context(
    purpose: ssl.Purpose, cafile: str, capath: str | None, cadata: str | bytes | None
) -> ssl.SSLContext:
    """Make a verifying TLS context for a CA file, once per set of arguments."""
    return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def share_tls_contexts() -> bool:
    """Make Prefect's API clients in this process share one TLS context per CA file.

    What PrefectHQ/prefect#19106 proposes upstream. Returns whether it applied: not if a Prefect
    release no longer makes its contexts in `prefect.client.orchestration`.
    """
    module = prefect.client.orchestration
    if getattr(module, "ssl", None) is not ssl:
        return isinstance(getattr(module, "ssl", None), SharedTLS)
    module.ssl = SharedTLS()  # type: ignore[attr-defined]
    return True

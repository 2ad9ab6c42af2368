"""Is anything listening there? One TCP connect, for health checks and ``grayscope setup``."""

from __future__ import annotations

import asyncio
import contextlib


async def connect_error(host: str, port: int, timeout: float) -> Exception | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` s, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout)
    except (OSError, TimeoutError) as exc:
        return exc
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return None

"""Serving the viewer with waitress: a small, maintained, pure-Python WSGI server with a thread pool.

Why waitress: one package with no dependencies of its own (Pylons project, releases since 2011), on
every platform, production-grade (it answers slow or half-closed clients without blocking the others), and
threaded, which is what tile serving needs: a tile's work is JPEG/zlib decoding, resizing and encoding in
C code that releases the GIL, so a few threads render tiles side by side on several cores while the
browser keeps 6-8 connections open. An asyncio framework would hand that same work to threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from segcls.core.errors import SegclsError
from segcls.runtime.cores import available_cores

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 8000


def default_threads() -> int:
    """Request threads: 2 per core, at least 4 (browsers open 6 connections per host)."""
    return max(4, 2 * available_cores())


def make_server(app, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int | None = None):
    """A waitress server bound to host:port (port 0: any free port; `server.effective_port` says which)."""
    from waitress import create_server

    # "Task queue depth is N": every burst of tile requests from one browser, not news to a user.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        return create_server(
            app, host=host, port=port, threads=threads or default_threads(), ident="segcls-view",
            clear_untrusted_proxy_headers=True, channel_timeout=60,
        )  # fmt: skip
    except OSError as e:
        raise SegclsError(f"cannot listen on {host}:{port}: {e.strerror or e} (choose another with --port)") from None


def url_of(server) -> str:
    host = server.effective_host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.effective_port}/"


def close(server, thread: threading.Thread) -> None:
    """Stop a server whose loop runs on `thread`: its socket, its open connections, its request threads.

    Kept-alive browser connections stay in waitress's socket map (`_map`, which its loop runs over) until
    they time out, so they are closed too; all of it on the loop's own thread (a trigger thunk), as closing a
    socket under a running select() makes the loop fail with EBADF."""

    def shut() -> None:
        for channel in list(server._map.values()):
            if channel is not server.trigger:
                channel.close()
        server.close()  # the listening socket and the trigger: the map is empty, the loop ends

    if thread.is_alive():
        server.trigger.pull_trigger(shut)
        thread.join(10)
    if thread.is_alive() or server._map:
        shut()
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, threads: int | None = None) -> Iterator[str]:
    """Serve `app` on a background thread for the duration of the block; yields the base URL."""
    server = make_server(app, host, port, threads)
    thread = threading.Thread(target=server.run, name="segcls-view-server", daemon=True)
    thread.start()
    try:
        yield url_of(server)
    finally:
        close(server, thread)

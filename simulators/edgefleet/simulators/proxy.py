"""A TCP proxy on the simulator's event loop that a partition event can cut and heal.

Partitioned groups connect to the broker through their own proxy. Cutting it closes every
connection abruptly (no MQTT DISCONNECT passes, so the broker fires the devices' wills, as it
would when a site loses its uplink) and refuses new ones until it heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class PartitionProxy:
    """Forwards ``127.0.0.1:port`` to the broker; :meth:`cut` and :meth:`heal` the link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_now = False
        self.cuts = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    async def start(self) -> PartitionProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to another broker address."""
        self.target = (host, port)

    def cut(self) -> None:
        """Drop every open connection (a reset, not a close handshake) and refuse new ones."""
        self.cut_now = True
        self.cuts += 1
        for w in list(self._links):
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close sends RST, like a link that vanished.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self._links.clear()

    def is_cut(self) -> bool:
        """True while the partition lasts."""
        return self.cut_now

    def heal(self) -> None:
        """Accept connections again."""
        self.cut_now = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self.is_cut():
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._links.discard(writer)
        self._links.discard(up_writer)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if self.cut_now:
                dst.transport.abort()
            else:
                dst.close()

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
            for w in list(self._links):
                w.transport.abort()
            self._links.clear()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

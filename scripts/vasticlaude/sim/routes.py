"""The network in front of an instance's SSH server: Vast's proxy port and the direct port.

On Vast an instance is reached two ways: through Vast's SSH proxy (`ssh_host:ssh_port`) or
directly (`public_ipaddr` + `ports["22/tcp"]`), and either can be dead while the other works
(vast-api.md §17; SkyPilot `sky/provision/vast/instance.py`). So each public port of a sandbox
instance is a `Route`: a TCP relay on 127.0.0.1 to the instance's one SSH server, with a mode:

- ``open``: relays, counting the bytes each way (what bandwidth billing charges),
- ``refuse``: nothing listens; connecting gets ECONNREFUSED,
- ``blackhole``: the TCP connection is accepted and then nothing ever answers (a client
  waits for the SSH banner until its own timeout),
- ``tls``: something that is not an SSH server answers (a TLS alert) and hangs up, as a
  proxy port has been seen doing; the client fails in the banner exchange.

Changing the mode affects new connections only; established ones go on (a listener that
closes does not cut live TCP connections either). `stop()` cuts everything.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("vasticlaude.sim")

MODES = ("open", "refuse", "blackhole", "tls")
CHUNK = 65536
# A TLS "protocol version" alert: what a TLS server sends when it gets an SSH banner.
TLS_ALERT = bytes((0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46))


class Route:
    """One public port of an instance, relaying to its SSH server on `target`."""

    def __init__(self, name: str, target: int, meter: Callable[[str, int], None] | None = None):
        self.name = name
        self.target = target
        self.meter = meter
        self.port = 0
        self.mode = "open"
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int, mode: str = "open") -> int:
        """Take `port` (0 = any free one); the port is kept even while refusing."""
        self.mode = mode
        server = await self._listen(port)
        self.port = server.sockets[0].getsockname()[1]
        if mode == "refuse":
            server.close()
        else:
            self._server = server
        return self.port

    async def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"route mode must be one of {MODES}")
        if mode == self.mode:
            return
        self.mode = mode
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "refuse" and self._server is None:
            self._server = await self._listen(self.port)

    async def stop(self) -> None:
        """Close the port and cut every connection through it."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def _listen(self, port: int) -> asyncio.AbstractServer:
        return await asyncio.start_server(self._accept, "127.0.0.1", port, reuse_address=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                await _swallow(reader)
            elif self.mode == "tls":
                await _tls_refusal(reader, writer)
            else:
                await self._relay(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            _abort(writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            return
        self._writers.add(up_writer)
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, "in")),
                 asyncio.ensure_future(self._pump(up_reader, writer, "out"))]
        try:
            # SSH never half-closes a connection: when one side is done, so is the other.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._writers.discard(up_writer)
            _abort(up_writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Copy until EOF; `direction` "in" is client → instance, "out" instance → client."""
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                if self.meter is not None:
                    self.meter(direction, len(data))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass


async def _swallow(reader: asyncio.StreamReader) -> None:
    """Read and drop until the client gives up."""
    while await reader.read(CHUNK):
        pass


async def _tls_refusal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await asyncio.wait_for(reader.read(CHUNK), 5)
    except asyncio.TimeoutError:
        pass
    writer.write(TLS_ALERT)
    await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    if writer.transport is not None:
        writer.transport.abort()

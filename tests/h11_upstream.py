"""An upstream for the differential framing fuzz: raw sockets, parsed by h11.

The gateway parses responses with llhttp and its clients' requests with aiohttp's parser;
this upstream reads what the gateway sends with h11, an independent pure-Python
implementation of HTTP/1.1, so a framing mistake in the gateway shows as a disagreement
instead of being shared by both ends. It runs in a thread of its own (the tests drive
the gateway with blocking sockets), records every request it parsed with the connection
it came on, and answers each with whatever bytes the test's `script` returns, framing
mistakes included. Anything h11 refuses is recorded in `errors`: the gateway must never
send a request that an HTTP/1.1 parser cannot read one way only.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import threading
import time
from collections.abc import Callable

import h11


@dataclasses.dataclass
class Seen:
    """One request as h11 parsed it."""

    connection: int
    seq: int  # order of arrival of the request heads, over the upstream's life
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclasses.dataclass
class Answer:
    """What the upstream writes back: raw bytes, sent when the request's head is parsed
    (`early`) or when the whole request is, then optionally a close."""

    data: bytes
    close: bool = False
    early: bool = False


Script = Callable[[Seen], Answer]


def ok_answer(seen: Seen) -> Answer:
    """200 with the request's sequence number in `X-Upstream-Seq` and the body."""
    body = f"{seen.seq}".encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Upstream-Seq: {seen.seq}\r\n\r\n"
    return Answer(head.encode() + (b"" if seen.method == "HEAD" else body))


class _Conn:
    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.parser = h11.Connection(h11.SERVER)
        self.current: Seen | None = None
        self.answer: Answer | None = None  # the current request's, until it is sent


class H11Upstream:
    def __init__(self) -> None:
        self.records: list[Seen] = []  # whole requests, in the order they ended
        self.heads: list[Seen] = []  # every request head, whole or not
        self.errors: list[str] = []
        self.accepted = 0
        self.script: Script = ok_answer
        self._seq = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._idle_passes = 0  # select() passes in a row that found nothing to read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="h11-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> H11Upstream:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def reset(self) -> None:
        with self._lock:
            self.records.clear()
            self.heads.clear()
            self.errors.clear()

    def settle(self, timeout: float = 10.0) -> None:
        """Return once everything the gateway sent so far has been read and answered:
        two passes of the loop in a row with nothing readable. On loopback a write is in
        the peer's receive queue when the `send` returns, so anything sent before this
        call is seen."""
        with self._lock:
            self._idle_passes = 0
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._idle_passes >= 2:
                    return
            if time.monotonic() > deadline:
                raise AssertionError("the upstream did not settle")
            time.sleep(0.002)

    # -- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            events = self._selector.select(timeout=0.01)
            if not events:
                with self._lock:
                    self._idle_passes += 1
                continue
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        sock.settimeout(5)
        conn = _Conn(sock, self.accepted)
        self.accepted += 1
        self._selector.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except OSError:
            data = b""
        try:
            conn.parser.receive_data(data)
            self._events(conn)
        except (h11.RemoteProtocolError, RuntimeError) as exc:
            with self._lock:
                self.errors.append(f"connection {conn.index}: {exc!r}")
            self._drop(conn)
            return
        except OSError:
            self._drop(conn)
            return
        if not data and conn.sock.fileno() != -1:
            self._drop(conn)

    def _events(self, conn: _Conn) -> None:
        while True:
            event = conn.parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                conn.current = Seen(
                    conn.index,
                    self._seq,
                    event.method.decode("ascii"),
                    event.target.decode("ascii"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                )
                self._seq += 1
                with self._lock:
                    self.heads.append(conn.current)
                conn.answer = self.script(conn.current)
                if conn.answer.early:
                    answer, conn.answer = conn.answer, None
                    if self._send(conn, answer):
                        return
            elif isinstance(event, h11.Data):
                assert conn.current is not None
                conn.current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                seen = conn.current
                assert seen is not None
                with self._lock:
                    self.records.append(seen)
                conn.current = None
                answer, conn.answer = conn.answer, None
                if answer is not None and self._send(conn, answer):
                    return
                # The answer was raw bytes, not h11's: a fresh parser for the next request,
                # fed what the old one had read past this one.
                leftover, closed = conn.parser.trailing_data
                conn.parser = h11.Connection(h11.SERVER)
                if leftover:  # (b"" would mean the end of the stream to h11)
                    conn.parser.receive_data(leftover)
                if closed:
                    conn.parser.receive_data(b"")

    def _send(self, conn: _Conn, answer: Answer) -> bool:
        """Write an answer; True when the connection was closed after it."""
        if answer.data:
            conn.sock.sendall(answer.data)
        if answer.close:
            self._drop(conn)
            return True
        return False

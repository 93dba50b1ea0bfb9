"""Direct connections from a searcher to its shard actors: the fast data path of scatter-gather.

Why not only Ray's own paths: an actor call costs ~1.3 ms of task submission on our 2-core machines, several
times a whole search; a Ray Compiled Graph removes that, but in Ray 2.60 every reader of a compiled graph
busy-waits on its channel (``sched_yield`` in a loop), so each shard actor in a graph burns a core even when
no query comes, and 2-4 shard actors on 2 cores slow each other down (+0.8 / +2.7 / +5.3 ms for 1 / 2 / 4
shards, measured). A socket with a blocking wait costs tens of microseconds per hop and nothing when idle,
and any number of clients can hold one (a compiled graph allows one owner per actor).

Ray still owns the actors (placement, restarts, calls that retry); a channel is only a data path. A shard
actor listens once per interface (HMAC challenge with a random key per actor, which a client gets through an
ordinary, authenticated actor call) and answers each request on the connection's own thread.

What keeps answers right, whatever a peer does:

* Every request carries a sequence number and its answer echoes it; a client that reads an answer to another
  request closes the channel instead of using it. A channel whose answer was not read (a deadline passed, a
  send failed) is closed too, so a late answer can never be taken for the next query's.
* The listener never waits on a peer: it only accepts; the handshake runs on the connection's own thread
  with a deadline (``handshake_timeout_s``), and at most ``max_handshakes`` run at once. A peer that stays
  silent, resets, or sends garbage or an oversized length header costs its own thread, never the listener;
  accept errors other than the listener's own close (out of file descriptors, a connection aborted before
  it was taken) are logged and the listener goes on.
* Requests larger than ``max_request_bytes`` close their connection instead of allocating what the header
  claims.

A client on the shard's own node connects over a Unix socket in Linux's abstract namespace (``LOCAL``; no file
to clean up, gone with the process): a round trip costs each side ~10-20 us less CPU than over TCP loopback
(measured, 600-byte requests and 3 KB answers: client 31-40 vs 52-53 us, server 24-27 vs 42 us), which skips
the TCP/IP stack. Elsewhere (other nodes, other systems) it is TCP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

log = logging.getLogger(__name__)

_SEQ = struct.Struct("!Q")  # the sequence number in front of every request and answer
LOCAL = "local"  # ChannelServer.address(LOCAL): for clients on this node (a Unix socket where there is one)
_UNIX = "unix:"  # an address's host naming a socket in the abstract namespace (port 0)


def connect(host: str, port: int, timeout_s: float) -> socket.socket:
    """A connected socket to a listener's ``(host, port)`` as :meth:`ChannelServer.address` gives them."""
    if host.startswith(_UNIX):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect("\0" + host.removeprefix(_UNIX))
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO on a blocking socket: a read waits at most ``seconds`` (0: no limit). (``settimeout`` would
    make the descriptor non-blocking, which ``Connection``'s plain reads do not expect.)"""
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
    )


def _set_receive_timeout(conn: Connection, seconds: float) -> None:
    with socket.socket(fileno=conn.fileno()) as view:
        _receive_timeout(view, seconds)
        view.detach()


class ChannelServer:
    """The shard actor's side: listeners that call ``handler(*payload)`` for each request they receive."""

    def __init__(
        self,
        handler: Callable[..., Any],
        *,
        handshake_timeout_s: float = 2.0,
        max_handshakes: int = 32,
        max_request_bytes: int = 64 << 20,
    ) -> None:
        self.handler = handler
        self.key = os.urandom(32)
        self.handshake_timeout_s = handshake_timeout_s
        self.max_request_bytes = max_request_bytes
        self._handshakes = threading.BoundedSemaphore(max_handshakes)
        self._listeners: dict[str, socket.socket] = {}
        self._addresses: dict[str, tuple[str, int]] = {}  # what address() gives clients, per listener
        self._lock = threading.Lock()
        self._closed = False
        self.requests = 0
        self.refused = 0  # connections that failed or never finished the handshake, or were turned away

    def address(self, host: str) -> tuple[str, int, bytes]:
        """``(host, port, key)`` of a listener on ``host`` (started on first use): ``LOCAL`` for clients on
        this node, the node's address for others, never every interface. On Linux, ``LOCAL`` is a Unix socket
        named at random in the abstract namespace (``("unix:<name>", 0, key)``), elsewhere 127.0.0.1."""
        with self._lock:
            if host not in self._listeners:
                if host == LOCAL and sys.platform == "linux":
                    name = f"laconic-channel-{os.getpid()}-{os.urandom(8).hex()}"
                    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    listener.bind("\0" + name)  # a leading NUL: the abstract namespace
                    listener.listen(128)
                    where = (_UNIX + name, 0)
                else:
                    listener = socket.create_server(("127.0.0.1" if host == LOCAL else host, 0), backlog=128)
                    where = listener.getsockname()[:2]
                self._listeners[host] = listener
                self._addresses[host] = where
                threading.Thread(
                    target=self._accept, args=(listener,), name=f"channel-accept-{host}", daemon=True
                ).start()
            return *self._addresses[host], self.key

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError as e:
                if self._closed or listener.fileno() == -1:
                    return
                log.warning("channel listener: accept failed (%s); still listening", e)
                time.sleep(0.05)  # e.g. out of file descriptors: do not spin
                continue
            if not self._handshakes.acquire(blocking=False):
                self.refused += 1
                log.warning("channel listener: too many handshakes in progress; refused a connection")
                sock.close()
                continue
            threading.Thread(target=self._serve, args=(sock,), name="channel-conn", daemon=True).start()

    def _handshake(self, sock: socket.socket) -> Connection | None:
        """Authenticate a new connection within the deadline, or close it; frees its handshake slot."""
        try:
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _receive_timeout(sock, self.handshake_timeout_s)
            conn = Connection(sock.detach())
        except OSError:
            sock.close()
            self._handshakes.release()
            return None
        try:
            deliver_challenge(conn, self.key)
            answer_challenge(conn, self.key)
            _set_receive_timeout(conn, 0.0)  # authenticated: an idle client may wait as long as it likes
            return conn
        except Exception as e:  # silent (timeout), reset, garbage, wrong key: that peer only
            self.refused += 1
            log.info("channel listener: refused a connection (%s)", type(e).__name__)
            conn.close()
            return None
        finally:
            self._handshakes.release()

    def _serve(self, sock: socket.socket) -> None:
        conn = self._handshake(sock)
        if conn is None:
            return
        with conn:
            while True:
                try:
                    request = conn.recv_bytes(self.max_request_bytes)
                except (EOFError, OSError):  # closed, reset, or a length beyond the limit
                    return
                seq = request[: _SEQ.size]
                try:
                    answer = (True, self.handler(*pickle.loads(request[_SEQ.size :])))
                except Exception as e:
                    answer = (False, e)
                self.requests += 1
                try:
                    data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # an exception that cannot be pickled still reaches the client
                    data = pickle.dumps((False, RuntimeError(f"{answer[1]!r} ({e})")))
                try:
                    conn.send_bytes(seq + data)
                except OSError:
                    return

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for listener in self._listeners.values():
                with contextlib.suppress(OSError):  # wakes the accept() blocked on it (close alone does not)
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
            self._listeners.clear()
            self._addresses.clear()


class ChannelClosed(RuntimeError):
    """The channel failed (closed, reset, timed out, out of step); it must not be used again."""


class Channel:
    """The searcher's side of one connection. One request at a time: hold ``lock`` from ``send`` to
    ``receive``, and call ``receive`` after every successful ``send`` (or ``close``)."""

    def __init__(self, host: str, port: int, key: bytes, connect_timeout_s: float = 2.0) -> None:
        self.address = (host, port, key)  # a restarted actor listens elsewhere, with another key
        sock = connect(host, port, connect_timeout_s)
        sock.settimeout(None)  # blocking again: waits after the handshake use poll() with a deadline
        _receive_timeout(sock, connect_timeout_s)  # ... and the handshake's reads fail after this long
        self.conn = Connection(sock.detach())
        try:
            answer_challenge(self.conn, key)  # what multiprocessing.connection.Client does, with a timeout
            deliver_challenge(self.conn, key)
        except Exception as e:
            self.conn.close()
            if isinstance(e, OSError):  # a receive timeout: EAGAIN
                raise ChannelClosed(f"no handshake from {host}:{port} within {connect_timeout_s} s") from e
            raise
        _set_receive_timeout(self.conn, 0.0)
        self.lock = threading.Lock()
        self._seq = 0
        self.answered = 0  # answers read (the handler's exceptions included)

    def send(self, data: bytes) -> None:
        """Send one pickled payload (the same bytes may go to every shard: the sequence number is framed
        in front, not pickled in)."""
        self._seq += 1
        try:
            self.conn.send_bytes(_SEQ.pack(self._seq) + data)
        except OSError as e:
            self.close()
            raise ChannelClosed(str(e)) from None

    def receive(self, timeout_s: float) -> Any:
        """The answer to the request sent last; the handler's exception is raised here as itself (the
        channel stays usable: that answer was read)."""
        try:
            if not self.conn.poll(max(timeout_s, 0.0)):
                raise ChannelClosed(f"no answer within {timeout_s:.3f} s")
            message = self.conn.recv_bytes()
            (seq,) = _SEQ.unpack_from(message)
            if seq != self._seq:
                raise ChannelClosed(f"answer to request {seq} while waiting for {self._seq}")
            ok, value = pickle.loads(memoryview(message)[_SEQ.size :])
            self.answered += 1
        except (EOFError, OSError, struct.error, pickle.UnpicklingError) as e:
            self.close()
            raise ChannelClosed(str(e) or type(e).__name__) from None
        except ChannelClosed:
            self.close()
            raise
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self.conn.close()

    @property
    def closed(self) -> bool:
        return self.conn.closed

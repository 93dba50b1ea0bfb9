"""Direct connections from a searcher to its shard actors: the fast data path of scatter-gather.

Why not only Ray's own paths: an actor call costs ~1.3 ms of task submission on our 2-core machines, several
times a whole search; a Ray Compiled Graph removes that, but in Ray 2.60 every reader of a compiled graph
busy-waits on its channel (``sched_yield`` in a loop), so each shard actor in a graph burns a core even when
no query comes, and 2-4 shard actors on 2 cores slow each other down (+0.8 / +2.7 / +5.3 ms for 1 / 2 / 4
shards, measured). A socket with a blocking wait costs tens of microseconds per hop and nothing when idle,
and any number of clients can hold one (a compiled graph allows one owner per actor).

Ray still owns the actors (placement, restarts, calls that retry); a channel is only a data path. A shard
actor listens once per interface with ``multiprocessing.connection`` (HMAC challenge with a random key per
actor, which a client gets through an ordinary, authenticated actor call) and answers each request on the
connection's own thread. Clients send one pickled payload to every shard first, then wait for each answer
with a deadline. An error, a closed connection or a timeout closes that channel (a late answer must never
be read as the next query's); the caller sends that shard's query through actor calls instead.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
from typing import Any

log = logging.getLogger(__name__)


class ChannelServer:
    """The shard actor's side: listeners that call ``handler(*payload)`` for each request they receive."""

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self.key = os.urandom(32)
        self._listeners: dict[str, Listener] = {}
        self._lock = threading.Lock()
        self.requests = 0

    def address(self, host: str) -> tuple[str, int, bytes]:
        """``(host, port, key)`` of a listener on ``host`` (started on first use): 127.0.0.1 for clients on
        this node, the node's address for others, never every interface."""
        with self._lock:
            if host not in self._listeners:
                listener = Listener((host, 0), authkey=self.key)
                self._listeners[host] = listener
                threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
            return host, self._listeners[host].address[1], self.key

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:  # closed
                return
            except Exception as e:  # a client that failed the challenge
                log.warning("refused a channel connection: %s", e)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    request = conn.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    answer = (True, self.handler(*pickle.loads(request)))
                except Exception as e:
                    answer = (False, e)
                self.requests += 1
                try:
                    conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
                except (OSError, pickle.PicklingError):
                    return

    def close(self) -> None:
        with self._lock:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()


def _receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO on a blocking socket: a read waits at most ``seconds`` (0: no limit)."""
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
    )


class ChannelClosed(RuntimeError):
    """The channel failed (closed, reset, timed out); it must not be used again."""


class Channel:
    """The searcher's side of one connection. One request at a time: hold ``lock`` from ``send`` to
    ``receive``."""

    def __init__(self, host: str, port: int, key: bytes, connect_timeout_s: float = 2.0) -> None:
        sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        with socket.socket(fileno=self.conn.fileno()) as view:
            _receive_timeout(view, 0.0)
            view.detach()
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        try:
            self.conn.send_bytes(data)
        except OSError as e:
            self.close()
            raise ChannelClosed(str(e)) from None

    def receive(self, timeout_s: float) -> Any:
        """The answer to the request sent last; the handler's exception is raised here as itself."""
        try:
            if not self.conn.poll(max(timeout_s, 0.0)):
                raise ChannelClosed(f"no answer within {timeout_s:.3f} s")
            ok, value = pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as e:
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

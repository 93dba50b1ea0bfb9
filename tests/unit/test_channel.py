"""Direct shard connections (laconic_ray/distributed/channel.py) without Ray: answers, errors, deadlines."""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time

import pytest

from laconic_ray.distributed.channel import LOCAL, Channel, ChannelClosed, ChannelServer, connect

RELEASE_SLOW = threading.Event()  # a "slow" request is answered only once the test has seen its deadline pass


def handler(a, b):
    if b == "slow":
        RELEASE_SLOW.wait(10)
    if b == 0:
        raise ZeroDivisionError("b is zero")
    return a / b


@pytest.fixture
def server():
    server = ChannelServer(handler)
    yield server
    server.close()


def test_answers_and_handler_errors(server):
    host, port, key = server.address("127.0.0.1")
    assert host == "127.0.0.1"
    channel = Channel(host, port, key)
    channel.send(pickle.dumps((6, 3)))
    assert channel.receive(2.0) == 2
    channel.send(pickle.dumps((1, 0)))
    with pytest.raises(ZeroDivisionError, match="b is zero"):
        channel.receive(2.0)
    channel.send(pickle.dumps((1, 4)))  # an error in the handler leaves the channel usable
    assert channel.receive(2.0) == 0.25 and not channel.closed
    assert server.requests == 3


def test_wrong_key_is_refused(server):
    host, port, _ = server.address("127.0.0.1")
    with pytest.raises(Exception):  # noqa: B017 - multiprocessing's AuthenticationError or a reset
        Channel(host, port, b"not the key" * 3)


def test_a_late_answer_closes_the_channel(server):
    channel = Channel(*server.address("127.0.0.1"))
    RELEASE_SLOW.clear()
    channel.send(pickle.dumps((1, "slow")))
    try:
        with pytest.raises(ChannelClosed, match="no answer within"):
            channel.receive(0.1)
    finally:
        RELEASE_SLOW.set()  # now the answer comes, late
    assert channel.closed  # its late answer must never be read as the next request's


def test_handshake_has_a_deadline():
    # a listener that accepts and never speaks: construction must fail within the timeout, not hang
    with socket.create_server(("127.0.0.1", 0)) as silent:
        accepted = []
        threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
        started = time.monotonic()
        with pytest.raises(ChannelClosed, match="no handshake"):
            Channel("127.0.0.1", silent.getsockname()[1], b"k" * 32, connect_timeout_s=0.3)
        assert time.monotonic() - started < 2.0


def _connected(server, where: str = "127.0.0.1") -> tuple[socket.socket, tuple]:
    host, port, key = server.address(where)
    return connect(host, port, 5.0), (host, port, key)


def test_a_client_on_the_node_gets_a_unix_socket_and_one_elsewhere_tcp(server):
    local = server.address(LOCAL)
    assert local[0].startswith("unix:") and local[1] == 0 and server.address(LOCAL) == local  # one listener
    assert server.address("127.0.0.1")[0] == "127.0.0.1"
    for address in (local, server.address("127.0.0.1")):
        channel = Channel(*address)
        channel.send(pickle.dumps((6, 3)))
        assert channel.receive(2.0) == 2
        channel.close()
    server.close()
    with pytest.raises(OSError):  # closed: the name is gone with it
        connect(local[0], 0, 1.0)


def test_a_silent_peer_does_not_block_other_handshakes(server):
    silent, address = _connected(server)  # connects and never speaks
    try:
        started = time.monotonic()
        channel = Channel(*address, connect_timeout_s=5.0)
        channel.send(pickle.dumps((8, 2)))
        assert channel.receive(5.0) == 4
        assert time.monotonic() - started < 1.0  # not after the silent peer's handshake deadline
    finally:
        silent.close()


@pytest.mark.parametrize(
    "behaviour",
    ["reset", "garbage", "huge length header", "wrong challenge answer", "silent past the deadline"],
)
@pytest.mark.parametrize("where", ["127.0.0.1", LOCAL])
def test_a_hostile_peer_never_stops_the_listener(behaviour, where):
    server = ChannelServer(handler, handshake_timeout_s=0.3)
    try:
        peer, address = _connected(server, where)
        if behaviour == "reset":  # RST instead of FIN
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif behaviour == "garbage":
            peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        elif behaviour == "huge length header":
            peer.sendall(b"\xff\xff\xff\xff" + b"\x7f" * 8)  # "-1" then an 8-byte length of ~9e18
        elif behaviour == "wrong challenge answer":
            peer.recv(64)
            peer.sendall(struct.pack("!i", 16) + b"\0" * 16)
        deadline = time.monotonic() + 5
        if behaviour != "silent past the deadline":
            peer.close()
        # the peer's thread has given up (a silent peer, still connected, at the 0.3 s handshake timeout)
        while server.refused < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        peer.close()
        assert server.refused == 1
        for _ in range(3):  # ... and the listener still takes good clients
            channel = Channel(*address)
            channel.send(pickle.dumps((9, 3)))
            assert channel.receive(2.0) == 3
            channel.close()
    finally:
        server.close()


def test_handshakes_in_flight_are_bounded():
    server = ChannelServer(handler, handshake_timeout_s=0.5, max_handshakes=2)
    try:
        peers = [_connected(server)[0] for _ in range(4)]  # 2 hold the slots, 2 are turned away at once
        deadline = time.monotonic() + 5
        while server.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.refused == 2
        with pytest.raises((EOFError, OSError, ChannelClosed)):  # full: turned away, not queued forever
            Channel(*server.address("127.0.0.1"), connect_timeout_s=5.0)
        while server.refused < 5 and time.monotonic() < deadline:  # the two silent peers time out ...
            time.sleep(0.01)
        channel = Channel(*server.address("127.0.0.1"), connect_timeout_s=5.0)  # ... and the slots are free
        channel.send(pickle.dumps((4, 2)))
        assert channel.receive(2.0) == 2
        for peer in peers:
            peer.close()
    finally:
        server.close()


def test_an_answer_to_another_request_is_never_taken():
    server = ChannelServer(handler)
    try:
        channel = Channel(*server.address("127.0.0.1"))
        channel.send(pickle.dumps((1, 1)))  # its answer is never read ...
        channel.send(pickle.dumps((2, 1)))
        with pytest.raises(ChannelClosed, match="answer to request 1 while waiting for 2"):
            channel.receive(2.0)  # ... so the first answer to arrive is refused, not returned as the second's
        assert channel.closed
    finally:
        server.close()


def test_an_oversized_request_closes_only_its_connection():
    server = ChannelServer(handler, max_request_bytes=1000)
    try:
        address = server.address("127.0.0.1")
        big = Channel(*address)
        big.send(pickle.dumps((1, 1)) + b"\0" * 2000)
        with pytest.raises(ChannelClosed):
            big.receive(2.0)
        small = Channel(*address)
        small.send(pickle.dumps((6, 2)))
        assert small.receive(2.0) == 3
    finally:
        server.close()

"""Direct shard connections (laconic_ray/distributed/channel.py) without Ray: answers, errors, deadlines."""

from __future__ import annotations

import pickle
import socket
import threading
import time

import pytest

from laconic_ray.distributed.channel import Channel, ChannelClosed, ChannelServer

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

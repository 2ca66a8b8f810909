"""chat-server with a real Python STOMP client: stomp.py over WebSocket.

Reads the server's address from CHAT_URL (e.g. http://127.0.0.1:8080).
"""

import json
import os
import queue
import time
import urllib.request
import uuid
from urllib.parse import urlparse

import pytest
import stomp
from stomp.adapter.ws import WSStompConnection

CHAT_URL = os.environ.get("CHAT_URL", "").rstrip("/")
TIMEOUT = 5.0


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Inbox(stomp.ConnectionListener):
    """Queues every frame the connection receives, by kind."""

    def __init__(self):
        self.messages = queue.Queue()
        self.receipts = queue.Queue()
        self.errors = queue.Queue()
        self.connected = queue.Queue()

    def on_connected(self, frame):
        self.connected.put(frame)

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        self.receipts.put(frame)

    def on_error(self, frame):
        self.errors.put(frame)

    def next_message(self, pred=lambda f, body: True, what="a message"):
        deadline = time.monotonic() + TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            try:
                frame = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            body = json.loads(frame.body)
            if pred(frame, body):
                return frame, body

    def receipt(self, receipt_id):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                frame = self.receipts.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if frame.headers.get("receipt-id") == receipt_id:
                return frame
        raise AssertionError(f"no RECEIPT {receipt_id}")


@pytest.fixture
def server():
    if not CHAT_URL:
        pytest.fail("set CHAT_URL to the running chat-server, e.g. http://127.0.0.1:8080")
    u = urlparse(CHAT_URL)
    return u.hostname, u.port or 80


@pytest.fixture
def connect(server):
    """Factory: a connected WSStompConnection for a login, disconnected after the test."""
    opened = []

    def make(login):
        conn = WSStompConnection(
            [server],
            ws_path="/ws",
            vhost="/",
            header=["Sec-WebSocket-Protocol: v12.stomp"],
            heartbeats=(10000, 10000),
            reconnect_attempts_max=1,
        )
        inbox = Inbox()
        conn.set_listener("inbox", inbox)
        conn.connect(username=login, wait=True)
        opened.append(conn)
        connected = inbox.connected.get(timeout=TIMEOUT)
        return conn, inbox, connected

    yield make
    for conn in opened:
        if conn.is_connected():
            conn.disconnect()


def http_json(path):
    with urllib.request.urlopen(CHAT_URL + path, timeout=TIMEOUT) as r:
        return r.status, json.loads(r.read())


def test_connect_subscribe_send_receive_own_message(connect):
    login = unique("py")
    room = unique("pyroom")
    conn, inbox, connected = connect(login)
    assert connected.headers["version"] == "1.2"
    assert connected.headers["x-user-id"] == login
    assert connected.headers["user-name"] == login
    assert connected.headers.get("x-server-id")
    assert connected.headers.get("session")

    conn.subscribe(destination=f"/topic/room/{room}", id="sub-0", ack="auto")
    _, join = inbox.next_message(lambda f, b: b["type"] == "JOIN", "own JOIN")
    assert join["sender"]["id"] == login
    assert join["roomId"] == room

    receipt = unique("r")
    body = json.dumps({"content": "hello from stomp.py ✓", "type": "CHAT"})
    conn.send(
        destination=f"/app/room/{room}",
        body=body,
        content_type="application/json",
        headers={"receipt": receipt, "x-client": "stomp-py"},
    )
    inbox.receipt(receipt)
    frame, msg = inbox.next_message(lambda f, b: b["type"] == "CHAT", "own CHAT message")

    h = frame.headers
    assert h["destination"] == f"/topic/room/{room}"
    assert h["subscription"] == "sub-0"
    assert h["message-id"]
    assert h["content-type"].startswith("application/json")
    assert h["x-epoch"] == msg["epoch"] == join["epoch"]
    assert h["x-offset"] == str(msg["offset"])
    assert h["x-client"] == "stomp-py"
    assert msg["offset"] == join["offset"] + 1
    assert msg["content"] == "hello from stomp.py ✓"
    assert msg["sender"] == {"id": login, "name": login}
    assert msg["roomId"] == room
    for key in ("id", "sentAt", "serverId"):
        assert msg[key], key

    status, page = http_json(f"/api/rooms/{room}/messages?limit=10")
    assert status == 200
    assert [m["id"] for m in page["messages"]] == [join["id"], msg["id"]]
    assert inbox.errors.empty()


def test_second_client_sees_the_message(connect):
    room = unique("pyroom")
    alice, alice_inbox, _ = connect(unique("pya"))
    bob_login = unique("pyb")
    bob, bob_inbox, _ = connect(bob_login)
    alice.subscribe(destination=f"/topic/room/{room}", id="a", ack="auto")
    alice_inbox.next_message(lambda f, b: b["type"] == "JOIN", "alice JOIN")
    receipt = unique("r")
    bob.send(destination=f"/app/room/{room}", body="plain text", headers={"receipt": receipt})
    bob_inbox.receipt(receipt)
    frame, msg = alice_inbox.next_message(lambda f, b: b["type"] == "CHAT", "bob's message")
    assert msg["content"] == "plain text"
    assert msg["sender"]["id"] == bob_login
    assert frame.headers["subscription"] == "a"

#!/usr/bin/env python3
"""Gateway RSS before, during and after a flood of never-reading sync clients (issue #12, H1).

Starts a gateway binary on the memory engine (one core), fills a chat with a full sync page of
4 KiB messages, then connects N members on raw sockets that each ask for full pages at the
default rate limit (10 sync requests every 100 ms) and never read. Samples the gateway's VmRSS
and its queued-bytes gauge every 100 ms until every flooder is closed as a slow consumer, then
again once the clients are gone.

    python3 bench/sync_flood_rss.py target/debug/gateway --connections 200
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time

SECRET = b"bench-secret-of-enough-length"
PAGE = 200
BODY = "x" * 4096


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token(user_id):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": str(user_id), "exp": int(time.time()) + 3600}).encode())
    signed = head + b"." + claims
    return (signed + b"." + b64(hmac.new(SECRET, signed, hashlib.sha256).digest())).decode()


def text_frame(obj):
    payload = json.dumps(obj).encode()
    mask = os.urandom(4)
    head = bytearray([0x81])
    if len(payload) < 126:
        head.append(0x80 | len(payload))
    else:
        head.append(0x80 | 126)
        head += len(payload).to_bytes(2, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked


def upgrade(port, user_id):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Authorization: Bearer {token(user_id)}\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metric(admin_port, name):
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{name} missing")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gateway")
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()

    port, admin_port = free_port(), free_port()
    gateway = subprocess.Popen(
        [args.gateway, "--listen", f"127.0.0.1:{port}", "--admin-listen",
         f"127.0.0.1:{admin_port}", "--cores", "1", "--jwt-secret", SECRET.decode()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.1)
        flooders = range(2, 2 + args.connections)
        owner = upgrade(port, 1)
        owner.sendall(text_frame({"type": "create_chat", "client_msg_id": 1, "kind": "group",
                                  "title": "history", "members": list(flooders)}))
        time.sleep(0.5)
        # Chat ids start at 1 on a fresh memory engine. Two halves, within the rate limit.
        for half in range(2):
            for i in range(PAGE // 2):
                owner.sendall(text_frame({"type": "send", "chat_id": 1,
                                          "client_msg_id": 10 + half * PAGE + i, "body": BODY}))
            time.sleep(2.5)
        rss_before = rss_mib(gateway.pid)

        sockets = [upgrade(port, user) for user in flooders]
        for sock in sockets:
            sock.setblocking(False)
        rss_connected = rss_mib(gateway.pid)
        started = time.monotonic()
        rss_peak, queued_peak, requests = rss_connected, 0.0, 0
        open_sockets = list(sockets)
        while time.monotonic() - started < 120:
            for sock in list(open_sockets):
                try:
                    for _ in range(10):
                        sock.send(text_frame({"type": "sync", "client_msg_id": requests,
                                              "chat_id": 1, "after_seq": 0, "limit": PAGE}))
                        requests += 1
                except OSError:
                    open_sockets.remove(sock)
            time.sleep(0.1)
            rss_peak = max(rss_peak, rss_mib(gateway.pid))
            queued_peak = max(queued_peak, metric(admin_port, "gateway_outbound_queue_bytes"))
            if metric(admin_port, "gateway_slow_consumer_closes_total") >= len(sockets):
                break
        flood_secs = time.monotonic() - started
        closes = metric(admin_port, "gateway_slow_consumer_closes_total")
        rss_closed = rss_mib(gateway.pid)
        for sock in sockets:
            sock.close()
        time.sleep(5)
        rss_after = rss_mib(gateway.pid)
        queued_after = metric(admin_port, "gateway_outbound_queue_bytes")
        print(f"connections {len(sockets)}, sync requests {requests}, flood {flood_secs:.1f} s, "
              f"slow-consumer closes {closes:.0f}")
        print(f"RSS MiB: before {rss_before:.1f}, connected {rss_connected:.1f}, "
              f"peak {rss_peak:.1f}, all closed {rss_closed:.1f}, 5 s after {rss_after:.1f}")
        print(f"queued bytes MiB: peak sample {queued_peak / 2**20:.1f}, "
              f"after {queued_after / 2**20:.1f}")
    finally:
        gateway.terminate()
        gateway.wait()


if __name__ == "__main__":
    main()

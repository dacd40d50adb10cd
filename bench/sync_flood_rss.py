#!/usr/bin/env python3
"""Gateway RSS before, during and after a flood of never-reading sync clients (issue #12, H1).

Starts a gateway binary (one core) on the memory engine, or on the amqp engine with a backend
worker binary next to it (RabbitMQ, PostgreSQL and Redis on their default local ports, under a
private prefix removed afterwards). Fills chats with a full sync page of 4 KiB messages each
(at most 999 flooders per chat, the member bound), then connects N members on raw sockets
that each ask for full pages at the default rate limit (10 sync requests every 100 ms) and
never read. Samples the gateway's VmRSS and its queued-bytes gauge every 100 ms until every
flooder is closed as a slow consumer, then again once the clients are gone.

    python3 bench/sync_flood_rss.py target/release/gateway --connections 1000
    python3 bench/sync_flood_rss.py target/release/gateway --connections 1000 --engine amqp
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import shutil
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


def upgrade(port, user_id, path="/ws"):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Authorization: Bearer {token(user_id)}\r\n\r\n"
        ).encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_json_frame(sock):
    """The next server frame of a ?format=json session, as an object."""
    head = read_exact(sock, 2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(read_exact(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(read_exact(sock, 8), "big")
    payload = read_exact(sock, length)
    return json.loads(payload) if head[0] & 0x0F == 1 else {}


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


def metrics(admin_port):
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    return body.decode().splitlines()


def metric(admin_port, name):
    for line in metrics(admin_port):
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{name} missing")


def wait_for(port, admin_port, process, ready_path=None):
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError("the gateway exited")
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            if ready_path is None:
                return
            with socket.create_connection(("127.0.0.1", admin_port)) as sock:
                sock.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             .encode())
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway did not become ready")


def clean_up_amqp(prefix):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc",
                    f"DROP SCHEMA IF EXISTS {prefix} CASCADE"], capture_output=True)
    if shutil.which("rabbitmqctl"):
        queues = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"],
                                capture_output=True, text=True).stdout.split()
        for queue in queues:
            if queue.startswith(prefix + "."):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


def fill_chats(port, flooders):
    """Chats of user 1 with at most 999 flooders each, each holding a full page; the chat
    id of each flooder."""
    owner = upgrade(port, 1, "/ws?format=json")
    read_json_frame(owner)  # welcome
    groups = [flooders[i:i + 999] for i in range(0, len(flooders), 999)]
    chat_of = {}
    for n, members in enumerate(groups):
        owner.sendall(text_frame({"type": "create_chat", "client_msg_id": 1 + n, "kind": "group",
                                  "title": "history", "members": list(members)}))
        while (frame := read_json_frame(owner)).get("type") != "chat_created":
            pass
        for user in members:
            chat_of[user] = frame["chat_id"]
        # Halves of 100, each within the rate limit's burst, the receipts read in between.
        for half in range(2):
            for i in range(PAGE // 2):
                owner.sendall(text_frame({"type": "send", "chat_id": frame["chat_id"],
                                          "client_msg_id": 1000 * (n + 1) + half * PAGE + i,
                                          "body": BODY}))
            receipts = 0
            while receipts < PAGE // 2:
                if read_json_frame(owner).get("type") == "receipt":
                    receipts += 1
            time.sleep(2.5)
    return owner, chat_of


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gateway")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--engine", choices=["memory", "amqp"], default="memory")
    parser.add_argument("--backend", help="the backend binary (amqp engine); default: next to "
                        "the gateway")
    args = parser.parse_args()

    port, admin_port = free_port(), free_port()
    prefix = f"syncflood{os.getpid()}"
    command = [args.gateway, "--listen", f"127.0.0.1:{port}", "--admin-listen",
               f"127.0.0.1:{admin_port}", "--cores", "1", "--jwt-secret", SECRET.decode()]
    backend = None
    if args.engine == "amqp":
        backend_bin = args.backend or os.path.join(os.path.dirname(args.gateway), "backend")
        backend = subprocess.Popen(
            [backend_bin, "--database-url", "postgres://postgres@127.0.0.1:5432/test",
             "--pg-schema", prefix, "--amqp-prefix", prefix, "--redis-prefix", prefix,
             "--shards", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        command += ["--engine", "amqp", "--amqp-prefix", prefix, "--redis-prefix", prefix,
                    "--shards", "2"]
    gateway = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(port, admin_port, gateway, "/readyz" if backend else None)
        flooders = list(range(2, 2 + args.connections))
        owner, chat_of = fill_chats(port, flooders)
        rss_before = rss_mib(gateway.pid)

        sockets = [(upgrade(port, user), chat_of[user]) for user in flooders]
        for sock, _ in sockets:
            sock.setblocking(False)
        time.sleep(1)
        rss_connected = rss_mib(gateway.pid)
        started = time.monotonic()
        rss_peak, queued_peak, requests = rss_connected, 0.0, 0
        open_sockets = list(sockets)
        while time.monotonic() - started < 120:
            for entry in list(open_sockets):
                sock, chat_id = entry
                try:
                    for _ in range(10):
                        sock.send(text_frame({"type": "sync", "client_msg_id": requests,
                                              "chat_id": chat_id, "after_seq": 0,
                                              "limit": PAGE}))
                        requests += 1
                except BlockingIOError:
                    # The gateway stopped reading it: it is behind.
                    continue
                except OSError:
                    open_sockets.remove(entry)
            time.sleep(0.1)
            rss_peak = max(rss_peak, rss_mib(gateway.pid))
            queued_peak = max(queued_peak, metric(admin_port, "gateway_outbound_queue_bytes"))
            if metric(admin_port, "gateway_slow_consumer_closes_total") >= len(sockets):
                break
        flood_secs = time.monotonic() - started
        closes = metric(admin_port, "gateway_slow_consumer_closes_total")
        rss_closed = rss_mib(gateway.pid)
        for sock, _ in sockets:
            sock.close()
        owner.close()
        time.sleep(5)
        rss_after = rss_mib(gateway.pid)
        time.sleep(10)
        rss_later = rss_mib(gateway.pid)
        queued_after = metric(admin_port, "gateway_outbound_queue_bytes")
        closes_by_code = [line for line in metrics(admin_port)
                          if line.startswith("gateway_closes_total{")]
        print(f"engine {args.engine}, connections {len(sockets)}, sync requests {requests}, "
              f"flood {flood_secs:.1f} s, slow-consumer closes {closes:.0f}")
        print(f"RSS MiB: before {rss_before:.1f}, connected {rss_connected:.1f}, "
              f"peak {rss_peak:.1f}, all closed {rss_closed:.1f}, 5 s after {rss_after:.1f}, "
              f"15 s after {rss_later:.1f}")
        print(f"queued bytes MiB: peak sample {queued_peak / 2**20:.1f}, "
              f"after {queued_after / 2**20:.1f}")
        print("closes: " + ", ".join(closes_by_code))
    finally:
        gateway.terminate()
        gateway.wait()
        if backend:
            backend.terminate()
            backend.wait()
            clean_up_amqp(prefix)


if __name__ == "__main__":
    main()

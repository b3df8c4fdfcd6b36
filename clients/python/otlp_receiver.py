#!/usr/bin/env python3
"""A small OTLP/gRPC trace receiver: what a collector sees of smoothcert's spans.

Listens for opentelemetry.proto.collector.trace.v1.TraceService/Export and
writes one JSON line per span received (to --out, or stdout), flushed at once:

  {"name": ..., "kind": "SERVER", "trace_id": hex, "span_id": hex,
   "parent_span_id": hex or "", "service": ..., "attributes": {...},
   "links": [{"trace_id": hex, "span_id": hex}], "status": "OK|ERROR|UNSET"}

  python otlp_receiver.py --port 0 --port-file /tmp/otlp.port --out spans.jsonl

With --port 0 the port the OS chose is written to --port-file once serving.
Needs grpcio and opentelemetry-proto (scripts/setup.sh installs both).
"""
import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value(v):
    """An OTLP AnyValue as plain JSON."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def span_json(span, service):
    return {
        "name": span.name,
        "kind": trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "service": service,
        "attributes": {kv.key: value(kv.value) for kv in span.attributes},
        "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in span.links],
        "status": trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        "duration_ns": span.end_time_unix_nano - span.start_time_unix_nano,
    }


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for rs in request.resource_spans:
            attrs = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            service = attrs.get("service.name", "")
            for ss in rs.scope_spans:
                lines.extend(json.dumps(span_json(s, service)) for s in ss.spans)
        with self.lock:
            for line in lines:
                self.out.write(line + "\n")
            self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4317)
    p.add_argument("--port-file", help="write the port here once serving")
    p.add_argument("--out", help="JSON lines file (default: stdout)")
    a = p.parse_args()
    out = open(a.out, "a", encoding="utf-8") if a.out else sys.stdout
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port(f"{a.host}:{a.port}")
    if port == 0:
        sys.exit(f"otlp_receiver: cannot listen on {a.host}:{a.port}")
    server.start()
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(str(port))
        # Renamed whole, so that a reader never sees a partial number.
        os.replace(a.port_file + ".tmp", a.port_file)
    print(f"otlp_receiver: listening on {a.host}:{port}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A minimal smoothcert client in Python (grpcio), built from the proto at run time.

    python clients/python/smoothcert_client.py --addr localhost:50051 list
    python clients/python/smoothcert_client.py certify --image shirt.png
    python clients/python/smoothcert_client.py certify --tensor x.f32 --shape 1,28,28 \
        --method MONTE_CARLO --n 10000 --seed 1

Prints each response as JSON. Needs grpcio and grpcio-tools
(scripts/setup.sh installs both into ~/.cache/smoothcert/pyclient).
"""
import argparse
import importlib
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

PROTO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def load_stubs():
    """Compiles certifier.proto into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="smoothcert-pb-")
    proto = "smoothcert/v1/certifier.proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{protoc_include()}",
            f"--python_out={out}", f"--grpc_python_out={out}", proto]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on " + proto)
    sys.path.insert(0, out)
    pb2 = importlib.import_module("smoothcert.v1.certifier_pb2")
    grpc_pb2 = importlib.import_module("smoothcert.v1.certifier_pb2_grpc")
    return pb2, grpc_pb2


def protoc_include():
    import grpc_tools
    return os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="localhost:50051")
    ap.add_argument("--token", help="bearer token, when the server asks for one")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline in seconds")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    c = sub.add_parser("certify")
    c.add_argument("--model", default="")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="a PNG or JPEG file")
    src.add_argument("--tensor", help="raw little-endian float32 pixels in [0, 1]")
    c.add_argument("--shape", default="1,28,28", help="the tensor's shape")
    c.add_argument("--method", choices=["SURROGATE", "MONTE_CARLO"])
    c.add_argument("--n0", type=int)
    c.add_argument("--n", type=int)
    c.add_argument("--alpha", type=float)
    c.add_argument("--seed", type=int)
    args = ap.parse_args()

    pb2, grpc_pb2 = load_stubs()
    metadata = [("authorization", "Bearer " + args.token)] if args.token else None
    with grpc.insecure_channel(args.addr) as channel:
        stub = grpc_pb2.CertifierStub(channel)
        if args.cmd == "list":
            resp = stub.ListModels(pb2.ListModelsRequest(), timeout=args.timeout, metadata=metadata)
        else:
            opts = pb2.CertifyOptions()
            if args.method:
                opts.method = pb2.Method.Value(args.method)
            for field in ("n0", "n", "alpha", "seed"):
                value = getattr(args, field)
                if value is not None:
                    setattr(opts, field, value)
            req = pb2.CertifyRequest(model=args.model, options=opts)
            if args.image:
                with open(args.image, "rb") as f:
                    req.image = f.read()
            else:
                with open(args.tensor, "rb") as f:
                    req.tensor.data = f.read()
                req.tensor.shape.extend(int(d) for d in args.shape.split(","))
            try:
                resp = stub.Certify(req, timeout=args.timeout, metadata=metadata)
            except grpc.RpcError as e:
                print(f"{e.code().name}: {e.details()}", file=sys.stderr)
                sys.exit(2)
        print(json_format.MessageToJson(resp, preserving_proto_field_name=True))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A grpcurl stand-in for machines without grpcurl: it knows nothing of
smoothcert's proto and learns every type from the server's reflection service,
then sends JSON (protobuf's JSON mapping, as grpcurl does) and prints JSON.
The arguments follow grpcurl's, so the README's grpcurl lines run with this
script in grpcurl's place:

    grpc_json.py -plaintext localhost:50051 list
    grpc_json.py -plaintext localhost:50051 describe smoothcert.v1.Certifier
    grpc_json.py -plaintext -d '{"image": "..."}' localhost:50051 smoothcert.v1.Certifier/Certify
    grpc_json.py -plaintext -d @ localhost:50051 smoothcert.v1.Certifier/Certify < body.json

Unary methods only. Needs grpcio and grpcio-reflection (scripts/setup.sh
installs both into ~/.cache/smoothcert/pyclient). Exit status: 0, 1 for a gRPC
error (printed like grpcurl's), 2 for bad arguments.
"""
import argparse
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="grpc_json.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-plaintext", action="store_true", help="no TLS")
    p.add_argument("-d", dest="data", help="request JSON, or @ to read it from stdin")
    p.add_argument("-H", dest="headers", action="append", default=[], help="'name: value' metadata")
    p.add_argument("address")
    p.add_argument("verb", help="list, describe, or SERVICE/METHOD")
    p.add_argument("symbol", nargs="?")
    return p.parse_args(argv)


def lookup(find, name):
    """A descriptor by name, or None: a miss is a KeyError from the pool, or a
    NOT_FOUND from the server's reflection behind it."""
    try:
        return find(name)
    except (KeyError, TypeError, grpc.RpcError):
        # TypeError: the pool refusing a file it already holds, when a name
        # of one kind was looked up as another.
        return None


def rpc_line(m):
    stream_in = "stream " if m.client_streaming else ""
    stream_out = "stream " if m.server_streaming else ""
    return (
        f"rpc {m.name} ( {stream_in}.{m.input_type.full_name} ) "
        f"returns ( {stream_out}.{m.output_type.full_name} );"
    )


def describe(pool, symbol):
    symbol = symbol.lstrip(".")
    svc = lookup(pool.FindServiceByName, symbol)
    if svc is not None:
        print(f"{svc.full_name} is a service:")
        for m in svc.methods:
            print(f"  {rpc_line(m)}")
        return True
    service, _, name = symbol.rpartition(".")
    owner = lookup(pool.FindServiceByName, service) if service else None
    m = owner.methods_by_name.get(name) if owner is not None else None
    if m is not None:
        print(f"{m.full_name} is a method:")
        print(f"  {rpc_line(m)}")
        return True
    msg = lookup(pool.FindMessageTypeByName, symbol)
    if msg is None:
        enum = lookup(pool.FindEnumTypeByName, symbol)
        if enum is None:
            print(f"Failed to resolve symbol {symbol!r}", file=sys.stderr)
            return False
        print(f"{enum.full_name} is an enum:")
        for v in enum.values:
            print(f"  {v.name} = {v.number};")
        return True
    print(f"{msg.full_name} is a message:")
    scalar = {
        v: k[len("TYPE_"):].lower()
        for k, v in vars(FieldDescriptor).items()
        if k.startswith("TYPE_") and isinstance(v, int)
    }
    for f in msg.fields:
        if f.message_type:
            kind = "." + f.message_type.full_name
        elif f.enum_type:
            kind = "." + f.enum_type.full_name
        else:
            kind = scalar.get(f.type, str(f.type))
        # protobuf >= 6.32 has is_repeated (and deprecates label).
        flag = getattr(f, "is_repeated", None)
        if flag is None:
            flag = f.label == FieldDescriptor.LABEL_REPEATED
        elif callable(flag):
            flag = flag()
        repeated = "repeated " if flag else ""
        # proto3 `optional` fields sit in synthetic oneofs named _<field>.
        o = f.containing_oneof
        synthetic = o is not None and len(o.fields) == 1 and o.name == "_" + f.name
        if synthetic:
            repeated = "optional "
        oneof = f"  // oneof {o.name}" if o is not None and not synthetic else ""
        print(f"  {repeated}{kind} {f.name} = {f.number};{oneof}")
    return True


def main(argv):
    args = parse_args(argv)
    if args.plaintext:
        channel = grpc.insecure_channel(args.address)
    else:
        channel = grpc.secure_channel(args.address, grpc.ssl_channel_credentials())
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(db)
    try:
        if args.verb == "list":
            if args.symbol:
                for m in pool.FindServiceByName(args.symbol).methods:
                    print(f"{args.symbol}.{m.name}")
            else:
                for name in sorted(db.get_services()):
                    print(name)
            return 0
        if args.verb == "describe":
            if not args.symbol:
                print("describe needs a symbol", file=sys.stderr)
                return 2
            return 0 if describe(pool, args.symbol) else 2
        service, _, method_name = args.verb.replace("/", ".").rpartition(".")
        if not service:
            print(f"{args.verb!r} is not SERVICE/METHOD", file=sys.stderr)
            return 2
        method = pool.FindServiceByName(service).FindMethodByName(method_name)
        if method.client_streaming or method.server_streaming:
            print(f"{args.verb} streams; this tool calls unary methods only", file=sys.stderr)
            return 2
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        text = sys.stdin.read() if args.data == "@" else (args.data or "{}")
        request = json_format.Parse(text, request_cls())
        call = channel.unary_unary(
            f"/{service}/{method_name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        metadata = []
        for h in args.headers:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                print(f"-H {h!r} is not 'name: value'", file=sys.stderr)
                return 2
            metadata.append((name.strip().lower(), value.strip()))
        response = call(request, metadata=metadata or None, timeout=600)
        print(json_format.MessageToJson(response))
        return 0
    except grpc.RpcError as e:
        code = e.code()
        name = "".join(w.capitalize() for w in code.name.split("_"))
        print(f"ERROR:\n  Code: {name}\n  Message: {e.details()}", file=sys.stderr)
        return 1
    except (KeyError, json_format.ParseError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

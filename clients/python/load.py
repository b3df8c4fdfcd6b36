#!/usr/bin/env python3
"""Closed-loop load on a running smoothcert server from another process:
one asyncio event loop (grpc.aio), `--concurrency` requests in flight, each
client sending its next request when the last is answered.

    python clients/python/load.py --addr localhost:50051 --concurrency 64 --requests 3000

Images are Fashion-MNIST test images (the Debian package's IDX file), sent
as float32 tensors. Prints one JSON object: requests, errors (by code),
certificates/s, latency percentiles, the mean batch the server reported,
and the CPU seconds this client used. `bench-serve --python-client` runs it.
"""
import argparse
import asyncio
import gzip
import json
import os
import resource
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smoothcert_client import load_stubs  # noqa: E402

IDX = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"


def read_images(path, count):
    """The first `count` images as little-endian float32 bytes in [0, 1]."""
    import struct
    with gzip.open(path, "rb") as f:
        magic, num, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 0x803:
            sys.exit(f"{path}: not an IDX image file")
        size = rows * cols
        images = []
        for _ in range(min(count, num)):
            raw = f.read(size)
            images.append(struct.pack(f"<{size}f", *(b / 255.0 for b in raw)))
    return images, [1, rows, cols]


def nearest_rank(sorted_ms, q):
    if not sorted_ms:
        return 0.0
    k = max(1, -(-int(q * len(sorted_ms) * 1e9) // int(1e9)))
    return sorted_ms[min(k, len(sorted_ms)) - 1]


async def run(args, pb2, grpc_pb2, images, shape):
    options = [("grpc.max_receive_message_length", 1 << 20)]
    metadata = [("authorization", "Bearer " + args.token)] if args.token else None
    async with grpc.aio.insecure_channel(args.addr, options=options) as channel:
        stub = grpc_pb2.CertifierStub(channel)
        await channel.channel_ready()
        method = pb2.Method.Value(args.method)

        def request(i):
            req = pb2.CertifyRequest(model=args.model, options=pb2.CertifyOptions(method=method))
            req.tensor.shape.extend(shape)
            req.tensor.data = images[i % len(images)]
            return req

        async def closed_loop(concurrency, total):
            next_index = 0
            latencies, batches, errors = [], [], {}

            async def client():
                nonlocal next_index
                while next_index < total:
                    i = next_index
                    next_index += 1
                    t0 = time.perf_counter()
                    try:
                        resp = await stub.Certify(request(i), timeout=args.timeout, metadata=metadata)
                    except grpc.aio.AioRpcError as e:
                        errors[e.code().name] = errors.get(e.code().name, 0) + 1
                        continue
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    batches.append(resp.timing.batch_size or 1)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return time.perf_counter() - started, latencies, batches, errors

        await closed_loop(args.concurrency, args.warmup)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        seconds, latencies, batches, errors = await closed_loop(args.concurrency, args.requests)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "client": "python-grpc-aio",
        "concurrency": args.concurrency,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "errors_by_code": errors,
        "seconds": seconds,
        "per_s": len(latencies) / seconds,
        "p50_ms": nearest_rank(latencies, 0.5),
        "p99_ms": nearest_rank(latencies, 0.99),
        "mean_batch": sum(batches) / max(1, len(batches)),
        "client_cpu_cores": cpu / seconds,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="localhost:50051")
    ap.add_argument("--token", help="bearer token, when the server asks for one")
    ap.add_argument("--model", default="")
    ap.add_argument("--method", default="SURROGATE")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000, help="measured requests")
    ap.add_argument("--warmup", type=int, default=256, help="unmeasured requests first")
    ap.add_argument("--timeout", type=float, default=60.0, help="deadline per request, seconds")
    ap.add_argument("--images", default=IDX, help="an IDX image file (gzip)")
    args = ap.parse_args()
    if args.concurrency < 1 or args.requests < 1:
        sys.exit("--concurrency and --requests must be at least 1")
    pb2, grpc_pb2 = load_stubs()
    images, shape = read_images(args.images, 1000)
    print(json.dumps(asyncio.run(run(args, pb2, grpc_pb2, images, shape))))


if __name__ == "__main__":
    main()

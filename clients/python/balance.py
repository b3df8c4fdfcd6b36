#!/usr/bin/env python3
"""Keeps requests in flight on ONE grpcio channel for a while, as a service
behind a load balancer does, and says what happened to every request.

    python clients/python/balance.py --addr proxy:50051 --seconds 10 --retry

Request i certifies test image i % 20 with seed i % 50 (SURROGATE by
default): seeded requests are idempotent, so a retried one asks for exactly
what the first attempt asked. --retry sets the gRPC service config this
project documents for clients: retry UNAVAILABLE, up to 5 attempts with
backoff (docs/DEPLOYMENT.md).

--stop-file ends the load early once that file exists. --answers FILE
writes the answer received for each distinct (image, seed); a second run
with --check FILE asks each of them once more at --addr and counts those
that differ. Prints one JSON object: sent, answered, failed (by code),
distinct, inconsistent (one request answered two ways under load); with
--check: checked, mismatches.
"""
import argparse
import asyncio
import json
import os
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import IDX, read_images  # noqa: E402
from smoothcert_client import load_stubs  # noqa: E402

IMAGES, SEEDS = 20, 50

RETRY_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "smoothcert.v1.Certifier"}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


def channel_options(retry):
    options = [("grpc.max_receive_message_length", 1 << 20)]
    if retry:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_SERVICE_CONFIG)]
    return options


def outcome_bytes(resp):
    """What a certificate says, without timings: the outcome message."""
    which = resp.WhichOneof("outcome")
    return which + ":" + getattr(resp, which).SerializeToString(deterministic=True).hex()


async def run(args, pb2, grpc_pb2, images, shape):
    method = pb2.Method.Value(args.method)

    def request(key):
        image, seed = key
        req = pb2.CertifyRequest(model=args.model, options=pb2.CertifyOptions(method=method, seed=seed))
        req.tensor.shape.extend(shape)
        req.tensor.data = images[image]
        return req

    answers, failed = {}, {}
    counts = {"sent": 0, "answered": 0, "inconsistent": 0}
    async with grpc.aio.insecure_channel(args.addr, options=channel_options(args.retry)) as channel:
        stub = grpc_pb2.CertifierStub(channel)
        await asyncio.wait_for(channel.channel_ready(), 30)
        end = time.monotonic() + args.seconds
        next_index = 0

        async def client():
            nonlocal next_index
            while time.monotonic() < end and not (args.stop_file and os.path.exists(args.stop_file)):
                i = next_index
                next_index += 1
                key = (i % IMAGES, i % SEEDS)
                counts["sent"] += 1
                try:
                    resp = await stub.Certify(request(key), timeout=args.timeout)
                except grpc.aio.AioRpcError as e:
                    failed[e.code().name] = failed.get(e.code().name, 0) + 1
                    continue
                counts["answered"] += 1
                got = outcome_bytes(resp)
                if answers.setdefault(key, got) != got:
                    counts["inconsistent"] += 1

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
    if args.answers:
        with open(args.answers, "w") as f:
            json.dump([[k[0], k[1], v] for k, v in answers.items()], f)
    return {
        **counts,
        "failed": sum(failed.values()),
        "failed_by_code": failed,
        "distinct": len(answers),
    }


async def check(args, pb2, grpc_pb2, images, shape):
    """Asks every request of an --answers file again; counts the differences."""
    with open(args.check) as f:
        recorded = {(image, seed): answer for image, seed, answer in json.load(f)}
    method = pb2.Method.Value(args.method)
    async with grpc.aio.insecure_channel(args.addr, options=channel_options(False)) as channel:
        stub = grpc_pb2.CertifierStub(channel)

        async def again(key):
            req = pb2.CertifyRequest(model=args.model, options=pb2.CertifyOptions(method=method, seed=key[1]))
            req.tensor.shape.extend(shape)
            req.tensor.data = images[key[0]]
            return outcome_bytes(await stub.Certify(req, timeout=args.timeout))

        answers = await asyncio.gather(*(again(k) for k in recorded))
    return {
        "checked": len(recorded),
        "mismatches": sum(a != recorded[k] for k, a in zip(recorded, answers)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--method", default="SURROGATE")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to keep sending")
    ap.add_argument("--stop-file", help="stop sending once this file exists")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per request, seconds")
    ap.add_argument("--retry", action="store_true", help="retry UNAVAILABLE (the documented policy)")
    ap.add_argument("--answers", metavar="FILE", help="write the answers received here")
    ap.add_argument("--check", metavar="FILE", help="ask an --answers file's requests again")
    ap.add_argument("--images", default=IDX, help="an IDX image file (gzip)")
    args = ap.parse_args()
    if args.concurrency < 1 or args.seconds <= 0:
        sys.exit("--concurrency must be at least 1 and --seconds positive")
    pb2, grpc_pb2 = load_stubs()
    images, shape = read_images(args.images, IMAGES)
    mode = check if args.check else run
    print(json.dumps(asyncio.run(mode(args, pb2, grpc_pb2, images, shape))), flush=True)


if __name__ == "__main__":
    main()

"""apikeyd from Python (grpcio): create a key with a root key, validate it,
handle a refusal, check a rate limit. Stubs come from proto/ (see the README):

    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/apikeyd/v1/*.proto
    PYTHONPATH=gen APIKEYD_ADDR=localhost:50051 APIKEYD_ROOT_KEY=rk_... python examples/python/client.py

It checks every answer and exits non-zero on a surprise, so it doubles as a test.
"""

import os
import sys
import uuid

import grpc
from google.protobuf import duration_pb2

from apikeyd.v1 import (
    key_service_pb2,
    key_service_pb2_grpc,
    rate_limit_pb2,
    rate_limit_service_pb2,
    rate_limit_service_pb2_grpc,
    validation_service_pb2,
    validation_service_pb2_grpc,
)


def expect(condition, what):
    if not condition:
        sys.exit(f"python client: FAILED: {what}")
    print(f"python client: ok: {what}")


def main():
    channel = grpc.insecure_channel(os.environ.get("APIKEYD_ADDR", "localhost:50051"))
    root = [("authorization", f"Bearer {os.environ['APIKEYD_ROOT_KEY']}")]
    keys = key_service_pb2_grpc.KeyServiceStub(channel)
    validation = validation_service_pb2_grpc.ValidationServiceStub(channel)
    limits = rate_limit_service_pb2_grpc.RateLimitServiceStub(channel)
    owner = f"python-{uuid.uuid4().hex[:8]}"

    # Create a key with the root key: the full key is in this answer only.
    created = keys.CreateKey(
        key_service_pb2.CreateKeyRequest(owner_id=owner, name="Python example", scopes=["posts:read"]),
        metadata=root,
        timeout=10,
    )
    expect(created.key.startswith("sk_live_"), "CreateKey returns the full key")

    # Validate it for a scope it has.
    answer = validation.Validate(
        validation_service_pb2.ValidateRequest(key=created.key, required_scopes=["posts:read"]),
        timeout=10,
    )
    expect(answer.valid and answer.api_key.owner_id == owner, "Validate says the key is good")

    # A refusal is an answer, not an error: branch on `code`.
    refused = validation.Validate(
        validation_service_pb2.ValidateRequest(key=created.key, required_scopes=["posts:write"]),
        timeout=10,
    )
    expect(
        not refused.valid and refused.code == validation_service_pb2.VALIDATION_CODE_INSUFFICIENT_SCOPE,
        f"a missing scope is refused ({refused.message})",
    )

    # A bad request is a gRPC error with a status code.
    try:
        keys.CreateKey(key_service_pb2.CreateKeyRequest(owner_id=owner, name="", scopes=["posts:read"]), metadata=root, timeout=10)
        expect(False, "an empty name is refused")
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"an empty name is INVALID_ARGUMENT ({error.details()})")
    try:
        keys.CreateKey(key_service_pb2.CreateKeyRequest(owner_id=owner, name="x", scopes=["a:b"]), timeout=10)
        expect(False, "CreateKey without a root key is refused")
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.UNAUTHENTICATED, "CreateKey without a root key is UNAUTHENTICATED")

    # Rate-limit anything else: 2 per minute for this identifier.
    check = rate_limit_service_pb2.CheckRateLimitRequest(
        namespace="python-example",
        identifier=owner,
        limit=2,
        window=duration_pb2.Duration(seconds=60),
        algorithm=rate_limit_pb2.RATE_LIMIT_ALGORITHM_FIXED_WINDOW,
    )
    answers = [limits.CheckRateLimit(check, timeout=10) for _ in range(3)]
    expect([a.allowed for a in answers] == [True, True, False], "CheckRateLimit admits 2 of 3")
    expect(answers[2].retry_after.seconds > 0 or answers[2].retry_after.nanos > 0, "the refusal says when to retry")


if __name__ == "__main__":
    main()

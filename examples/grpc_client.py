"""Calls examples/grpc.yaml's service through the load balancer.

    python3 grpc_client.py HOST:PORT [CA_FILE]

With CA_FILE the channel uses TLS trusting that CA (the `api_ca_cert`
output), else h2c. Prints one line per call:

    hello: <answer> | trailer x-instance-id=<id>
    fail: NOT_FOUND <details>
    health: SERVING
"""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main():
    target = sys.argv[1]
    if len(sys.argv) > 2:
        with open(sys.argv[2], "rb") as ca:
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.read())
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        hello = channel.unary_unary("/demo.Greeter/Hello")
        answer, call = hello.with_call(b"grpc", timeout=10)
        trailers = dict(call.trailing_metadata() or ())
        print(f"hello: {answer.decode()} | trailer x-instance-id={trailers.get('x-instance-id')}")
        try:
            hello(b"fail", timeout=10)
            print("fail: no error")
        except grpc.RpcError as err:
            print(f"fail: {err.code().name} {err.details()}")
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        print(f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


if __name__ == "__main__":
    main()

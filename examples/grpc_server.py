"""A gRPC instance for examples/grpc.yaml.

It listens on LBCTL_IP:LBCTL_PORT (h2c) and serves the standard health
service plus `demo.Greeter/Hello`, a unary method on raw bytes (no generated
code needed): it answers `hello <request> from <instance id>` and sends the
instance id as trailing metadata (`x-instance-id`). A request of `fail` is
refused with NOT_FOUND, so clients can see error statuses pass through.
"""
import os
import signal
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

INSTANCE_ID = os.environ.get("LBCTL_INSTANCE_ID", "local")
ADDRESS = f"{os.environ['LBCTL_IP']}:{os.environ['LBCTL_PORT']}"


def hello(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, f"nothing to fail on {INSTANCE_ID}")
    context.set_trailing_metadata((("x-instance-id", INSTANCE_ID),))
    return b"hello " + request + b" from " + INSTANCE_ID.encode()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    greeter = grpc.method_handlers_generic_handler(
        "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
    )
    server.add_generic_rpc_handlers((greeter,))
    health_service = health.HealthServicer()
    health_service.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    server.add_insecure_port(ADDRESS)
    server.start()
    print(f"grpc instance {INSTANCE_ID} listening on {ADDRESS}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(2))
    server.wait_for_termination()


if __name__ == "__main__":
    main()

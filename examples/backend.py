"""A tiny HTTP backend for examples/python-backend.yaml.

It is what any launch template command must do: listen on LBCTL_IP:LBCTL_PORT
(the instance's private loopback address and the group's port) and answer the
target group's health check path.
"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE_ID = os.environ["LBCTL_INSTANCE_ID"]
ADDRESS = (os.environ["LBCTL_IP"], int(os.environ["LBCTL_PORT"]))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok\n"
        else:
            body = f"python backend {INSTANCE_ID} served {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-instance-id", INSTANCE_ID)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    print(f"backend {INSTANCE_ID} listening on {ADDRESS[0]}:{ADDRESS[1]}", flush=True)
    ThreadingHTTPServer(ADDRESS, Handler).serve_forever()

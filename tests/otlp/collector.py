"""An OpenTelemetry trace collector for the tests: an OTLP/HTTP receiver on loopback.

It decodes every export with the protocol's reference bindings (PyPI `opentelemetry-proto`,
pinned and installed by `.ci/run` under `target/otlp`), not with the server's own code, so a
span the server encodes wrongly fails to arrive. It answers as the OTLP specification asks
(`ExportTraceServiceResponse`, protobuf) and refuses what a collector refuses (another path,
another content type, a body that does not decode).

Prints its port on the first line of standard output. `GET /spans` lists what it received, as
JSON. Exits when its standard input closes, so it never outlives the test that started it.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPANS = []
LOCK = threading.Lock()


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attributes(pairs):
    return {kv.key: any_value(kv.value) for kv in pairs}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body=b"", content_type="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/spans":
            return self.answer(404)
        with LOCK:
            body = json.dumps(SPANS).encode()
        self.answer(200, body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            return self.answer(404)
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self.answer(415)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError:
            return self.answer(400)
        received = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        {
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": Span.SpanKind.Name(span.kind),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": attributes(span.attributes),
                            "status": Status.StatusCode.Name(span.status.code),
                            "status_message": span.status.message,
                        }
                    )
        with LOCK:
            SPANS.extend(received)
        self.answer(
            200,
            ExportTraceServiceResponse().SerializeToString(),
            "application/x-protobuf",
        )


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
server.serve_forever()

"""Capture what the real langfuse SDK sends: a recording server on 127.0.0.1 and an OTLP decoder."""

from __future__ import annotations

import gzip
import uuid

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ray_app.tracing import close_langfuse_clients
from tests.recording_server import RecordingServer

OTLP_PATH = "/api/public/otel/v1/traces"


@pytest.fixture
def langfuse_server(monkeypatch):
    """A recording server plus keys unique to this test (the SDK keeps one client state per public key)."""
    with RecordingServer(lambda request: (200, {}, {})) as server:
        public_key = f"pk-lf-{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", public_key)
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", f"sk-lf-{uuid.uuid4().hex}")
        monkeypatch.setenv("LANGFUSE_BASE_URL", server.url)
        try:
            yield server
        finally:
            close_langfuse_clients()


def otlp_bodies(server) -> list[bytes]:
    bodies = []
    for request in server.requests:
        assert (request.method, request.path) == ("POST", OTLP_PATH)
        gzipped = request.headers.get("content-encoding") == "gzip"
        bodies.append(gzip.decompress(request.body) if gzipped else request.body)
    return bodies


def attribute_value(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [attribute_value(item) for item in value.array_value.values]
    return getattr(value, kind)


def exported_spans(server) -> dict[str, dict]:
    """Every exported span by name: ids as hex, attributes as a dict."""
    spans = {}
    for body in otlp_bodies(server):
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans[span.name] = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "status_code": span.status.code,
                        "attributes": {item.key: attribute_value(item.value) for item in span.attributes},
                    }
    return spans

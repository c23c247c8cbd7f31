"""Small helpers over wasi:http for Skiff functions written with componentize-py.

The bindings (`wit_world`) are generated from `wit/` at build time.
"""
from componentize_py_types import Err, Ok
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
)


def method(request: IncomingRequest) -> str:
    """The request's method in upper case, e.g. `GET`."""
    m = request.method()
    if hasattr(m, "value"):  # Method_Other
        return str(m.value).upper()
    return type(m).__name__.removeprefix("Method_").upper()


def path(request: IncomingRequest) -> str:
    """The request's path, without the query."""
    return (request.path_with_query() or "/").split("?", 1)[0]


def read_body(request: IncomingRequest) -> bytes:
    """Reads the request's whole body."""
    body = request.consume()
    stream = body.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)
    IncomingBody.finish(body)
    return bytes(data)


def respond(response_out: ResponseOutparam, status: int, body: bytes | str,
            content_type: str = "text/plain; charset=utf-8") -> None:
    """Answers with `status` and `body`."""
    if isinstance(body, str):
        body = body.encode()
    response = OutgoingResponse(Fields.from_list([
        ("content-type", content_type.encode()),
        ("content-length", str(len(body)).encode()),
    ]))
    response.set_status_code(status)
    out = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    stream = out.write()
    for start in range(0, len(body), 4096):
        stream.blocking_write_and_flush(body[start:start + 4096])
    stream.__exit__(None, None, None)
    OutgoingBody.finish(out, None)

"""A Python wasi:http 0.2 hello (componentize-py): answers with the path it was asked for."""
from wit_world import exports
from wit_world.imports.types import (
    Fields, IncomingRequest, OutgoingResponse, OutgoingBody, ResponseOutparam,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        text = f"Hello from Python! You asked for {request.path_with_query()}\n".encode()
        response = OutgoingResponse(Fields.from_list([
            ("content-type", b"text/plain"),
            ("content-length", str(len(text)).encode()),
        ]))
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(text)
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)

"""{{name}}: a key-value store over HTTP, on the function's own durable store
(wasi:keyvalue). `PUT /{{name}}/<key>` stores the body, `GET /{{name}}/<key>` answers it
(404 when unset), `DELETE /{{name}}/<key>` removes it."""
from wit_world import exports
from wit_world.imports import wasi_keyvalue_store as kv
from skiff_http import method, path, read_body, respond


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        key = path(request).removeprefix("/{{name}}").lstrip("/")
        if not key:
            return respond(response_out, 400, "name a key: /{{name}}/<key>\n")
        store = kv.open("")
        verb = method(request)
        if verb == "PUT":
            store.set(key, read_body(request))
            respond(response_out, 200, f"stored {key}\n")
        elif verb == "GET":
            value = store.get(key)
            if value is None:
                respond(response_out, 404, f"no value for {key}\n")
            else:
                respond(response_out, 200, value, "application/octet-stream")
        elif verb == "DELETE":
            store.delete(key)
            respond(response_out, 200, f"deleted {key}\n")
        else:
            respond(response_out, 405, "use GET, PUT or DELETE\n")

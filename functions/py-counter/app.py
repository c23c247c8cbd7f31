"""py-counter: durable counters in Python, on wasi:keyvalue.

`POST /py-counter/<key>` adds one (atomically: `wasi:keyvalue/atomics.increment`) and
answers the new value; `GET /py-counter/<key>` answers the current value (0 when unset).
Both as a decimal number, like the Rust `counter` example.
"""
from wit_world import exports
from wit_world.imports import atomics
from wit_world.imports import wasi_keyvalue_store as kv
from skiff_http import method, path, respond


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        key = path(request).removeprefix("/py-counter").lstrip("/")
        if not key:
            return respond(response_out, 400, "name a counter: /py-counter/<key>\n")
        store = kv.open("")
        verb = method(request)
        if verb == "POST":
            value = atomics.increment(store, key, 1)
        elif verb == "GET":
            raw = store.get(key)
            value = int(raw.decode()) if raw else 0
        else:
            return respond(response_out, 405, "use GET or POST\n")
        respond(response_out, 200, str(value))

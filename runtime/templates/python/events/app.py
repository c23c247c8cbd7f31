"""{{name}}: publishes an event and handles it.
`POST /{{name}}` publishes the body to `{{name}}.greeted` (answers 202 with the event's id);
the event handler stores what it received; `GET /{{name}}` answers the last one (404
before the first)."""
from wit_world import exports
from wit_world.imports import events
from wit_world.imports import wasi_keyvalue_store as kv
from skiff_http import method, read_body, respond


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        verb = method(request)
        if verb == "POST":
            event_id = events.publish("{{name}}.greeted", read_body(request), [])
            respond(response_out, 202, f"published {event_id}\n")
        elif verb == "GET":
            last = kv.open("").get("last")
            if last is None:
                respond(response_out, 404, "no event yet: POST something first\n")
            else:
                respond(response_out, 200, last, "application/octet-stream")
        else:
            respond(response_out, 405, "use GET or POST\n")


class EventHandler(exports.EventHandler):
    def handle(self, event):
        # Raising componentize_py_types.Err("why") fails the delivery: it is retried.
        print(f"received {event.id} on {event.topic}")
        kv.open("").set("last", event.data)

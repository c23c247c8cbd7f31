"""{{name}}: an HTTP function. Every request under `/{{name}}/` lands here."""
from wit_world import exports
from skiff_http import path, respond


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request, response_out):
        respond(response_out, 200, f"Hello from {{name}} (Python)! You asked for {path(request)}\n")

// {{name}}: an HTTP function. Every request under `/{{name}}/` lands here.
import { path, respond } from './skiff_http.js';

export const incomingHandler = {
  handle(request, responseOut) {
    respond(responseOut, 200, `Hello from {{name}} (JavaScript)! You asked for ${path(request)}\n`);
  },
};

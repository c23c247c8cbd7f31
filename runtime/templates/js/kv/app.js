// {{name}}: a key-value store over HTTP, on the function's own durable store
// (wasi:keyvalue). `PUT /{{name}}/<key>` stores the body, `GET /{{name}}/<key>` answers it
// (404 when unset), `DELETE /{{name}}/<key>` removes it.
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { method, path, readBody, respond } from './skiff_http.js';

export const incomingHandler = {
  handle(request, responseOut) {
    const key = path(request).replace(/^\/{{name}}/, '').replace(/^\/+/, '');
    if (!key) return respond(responseOut, 400, 'name a key: /{{name}}/<key>\n');
    const store = open('');
    switch (method(request)) {
      case 'PUT':
        store.set(key, readBody(request));
        return respond(responseOut, 200, `stored ${key}\n`);
      case 'GET': {
        const value = store.get(key);
        return value === undefined
          ? respond(responseOut, 404, `no value for ${key}\n`)
          : respond(responseOut, 200, value, 'application/octet-stream');
      }
      case 'DELETE':
        store.delete(key);
        return respond(responseOut, 200, `deleted ${key}\n`);
      default:
        return respond(responseOut, 405, 'use GET, PUT or DELETE\n');
    }
  },
};

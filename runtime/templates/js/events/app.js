// {{name}}: publishes an event and handles it.
// `POST /{{name}}` publishes the body to `{{name}}.greeted` (answers 202 with the event's
// id); the event handler stores what it received; `GET /{{name}}` answers the last one
// (404 before the first).
import { publish } from 'skiff:function/events@0.1.0';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { method, readBody, respond } from './skiff_http.js';

export const incomingHandler = {
  handle(request, responseOut) {
    switch (method(request)) {
      case 'POST': {
        const id = publish('{{name}}.greeted', readBody(request), []);
        return respond(responseOut, 202, `published ${id}\n`);
      }
      case 'GET': {
        const last = open('').get('last');
        return last === undefined
          ? respond(responseOut, 404, 'no event yet: POST something first\n')
          : respond(responseOut, 200, last, 'application/octet-stream');
      }
      default:
        return respond(responseOut, 405, 'use GET or POST\n');
    }
  },
};

// Throwing fails the delivery: it is retried with backoff.
export const eventHandler = {
  handle(event) {
    console.log(`received ${event.id} on ${event.topic}`);
    open('').set('last', event.data);
  },
};

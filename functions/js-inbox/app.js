// js-inbox: a JavaScript event handler that keeps what it received, readable over HTTP.
//
// Every event published under `inbox.` (`skiff publish inbox.hello 'some text'`) is stored
// with its topic, payload and how many times it was delivered; a redelivery of the same
// event (same id) counts up instead of adding a second entry.
// `GET /js-inbox` lists the events received, `GET /js-inbox/<id>` answers one.
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { listPrefix } from 'skiff:function/kv@0.1.0';
import { method, path, respond } from './skiff_http.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const eventHandler = {
  handle(event) {
    const store = open('');
    const deliveries = increment(store, `deliveries/${event.id}`, 1n);
    const record = {
      id: event.id,
      topic: event.topic,
      data: decoder.decode(event.data),
      attempt: event.attempt,
      deliveries: Number(deliveries),
    };
    store.set(`event/${event.id}`, encoder.encode(JSON.stringify(record)));
    console.log(`received ${event.id} on ${event.topic} (delivery ${deliveries})`);
  },
};

export const incomingHandler = {
  handle(request, responseOut) {
    if (method(request) !== 'GET') return respond(responseOut, 405, 'use GET\n');
    const store = open('');
    const id = path(request).replace(/^\/js-inbox/, '').replace(/^\/+/, '');
    if (id) {
      const record = store.get(`event/${id}`);
      return record === undefined
        ? respond(responseOut, 404, `no event ${id} received\n`)
        : respond(responseOut, 200, record, 'application/json');
    }
    const events = [];
    let cursor;
    do {
      const page = listPrefix(store, 'event/', cursor);
      for (const key of page.keys) {
        const record = store.get(key);
        if (record !== undefined) events.push(JSON.parse(decoder.decode(record)));
      }
      cursor = page.cursor;
    } while (cursor !== undefined);
    return respond(responseOut, 200, JSON.stringify(events), 'application/json');
  },
};

// Small helpers over wasi:http for Skiff functions written with componentize-js.
import {
  Fields, IncomingBody, OutgoingBody, OutgoingResponse, ResponseOutparam,
} from 'wasi:http/types@0.2.10';

const encoder = new TextEncoder();

/** The request's method in upper case, e.g. `GET`. */
export function method(request) {
  const m = request.method();
  return (m.tag === 'other' ? m.val : m.tag).toUpperCase();
}

/** The request's path, without the query. */
export function path(request) {
  return (request.pathWithQuery() ?? '/').split('?')[0];
}

/** Reads the request's whole body (a Uint8Array). */
export function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const chunks = [];
  let length = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      if (e?.payload?.tag === 'closed') break;
      throw e;
    }
    chunks.push(chunk);
    length += chunk.length;
  }
  stream[Symbol.dispose]();
  IncomingBody.finish(body);
  const all = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    all.set(c, at);
    at += c.length;
  }
  return all;
}

/** Answers with `status` and `body` (a string or a Uint8Array). */
export function respond(responseOut, status, body, contentType = 'text/plain; charset=utf-8') {
  const bytes = typeof body === 'string' ? encoder.encode(body) : body;
  const response = new OutgoingResponse(Fields.fromList([
    ['content-type', encoder.encode(contentType)],
    ['content-length', encoder.encode(String(bytes.length))],
  ]));
  response.setStatusCode(status);
  const out = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = out.write();
  for (let at = 0; at < bytes.length; at += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(at, at + 4096));
  }
  stream[Symbol.dispose]();
  OutgoingBody.finish(out, undefined);
}

// A JavaScript wasi:http 0.2 hello (componentize-js): answers with the path it was asked for.
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';

const encoder = new TextEncoder();

export const incomingHandler = {
  handle(request, responseOut) {
    const text = encoder.encode(`Hello from JavaScript! You asked for ${request.pathWithQuery()}\n`);
    const headers = Fields.fromList([
      ['content-type', encoder.encode('text/plain')],
      ['content-length', encoder.encode(String(text.length))],
    ]);
    const response = new OutgoingResponse(headers);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(text);
    stream[Symbol.dispose]();
    OutgoingBody.finish(body, undefined);
  },
};

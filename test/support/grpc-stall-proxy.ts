import {
  connect,
  constants,
  createServer,
  type ClientHttp2Session,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import type {AddressInfo, Socket} from 'node:net';

/** One gRPC call as it came in: its method (`Commit`, `BatchGetDocuments`, ...) and request bytes. */
export interface GrpcCall {
  method: string;
  /** The length-prefixed request message(s): document names and string values appear as plain bytes. */
  body: Buffer;
}

/** A call held back from the backend, as if the backend had stalled on it. */
export interface HeldCall {
  readonly call: GrpcCall;
  /** Sends the call on to the backend: the stall ends. Resolves once its answer has been passed on. */
  release(): Promise<void>;
}

export interface GrpcStallProxy {
  /** 127.0.0.1:PORT, for FIRESTORE_EMULATOR_HOST. */
  readonly host: string;
  /**
   * Holds the first call from now on that `matches` (the ones before it, and
   * every other call, go through); resolves with it once it has come.
   */
  holdNext(matches: (call: GrpcCall) => boolean): Promise<HeldCall>;
  close(): Promise<void>;
}

/**
 * How a Firestore write carries a string field value (google.firestore.v1.Value,
 * string_value = 17): a call whose body includes these bytes sets some field
 * to exactly `text`, which a field name or a longer string never matches.
 */
export function firestoreStringValue(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > 127) throw new Error('only short strings (one length byte) are supported');
  return Buffer.concat([Buffer.from([(17 << 3) | 2, 0x01, bytes.length]), bytes]);
}

/**
 * A gRPC proxy in front of the Firestore emulator (HTTP/2 without TLS, as the
 * client speaks to an emulator) that can stall one chosen call: a stall at a
 * precise point of a run, which freezing the whole emulator cannot place.
 * Request streams are read whole before they are forwarded, which suits
 * every call the product makes (unary and server-streaming ones).
 */
export async function startGrpcStallProxy(backendHost: string): Promise<GrpcStallProxy> {
  let backend: ClientHttp2Session | undefined;
  const session = () => {
    if (!backend || backend.closed || backend.destroyed) {
      backend = connect(`http://${backendHost}`);
      backend.on('error', () => undefined);
    }
    return backend;
  };
  const watchers: {matches: (call: GrpcCall) => boolean; resolve: (held: HeldCall) => void}[] = [];
  const heldCalls: HeldCall[] = [];

  const server = createServer();
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('sessionError', () => undefined);
  server.on('stream', (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
    stream.on('error', () => undefined);
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('end', () => {
      const call: GrpcCall = {
        method:
          String(headers[':path'] ?? '')
            .split('/')
            .pop() ?? '',
        body: Buffer.concat(chunks),
      };
      const forward = () => forwardCall(session(), stream, headers, call.body);
      const index = watchers.findIndex(watcher => watcher.matches(call));
      if (index === -1) return void forward();
      const [watcher] = watchers.splice(index, 1);
      let released: Promise<void> | undefined;
      const held: HeldCall = {
        call,
        release: () => (released ??= forward()),
      };
      heldCalls.push(held);
      watcher!.resolve(held);
    });
  });
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));

  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    holdNext(matches) {
      return new Promise(resolve => watchers.push({matches, resolve}));
    },
    close: () =>
      new Promise<void>(resolve => {
        for (const held of heldCalls) void held.release();
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
        backend?.destroy();
      }),
  };
}

/**
 * Sends the call to the backend and its answer (headers, messages, trailers)
 * back to the caller; resolves once the caller's stream is closed.
 */
function forwardCall(
  backend: ClientHttp2Session,
  caller: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  body: Buffer,
): Promise<void> {
  // A caller that gave up while the call was held gets nothing, and the backend never sees it.
  if (caller.closed || caller.destroyed) return Promise.resolve();
  const done = new Promise<void>(resolve => caller.once('close', () => resolve()));
  const outgoing: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (name === ':scheme' || name === ':authority') continue;
    outgoing[name] = value;
  }
  const upstream = backend.request(outgoing, {endStream: false});
  upstream.on('error', () => {
    if (!caller.closed) caller.close(constants.NGHTTP2_INTERNAL_ERROR);
  });
  caller.on('close', () => {
    if (!upstream.closed) upstream.close(constants.NGHTTP2_CANCEL);
  });
  let trailers: OutgoingHttpHeaders = {};
  let ended = false;
  upstream.on('response', (responseHeaders, flags) => {
    if (caller.closed) return;
    if (flags & constants.NGHTTP2_FLAG_END_STREAM) {
      // A trailers-only answer (a gRPC error): the status is in these headers.
      ended = true;
      caller.respond(responseHeaders, {endStream: true});
      return;
    }
    caller.respond(responseHeaders, {waitForTrailers: true});
    caller.on('wantTrailers', () => caller.sendTrailers(trailers));
  });
  upstream.on('trailers', received => {
    trailers = received;
  });
  upstream.on('data', (chunk: Buffer) => {
    if (!caller.closed) caller.write(chunk);
  });
  upstream.on('end', () => {
    if (!ended && !caller.closed) caller.end();
  });
  upstream.end(body);
  return done;
}

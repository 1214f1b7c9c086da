import {subscribe} from 'node:diagnostics_channel';
import {Server, type IncomingMessage, type ServerResponse} from 'node:http';
import {createRequire} from 'node:module';
import type {Socket} from 'node:net';
import {AppError, type ErrorCode} from '../core/errors';
import {urlForLog, type Logger} from '../logger';
import {deferContinue, discardUnreadBody} from './body';
import {errorBody, HTTP_STATUS, sendError} from './responses';

/**
 * The Functions Framework stays the entry point (`functions.http`, its CLI),
 * but these parts of its server are changed so that every byte of a body and
 * every answer goes through our code:
 *
 * - Its body parsers are taken out of its Express app. They read, inflate and
 *   parse any body (up to 1 GB) before the function runs; the function reads
 *   bodies itself, under MAX_BODY_BYTES (body.ts).
 * - Its default answer to /favicon.ico and /robots.txt (an empty 404) is taken
 *   out: our routing answers them.
 * - Its final handler (Express's HTML error page, with a stack trace outside
 *   production) answers our JSON error instead: a path with a malformed
 *   %-escape, or a request no route took.
 * - Its HTTP server answers what Node refuses before Express sees it
 *   (malformed HTTP, headers over the limit, a request that took too long)
 *   with our JSON error, and leaves `Expect: 100-continue` to the function,
 *   which asks for a body only once its declared size is within the limit.
 *
 * Must run before the framework creates its app: Express copies `handle` onto
 * each app when it is created.
 */

/** body-parser's middleware, as the framework installs them. */
const BODY_PARSERS = new Set(['jsonParser', 'textParser', 'urlencodedParser', 'rawParser']);
/** The framework's default ignored routes for HTTP functions. */
const IGNORED_ROUTES = ['/favicon.ico', '/robots.txt'];

/** Errors of body-parser and of the router, by their `type`, should a parser ever run again. */
const KNOWN_ERRORS: Record<string, {code: ErrorCode; message: string}> = {
  'entity.parse.failed': {code: 'INVALID_JSON', message: 'The request body is not valid JSON'},
  'entity.too.large': {code: 'PAYLOAD_TOO_LARGE', message: 'The request body is too large'},
  'encoding.unsupported': {code: 'UNSUPPORTED_MEDIA_TYPE', message: 'Unsupported content encoding'},
  'charset.unsupported': {code: 'UNSUPPORTED_MEDIA_TYPE', message: 'Unsupported charset; send UTF-8'},
  'parameters.too.many': {code: 'PAYLOAD_TOO_LARGE', message: 'The request body has too many parameters'},
  'request.size.invalid': {
    code: 'BAD_REQUEST',
    message: 'The request body is shorter than its Content-Length',
  },
  'request.aborted': {code: 'BAD_REQUEST', message: 'The request body ended before it was whole'},
};

/** A 4xx the framework or Node chose, as our code. */
const CODE_BY_STATUS: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  408: 'REQUEST_TIMEOUT',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  431: 'HEADERS_TOO_LARGE',
};

interface Layer {
  name: string;
  rawPath?: unknown;
}

interface ExpressApp {
  router: {stack: Layer[]};
  handle: Handle;
}

type Handle = (
  this: ExpressApp,
  req: IncomingMessage,
  res: ServerResponse,
  callback?: (err?: unknown) => void,
) => void;

let installed = false;
let patchedHandle: Handle | undefined;
let log: Logger | undefined;
const adoptedApps = new WeakSet<object>();
const adoptedServers = new WeakSet<Server>();

/** Where answers given outside the function (by the framework or Node) are logged. */
export function logFrameworkAnswersTo(logger: Logger): void {
  log = logger;
}

/** Takes the body parsers and the default ignored routes out of the framework's app. */
function adoptApp(app: ExpressApp): void {
  if (adoptedApps.has(app)) return;
  adoptedApps.add(app);
  const stack = app.router.stack;
  for (let i = stack.length - 1; i >= 0; i--) {
    const layer = stack[i]!;
    const ignoredRoutes =
      Array.isArray(layer.rawPath) &&
      layer.rawPath.length === IGNORED_ROUTES.length &&
      layer.rawPath.every((path, index) => path === IGNORED_ROUTES[index]);
    if (BODY_PARSERS.has(layer.name) || ignoredRoutes) stack.splice(i, 1);
  }
}

function isFrameworkServer(server: unknown): server is Server {
  return (
    server instanceof Server &&
    server.listeners('request').some(listener => (listener as {handle?: unknown}).handle === patchedHandle)
  );
}

/** Our answers to what Node refuses before any request handler runs. */
function adoptServer(server: unknown): void {
  if (!isFrameworkServer(server) || adoptedServers.has(server)) return;
  adoptedServers.add(server);
  server.on('clientError', answerClientError);
  // Node answers a missing Host itself, with an empty 400; the request is let through and refused below.
  (server as {requireHostHeader?: boolean}).requireHostHeader = false;
  // Without a listener Node drops a CONNECT request's connection with no answer.
  server.on('connect', (req: IncomingMessage, socket: Socket) => {
    answerOnSocket(socket, new AppError('METHOD_NOT_ALLOWED', 'CONNECT is not allowed here'));
    log?.warn(
      {httpRequest: {requestMethod: req.method, status: 405}, code: 'METHOD_NOT_ALLOWED'},
      'CONNECT refused',
    );
  });
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    deferContinue(req, res);
    server.emit('request', req, res);
  });
  // Node answers any other expectation with an empty 417; RFC 9110 lets a server ignore it instead.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) =>
    server.emit('request', req, res),
  );
}

function clientErrorOf(error: Error & {code?: string}): AppError {
  switch (error.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new AppError('HEADERS_TOO_LARGE', 'The request headers are over the size limit');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new AppError('REQUEST_TIMEOUT', 'The request was not received in time');
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new AppError('BAD_REQUEST', 'The chunk extensions are over the size limit');
    default:
      return new AppError('BAD_REQUEST', 'The request is not valid HTTP/1.1');
  }
}

/** Writes our JSON error straight to a socket no response object owns, and closes it once written. */
function answerOnSocket(socket: Socket, refusal: AppError): number {
  const status = HTTP_STATUS[refusal.code];
  const payload = JSON.stringify(errorBody(refusal));
  socket.end(
    `HTTP/1.1 ${status} ${refusal.code.replace(/_/g, ' ')}\r\n` +
      'Content-Type: application/json; charset=utf-8\r\n' +
      `Content-Length: ${Buffer.byteLength(payload)}\r\n` +
      'Cache-Control: no-store\r\n' +
      'Connection: close\r\n\r\n' +
      payload,
  );
  socket.destroySoon();
  return status;
}

/** Node's own answer to a malformed request, as our JSON error (and, like Node's, the end of the connection). */
function answerClientError(error: Error & {code?: string}, socket: Socket): void {
  const inFlight = (socket as {_httpMessage?: ServerResponse | null})._httpMessage;
  if (error.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  const refusal = clientErrorOf(error);
  const status = answerOnSocket(socket, refusal);
  log?.warn(
    {
      httpRequest: {status, remoteIp: socket.remoteAddress},
      code: refusal.code,
      node_error: error.code,
    },
    `refused before routing: ${status}`,
  );
}

/** The framework's final handler, as our JSON error: a request no route took, or an error before the function. */
function answerUnhandled(req: IncomingMessage, res: ServerResponse, error: unknown): void {
  const refusal = unhandledError(req, error);
  discardUnreadBody(req);
  sendError(res, refusal);
  const status = res.statusCode;
  const entry: Record<string, unknown> = {
    httpRequest: {
      requestMethod: req.method,
      requestUrl: urlForLog(req.url?.slice(0, 2000)),
      status,
      userAgent: req.headers['user-agent'],
      remoteIp: req.socket.remoteAddress,
    },
    code: refusal.code,
  };
  if (status >= 500) entry.err = error;
  log?.[status >= 500 ? 'error' : 'warn'](
    entry,
    `${req.method} ${urlForLog(req.url?.slice(0, 200))} ${status}`,
  );
}

function unhandledError(req: IncomingMessage, error: unknown): AppError {
  if (error === undefined || error === null) {
    return new AppError('NOT_FOUND', `No route for ${String(req.url).slice(0, 200)}`);
  }
  const {type, status, statusCode, message} = error as {
    type?: unknown;
    status?: unknown;
    statusCode?: unknown;
    message?: unknown;
  };
  const known = typeof type === 'string' ? KNOWN_ERRORS[type] : undefined;
  if (known) return new AppError(known.code, known.message, {cause: error});
  const badHost = (error as {badHost?: unknown}).badHost;
  if (badHost === 'missing') return new AppError('BAD_REQUEST', 'An HTTP/1.1 request needs a Host header');
  if (badHost === 'repeated') return new AppError('BAD_REQUEST', 'A request must have only one Host header');
  if (typeof message === 'string' && message.startsWith('Failed to decode param')) {
    return new AppError('BAD_REQUEST', 'The path has a malformed %-escape', {cause: error});
  }
  const code = Number(status ?? statusCode);
  if (code >= 400 && code < 500) {
    return new AppError(CODE_BY_STATUS[code] ?? 'BAD_REQUEST', 'The request was refused', {cause: error});
  }
  return new AppError('SERVICE_ERROR', 'Internal error; the request was not completed', {cause: error});
}

function hostHeaderCount(rawHeaders: string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'host') count++;
  return count;
}

export function installFrameworkAdapters(): void {
  if (installed) return;
  installed = true;
  const frameworkRequire = createRequire(require.resolve('@google-cloud/functions-framework'));
  const express = frameworkRequire('express') as {application: {handle: Handle}};
  const original = express.application.handle;
  patchedHandle = function handle(this: ExpressApp, req, res, callback) {
    if (callback) return original.call(this, req, res, callback);
    adoptApp(this);
    adoptServer((req.socket as {server?: unknown} | null)?.server);
    const done = (err?: unknown) => answerUnhandled(req, res, err);
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with more than one, is a 400 (Node's own
    // check is turned off above, and Node keeps the first of several Host headers silently).
    if (req.httpVersion === '1.1' && req.headers.host === undefined) {
      return done(Object.assign(new Error('missing Host'), {status: 400, badHost: 'missing'}));
    }
    if (hostHeaderCount(req.rawHeaders) > 1) {
      return done(Object.assign(new Error('repeated Host'), {status: 400, badHost: 'repeated'}));
    }
    return original.call(this, req, res, done);
  };
  express.application.handle = patchedHandle;
  // The server is adopted when it starts listening, before its first connection.
  subscribe('tracing:net.server.listen:asyncStart', message => {
    adoptServer((message as {server?: unknown}).server);
  });
}

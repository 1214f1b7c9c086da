import type {IncomingMessage, ServerResponse} from 'node:http';
import type {Readable} from 'node:stream';
import {createGunzip} from 'node:zlib';
import {AppError, validationError} from '../core/errors';
import type {DecodedBase64} from '../core/image-bytes';
import {JsonBase64Scanner, type JsonPath} from './json-base64';

/**
 * The request as routes get it: unread. The Functions Framework's body parsers
 * are taken out of its app (see framework.ts), so the body is read here, once,
 * under the function's limits.
 */
export type ParsedRequest = IncomingMessage;

/**
 * After a body is refused, the rest of it is read and thrown away, so the
 * caller gets the answer instead of a reset connection (a socket closed with
 * unread data resets, and the peer may lose the answer). Past this many bytes
 * the connection is half-closed after the answer, the rest discarded for
 * DISCARD_LINGER_MS more, and then closed.
 */
export const DISCARD_LIMIT_BYTES = 32 * 1024 * 1024;
export const DISCARD_LINGER_MS = 2000;

const DANGEROUS_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** application/json and every application/*+json (vnd.api+json, merge-patch+json, ...). */
const JSON_MEDIA_TYPE = /^application\/(?:[a-z0-9][a-z0-9!#$&^_.+-]*\+)?json$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

interface MediaType {
  type: string;
  charset: string | undefined;
}

/** The Content-Type's media type and charset; null when there is none. */
function mediaTypeOf(req: IncomingMessage): MediaType | null {
  const header = req.headers['content-type'];
  if (header === undefined || header.trim() === '') return null;
  const [essence = '', ...parameters] = header.split(';');
  const type = essence.trim().toLowerCase();
  const [top, sub, extra] = type.split('/');
  if (!top || !sub || extra !== undefined || !TOKEN.test(top) || !TOKEN.test(sub)) {
    throw new AppError(
      'UNSUPPORTED_MEDIA_TYPE',
      `Content-Type '${header.slice(0, 100)}' is not a media type; send application/json`,
    );
  }
  let charset: string | undefined;
  for (const parameter of parameters) {
    const [name = '', ...value] = parameter.split('=');
    if (name.trim().toLowerCase() === 'charset') {
      charset = value
        .join('=')
        .trim()
        .replace(/^"(.*)"$/, '$1')
        .toLowerCase();
    }
  }
  return {type, charset};
}

/** identity or gzip; any other coding is refused before a byte is read. */
function contentCodingOf(req: IncomingMessage, res: ServerResponse): 'identity' | 'gzip' {
  const header = req.headers['content-encoding'];
  const codings = (header ?? '')
    .toLowerCase()
    .split(',')
    .map(coding => coding.trim())
    .filter(coding => coding !== '' && coding !== 'identity');
  if (codings.length === 0) return 'identity';
  if (codings.length === 1 && (codings[0] === 'gzip' || codings[0] === 'x-gzip')) return 'gzip';
  // RFC 9110 §12.5.3: a 415 for a content coding says which codings are taken.
  res.setHeader('Accept-Encoding', 'gzip');
  throw new AppError(
    'UNSUPPORTED_MEDIA_TYPE',
    `Content-Encoding '${String(header).slice(0, 100)}' is not supported; send the body as is or gzip`,
  );
}

function tooLarge(maxBytes: number, declared?: number, inflated = false): AppError {
  return new AppError(
    'PAYLOAD_TOO_LARGE',
    declared !== undefined
      ? `The request body is ${declared} bytes; the limit is ${maxBytes}`
      : `The request body ${inflated ? 'inflates to' : 'is'} more than the limit of ${maxBytes} bytes`,
  );
}

/** Requests whose `Expect: 100-continue` is answered only once their body is wanted. */
const awaitingContinue = new WeakSet<IncomingMessage>();

/**
 * Holds back the 100 Continue Node would send at once: a body that is refused
 * (too large by its Content-Length, the wrong type) is then never sent. A
 * response given without asking for the body closes the connection, since the
 * body the caller held back would otherwise be read as the next request.
 */
export function deferContinue(req: IncomingMessage, res: ServerResponse): void {
  awaitingContinue.add(req);
  res.setHeader('Connection', 'close');
}

function grantContinue(req: IncomingMessage, res: ServerResponse): void {
  if (!awaitingContinue.delete(req)) return;
  res.removeHeader('Connection');
  res.writeContinue();
}

/**
 * Reads what is left of a body nobody wants and throws it away, keeping the
 * connection, up to DISCARD_LIMIT_BYTES; past that, a lingering close.
 */
export function discardUnreadBody(req: IncomingMessage): void {
  if (req.readableEnded || req.destroyed || awaitingContinue.has(req)) return;
  let discarded = 0;
  let closing = false;
  req.on('data', (chunk: Buffer) => {
    discarded += chunk.length;
    if (closing || discarded <= DISCARD_LIMIT_BYTES) return;
    closing = true;
    const socket = req.socket;
    // FIN once the answer is out: the caller learns no more is read, and has time to read the answer.
    socket.end();
    setTimeout(() => socket.destroy(), DISCARD_LINGER_MS).unref();
  });
  req.on('error', () => undefined);
  req.resume();
}

/**
 * Reads the body as sent (at most `maxBytes` on the wire) and, if gzip,
 * inflates it (at most `maxBytes` inflated), handing each chunk to `take` as
 * it comes and stopping as soon as either limit is passed.
 */
function readLimited(
  req: IncomingMessage,
  coding: 'identity' | 'gzip',
  maxBytes: number,
  take: (chunk: Buffer) => void,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let wireBytes = 0;
    let bodyBytes = 0;
    let settled = false;
    const gunzip = coding === 'gzip' ? createGunzip() : null;
    const source: Readable = gunzip ?? req;

    const settle = (error: AppError | null) => {
      if (settled) return;
      settled = true;
      req.off('data', countWire);
      source.off('data', collect);
      if (gunzip) {
        req.unpipe(gunzip);
        gunzip.destroy();
      }
      if (error) {
        discardUnreadBody(req);
        reject(error);
      } else {
        resolve();
      }
    };
    const countWire = (chunk: Buffer) => {
      wireBytes += chunk.length;
      if (wireBytes > maxBytes) settle(tooLarge(maxBytes));
    };
    const collect = (chunk: Buffer) => {
      bodyBytes += chunk.length;
      if (bodyBytes > maxBytes) {
        settle(tooLarge(maxBytes, undefined, gunzip !== null));
        return;
      }
      take(chunk);
    };

    req.on('data', countWire);
    source.on('data', collect);
    source.once('end', () => settle(null));
    req.once('close', () => {
      if (!req.readableEnded)
        settle(new AppError('BAD_REQUEST', 'The request body ended before it was whole'));
    });
    req.on('error', () => settle(new AppError('BAD_REQUEST', 'The request body ended before it was whole')));
    if (gunzip) {
      gunzip.on('error', () => settle(new AppError('BAD_REQUEST', 'The request body is not valid gzip')));
      req.pipe(gunzip);
    }
  });
}

function describeJson(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  return `a ${typeof value}`;
}

/** Rejects keys that could reach an object's prototype if code ever merged the body. */
function assertNoDangerousKeys(value: unknown, depth = 0): void {
  if (depth > 32) throw validationError([{field: '(body)', message: 'nested too deeply'}]);
  if (typeof value !== 'object' || value === null) return;
  for (const key of Object.keys(value)) {
    if (DANGEROUS_KEYS.has(key)) throw validationError([{field: key, message: 'this key is not allowed'}]);
    assertNoDangerousKeys((value as Record<string, unknown>)[key], depth + 1);
  }
}

/** The body as a JSON object: UTF-8 (a BOM is dropped), valid JSON, and an object. */
export function parseJsonObject(bytes: Buffer): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', {fatal: true}).decode(bytes);
  } catch {
    throw new AppError('INVALID_JSON', 'The request body is not valid UTF-8');
  }
  if (text.trim() === '') {
    throw validationError([{field: '(body)', message: 'a JSON object is required; the body is empty'}]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AppError('INVALID_JSON', 'The request body is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw validationError([
      {field: '(body)', message: `a JSON object is required, not ${describeJson(value)}`},
    ]);
  }
  assertNoDangerousKeys(value);
  return value as Record<string, unknown>;
}

/** What a body was admitted as, before a byte of it was read. */
export interface AdmittedBody {
  /** JSON (application/json, any application/*+json, or no Content-Type), or one of the route's own types. */
  mediaType: string;
  json: boolean;
  coding: 'identity' | 'gzip';
}

/**
 * Checks what can be checked before a byte of the body is read, and only then
 * asks for it (100 Continue): the media type must be JSON (application/json,
 * any application/*+json, or none at all, as curl sends) in UTF-8, or one of
 * `otherTypes`, which the route reads itself, as sent; the coding identity or
 * gzip; the Content-Length within `maxBytes`.
 */
export function admitBody(
  req: IncomingMessage,
  res: ServerResponse,
  maxBytes: number,
  otherTypes: readonly string[] = [],
): AdmittedBody {
  if ('body' in req || 'rawBody' in req) {
    // A framework body parser ran before the function: the limits above it were not ours.
    throw new AppError('SERVICE_ERROR', 'The request body was read before the function could check it');
  }
  const media = mediaTypeOf(req);
  const json = media === null || JSON_MEDIA_TYPE.test(media.type);
  if (json && media?.charset !== undefined && media.charset !== 'utf-8' && media.charset !== 'utf8') {
    throw new AppError('UNSUPPORTED_MEDIA_TYPE', `JSON must be UTF-8, not '${media.charset.slice(0, 40)}'`);
  }
  if (!json && !otherTypes.includes(media!.type)) {
    throw new AppError(
      'UNSUPPORTED_MEDIA_TYPE',
      `Content-Type '${media!.type.slice(0, 100)}' is not supported; send ${['application/json', ...otherTypes].join(' or ')}`,
    );
  }
  const coding = contentCodingOf(req, res);
  if (!json && coding !== 'identity') {
    res.setHeader('Accept-Encoding', 'identity');
    throw new AppError(
      'UNSUPPORTED_MEDIA_TYPE',
      `A ${media!.type} body is read as sent: no Content-Encoding`,
    );
  }
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    throw tooLarge(maxBytes, declared);
  }
  grantContinue(req, res);
  return {mediaType: media?.type ?? 'application/json', json, coding};
}

/** Reads an admitted JSON body, inflating it if gzip, and parses it: a JSON object. */
export async function readJsonObject(
  req: IncomingMessage,
  admitted: AdmittedBody,
  maxBytes: number,
): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  await readLimited(req, admitted.coding, maxBytes, chunk => {
    chunks.push(chunk);
    bytes += chunk.length;
  });
  return parseJsonObject(Buffer.concat(chunks, bytes));
}

/**
 * Reads an admitted JSON body as readJsonObject does, but decodes the base64
 * string values at the paths `base64At` picks as they arrive (see
 * json-base64.ts): the body holds a token for each, and `decoded` its bytes.
 */
export async function readJsonWithBase64(
  req: IncomingMessage,
  admitted: AdmittedBody,
  maxBytes: number,
  base64At: (path: JsonPath) => boolean,
): Promise<{body: Record<string, unknown>; decoded: DecodedBase64}> {
  const scanner = new JsonBase64Scanner(base64At);
  await readLimited(req, admitted.coding, maxBytes, chunk => scanner.write(chunk));
  const {skeleton, images} = scanner.end();
  return {body: parseJsonObject(skeleton), decoded: images};
}

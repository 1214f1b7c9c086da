import type {IncomingMessage} from 'node:http';
import {AppError, validationError} from '../core/errors';

/** What the Functions Framework leaves on the request after its body parsers ran. */
export interface ParsedRequest extends IncomingMessage {
  body?: unknown;
  rawBody?: Buffer;
}

const DANGEROUS_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}

function isJsonType(type: string): boolean {
  return type === 'application/json' || (type.startsWith('application/') && type.endsWith('+json'));
}

function parseJsonText(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError('INVALID_JSON', 'The request body is not valid JSON');
  }
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

/** Reads a body no framework parser claimed (no content type), up to `maxBytes`. */
async function readUnparsed(req: ParsedRequest, maxBytes: number): Promise<Buffer> {
  if (req.rawBody) return req.rawBody;
  if (req.readableEnded) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > maxBytes) {
      req.destroy();
      throw new AppError('PAYLOAD_TOO_LARGE', `The request body is over the limit of ${maxBytes} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * Returns the JSON body of a request. JSON media types are parsed by the
 * framework already; a body without a content type (or as text/plain, which
 * some schedulers send) is parsed here; any other type is refused.
 */
export async function readJsonBody(req: ParsedRequest, maxBytes: number): Promise<unknown> {
  const declared = Number(req.headers['content-length']);
  const size = req.rawBody?.length ?? (Number.isFinite(declared) ? declared : 0);
  if (size > maxBytes) {
    throw new AppError('PAYLOAD_TOO_LARGE', `The request body is ${size} bytes; the limit is ${maxBytes}`);
  }
  const type = mediaType(req);
  let body: unknown;
  if (isJsonType(type)) {
    body = req.body;
  } else if (type === '' || type === 'text/plain') {
    const text =
      typeof req.body === 'string' ? req.body : (await readUnparsed(req, maxBytes)).toString('utf8');
    if (text.trim() === '') throw validationError([{field: '(body)', message: 'a JSON object is required'}]);
    body = parseJsonText(text);
  } else {
    throw new AppError(
      'UNSUPPORTED_MEDIA_TYPE',
      `Content-Type '${type.slice(0, 100)}' is not supported; send application/json`,
    );
  }
  if (body === undefined) throw validationError([{field: '(body)', message: 'a JSON object is required'}]);
  assertNoDangerousKeys(body);
  return body;
}

import {createRequire} from 'node:module';
import type {IncomingMessage, ServerResponse} from 'node:http';

/**
 * The Functions Framework reads every request body into memory before the
 * function runs: its last body parser takes any media type, up to 1 GB. The
 * media types a route reads as a stream (multipart uploads) are kept from it:
 * the request's Content-Type is set aside before the framework's parsers run,
 * so none of them claims the body, and put back when the function reads the
 * body (`mediaTypeOf`). The body then stays on the wire until its reader takes
 * it, within its own limits.
 *
 * Must run before the framework creates its app: Express copies `handle` onto
 * each app when it is created.
 */
const STREAMED_TYPES = new Set(['multipart/form-data']);

const SET_ASIDE = Symbol('content-type set aside');

type WithSetAside = IncomingMessage & {[SET_ASIDE]?: string};

type Handle = (
  this: unknown,
  req: IncomingMessage,
  res: ServerResponse,
  callback?: (err?: unknown) => void,
) => void;

let installed = false;

export function installStreamedBodies(): void {
  if (installed) return;
  const frameworkRequire = createRequire(require.resolve('@google-cloud/functions-framework'));
  const express = frameworkRequire('express') as {application: {handle: Handle}};
  const original = express.application.handle;
  express.application.handle = function handle(this: unknown, req, res, callback) {
    const declared = req.headers['content-type'];
    if (declared !== undefined && STREAMED_TYPES.has(mediaTypeIn(declared))) {
      (req as WithSetAside)[SET_ASIDE] = declared;
      delete req.headers['content-type'];
    }
    return original.call(this, req, res, callback);
  } as Handle;
  installed = true;
}

function mediaTypeIn(contentType: string): string {
  return contentType.split(';')[0]!.trim().toLowerCase();
}

/**
 * The request's media type, lower case without parameters ('' when none).
 * A Content-Type set aside from the framework is put back first, so whatever
 * reads the body next sees the request as it was sent.
 */
export function mediaTypeOf(req: IncomingMessage): string {
  const setAside = (req as WithSetAside)[SET_ASIDE];
  if (setAside !== undefined) {
    req.headers['content-type'] = setAside;
    delete (req as WithSetAside)[SET_ASIDE];
  }
  return mediaTypeIn(req.headers['content-type'] ?? '');
}

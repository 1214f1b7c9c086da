import {createRequire} from 'node:module';
import type {IncomingMessage, ServerResponse} from 'node:http';
import {AppError, type ErrorCode} from '../core/errors';
import {sendError} from './responses';

/**
 * The Functions Framework parses request bodies before our function runs and
 * answers a malformed body with Express's HTML error page (an open upstream
 * issue, GoogleCloudPlatform/functions-framework-nodejs#686). We wrap the
 * final handler of the framework's own Express so body-parser failures get
 * our JSON error shape; every other error keeps Express's default handling.
 *
 * Must run before the framework creates its app: Express copies `handle` onto
 * each app when it is created.
 */
const BODY_ERRORS: Record<string, {code: ErrorCode; message: string}> = {
  'entity.parse.failed': {code: 'INVALID_JSON', message: 'The request body is not valid JSON'},
  'entity.too.large': {code: 'PAYLOAD_TOO_LARGE', message: 'The request body is too large'},
  'encoding.unsupported': {code: 'UNSUPPORTED_MEDIA_TYPE', message: 'Unsupported content encoding'},
  'charset.unsupported': {code: 'UNSUPPORTED_MEDIA_TYPE', message: 'Unsupported charset; send UTF-8'},
  'request.size.invalid': {
    code: 'INVALID_JSON',
    message: 'The request body is shorter than its Content-Length',
  },
};

let installed = false;

type Handle = (
  this: unknown,
  req: IncomingMessage,
  res: ServerResponse,
  callback?: (err?: unknown) => void,
) => void;

export function installFrameworkErrorHandler(): void {
  if (installed) return;
  const frameworkRequire = createRequire(require.resolve('@google-cloud/functions-framework'));
  const express = frameworkRequire('express') as {application: {handle: Handle; get(name: string): unknown}};
  const finalhandler = createRequire(frameworkRequire.resolve('express'))('finalhandler') as (
    req: IncomingMessage,
    res: ServerResponse,
    options: {env: unknown},
  ) => (err?: unknown) => void;
  const original = express.application.handle;
  express.application.handle = function handle(this: {get(name: string): unknown}, req, res, callback) {
    if (callback) return original.call(this, req, res, callback);
    const fallback = finalhandler(req, res, {env: this.get('env')});
    return original.call(this, req, res, (err?: unknown) => {
      const type = (err as {type?: unknown} | undefined)?.type;
      const known = typeof type === 'string' ? BODY_ERRORS[type] : undefined;
      if (!known) return fallback(err);
      sendError(res, new AppError(known.code, known.message, {cause: err}));
    });
  } as Handle;
  installed = true;
}

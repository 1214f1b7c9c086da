import type {IncomingMessage, ServerResponse} from 'node:http';
import {AppError} from '../core/errors';
import type {Logger} from '../logger';
import {logAccess, requestTarget} from './app';
import {discardUnreadBody} from './body';
import {sendError, sendJson} from './responses';
import {healthBody, readinessBody, type ProbeFacts} from './routes/probes';

/**
 * The function while its configuration is invalid. The instance is alive
 * (a new one would read the same configuration), so GET /health is 200 and
 * lists the problems; GET /ready is 503 naming them; every other request is
 * a SERVICE_ERROR naming them. Nothing else is built, no body is read.
 */
export function createUnconfiguredApp(
  facts: ProbeFacts & {configErrors: string[]},
  logger: Logger,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const notChecked = {ok: false, reason: 'not checked: the configuration is invalid'};
  return async (req, res) => {
    const started = performance.now();
    let probe: string | undefined;
    try {
      const path = requestTarget(req).pathname.replace(/(.)\/$/, '$1');
      if (req.method === 'GET' || req.method === 'HEAD') probe = path;
    } catch {
      // Not a probe, then.
    }
    let failure: AppError | undefined;
    if (probe === '/health') {
      sendJson(res, 200, healthBody(facts));
    } else if (probe === '/ready') {
      sendJson(
        res,
        503,
        readinessBody(facts, {storage: notChecked, metadata: notChecked, openai: notChecked}),
      );
    } else {
      failure = new AppError('SERVICE_ERROR', `Invalid configuration: ${facts.configErrors.join('; ')}`, {
        details: {config_errors: facts.configErrors},
      });
      sendError(res, failure);
    }
    discardUnreadBody(req);
    logAccess(logger, req, res, started, {}, failure);
  };
}

import * as functions from '@google-cloud/functions-framework';
import type {Request, Response} from '@google-cloud/functions-framework';
import {ConfigError, loadConfig} from './config';
import {AppError} from './errors';
import {createApp} from './http/app';
import {sendError} from './http/error-response';
import {installFrameworkErrorHandler} from './http/framework-errors';
import {createLogger} from './logger';
import {createServices, type Services} from './services';

installFrameworkErrorHandler();

type Handler = (req: Request, res: Response) => Promise<void>;

/**
 * Builds the handler once per instance, on the first request: configuration is
 * read and checked, adapters are chosen, clients are created and then reused.
 * A configuration error answers every request with a clear SERVICE_ERROR.
 */
function buildHandler(): Handler {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    const message = error instanceof ConfigError ? error.message : 'Invalid configuration';
    createLogger('info').error({err: error}, message);
    return async (_req, res) => sendError(res, new AppError('SERVICE_ERROR', message));
  }
  const logger = createLogger(config.log.level);
  let services: Services | undefined;
  return createApp({
    config,
    logger,
    services: () => (services ??= createServices(config)),
  });
}

let handler: Handler | undefined;

export const imageGen: Handler = (req, res) => (handler ??= buildHandler())(req, res);

functions.http('imageGen', imageGen);

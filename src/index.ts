import './compile-cache';
import * as functions from '@google-cloud/functions-framework';
import type {Request, Response} from '@google-cloud/functions-framework';
import {createApp} from './api/app';
import {installFrameworkAdapters, logFrameworkAnswersTo} from './api/framework';
import {sendError} from './api/responses';
import {ConfigError, loadConfig} from './config';
import {createServices, type ServiceOptions} from './container';
import {AppError} from './core/errors';
import {createLogger} from './logger';

installFrameworkAdapters();

export type Handler = (req: Request, res: Response) => Promise<void>;

/**
 * Builds a handler from an environment: configuration is read and checked
 * once, and the composition root builds everything else. A configuration
 * error answers every request with a clear SERVICE_ERROR instead of crashing
 * the instance.
 */
export function createImageGenHandler(
  env: NodeJS.ProcessEnv = process.env,
  options: ServiceOptions = {},
): Handler {
  let config;
  try {
    config = loadConfig(env);
  } catch (error) {
    const message = error instanceof ConfigError ? error.message : 'Invalid configuration';
    createLogger('info', options.logDestination).error({err: error}, message);
    return async (_req, res) => sendError(res, new AppError('SERVICE_ERROR', message));
  }
  const services = createServices(config, options);
  logFrameworkAnswersTo(services.logger);
  return createApp(services);
}

let handler: Handler | undefined;

/** The entry point: built on the first request, so a cold start does only what it must. */
export const imageGen: Handler = (req, res) => (handler ??= createImageGenHandler())(req, res);

functions.http('imageGen', imageGen);

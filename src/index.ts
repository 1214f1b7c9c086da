import './compile-cache';
import * as functions from '@google-cloud/functions-framework';
import type {Request, Response} from '@google-cloud/functions-framework';
import {createApp} from './api/app';
import {installFrameworkAdapters, logFrameworkAnswersTo} from './api/framework';
import {createUnconfiguredApp} from './api/unconfigured';
import {ConfigError, describeInvalidEnvironment, loadConfig} from './config';
import {createServices, type ServiceOptions} from './container';
import {createLogger} from './logger';

installFrameworkAdapters();

export type Handler = (req: Request, res: Response) => Promise<void>;

/**
 * Builds a handler from an environment: configuration is read and checked
 * once, and the composition root builds everything else. A configuration
 * error does not crash the instance: the probes report it (GET /health 200
 * with `config_errors`, GET /ready 503) and every other request answers a
 * SERVICE_ERROR naming each bad variable.
 */
export function createImageGenHandler(
  env: NodeJS.ProcessEnv = process.env,
  options: ServiceOptions = {},
): Handler {
  let config;
  try {
    config = loadConfig(env);
  } catch (error) {
    const problems = error instanceof ConfigError ? error.problems : ['the configuration could not be read'];
    const logger = createLogger('info', options.logDestination);
    logger.error({config_errors: problems}, `Invalid configuration: ${problems.join('; ')}`);
    logFrameworkAnswersTo(logger);
    return createUnconfiguredApp({...describeInvalidEnvironment(env), configErrors: problems}, logger);
  }
  const services = createServices(config, options);
  logFrameworkAnswersTo(services.logger);
  return createApp(services);
}

let handler: Handler | undefined;

/** The entry point: built on the first request, so a cold start does only what it must. */
export const imageGen: Handler = (req, res) => (handler ??= createImageGenHandler())(req, res);

functions.http('imageGen', imageGen);

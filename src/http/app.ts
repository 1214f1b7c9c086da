import type {IncomingMessage, ServerResponse} from 'node:http';
import type {Config} from '../config';
import {AppError} from '../errors';
import type {Logger} from '../logger';
import {traceFields} from '../logger';
import type {Services} from '../services';
import {sendError, sendJson, toAppError} from './error-response';
import * as handlers from './handlers';
import type {RouteHandler} from './handlers';
import {openApiDocument} from './openapi';
import type {ParsedRequest} from './request-body';
import {imageLinker, type ImageLinker} from './urls';
import {authenticate} from './auth';
import {IdempotentGenerator} from '../usecases/idempotent-generate';

type Method = 'GET' | 'HEAD' | 'POST' | 'DELETE';

export interface Route {
  pattern: RegExp;
  methods: Partial<Record<Method, RouteHandler>>;
  /** Open without an API key (health probes, the API description). */
  open?: boolean;
}

export interface AppOptions {
  config: Config;
  logger: Logger;
  /** Built on first use, then shared by every request of this instance. */
  services: () => Services;
}

const ID = '([^/]+)';

const openapi: RouteHandler = async ctx => sendJson(ctx.res, 200, openApiDocument());

/** Every route the function answers; anything else is 404, a wrong method 405. */
export const ROUTES: Route[] = [
  {pattern: /^\/(?:generate\/?)?$/, methods: {POST: handlers.generate}},
  {pattern: /^\/health\/?$/, methods: {GET: handlers.health}, open: true},
  {pattern: /^\/ready\/?$/, methods: {GET: handlers.ready}, open: true},
  {pattern: /^\/openapi\.json$/, methods: {GET: openapi}, open: true},
  {pattern: /^\/jobs\/?$/, methods: {GET: handlers.listJobsRoute}},
  {pattern: new RegExp(`^/jobs/${ID}/?$`), methods: {GET: handlers.getJob, DELETE: handlers.removeJob}},
  {pattern: new RegExp(`^/images/${ID}/url/?$`), methods: {GET: handlers.imageUrl}},
  {
    pattern: new RegExp(`^/images/${ID}/?$`),
    methods: {GET: handlers.serveImage, HEAD: handlers.serveImage, DELETE: handlers.removeImage},
  },
];

function decodeParam(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // a malformed escape is just an id that matches nothing
  }
}

export function createApp(options: AppOptions): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const {config, logger} = options;
  const projectId = config.storage.kind === 'gcp' ? config.storage.projectId : undefined;
  let generator: IdempotentGenerator | undefined;
  const getGenerator = () => (generator ??= new IdempotentGenerator(options.services(), config.idempotency));

  return async (req, res) => {
    const started = performance.now();
    const log = logger.child(traceFields(req.headers, projectId));
    const labels: Record<string, string> = {};
    let failure: AppError | undefined;
    try {
      const url = new URL(req.url ?? '/', 'http://function.invalid');
      const route = ROUTES.find(candidate => candidate.pattern.test(url.pathname));
      if (!route) throw new AppError('NOT_FOUND', `No route for ${url.pathname.slice(0, 200)}`);
      const method = (req.method ?? 'GET').toUpperCase() as Method;
      const handler = route.methods[method];
      if (!handler) {
        const allow = Object.keys(route.methods).join(', ');
        res.setHeader('Allow', allow);
        throw new AppError('METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${allow}`);
      }
      const caller = route.open ? {name: null, dailyQuota: null} : authenticate(req, config.apiKeys);
      if (caller.name) labels.caller = caller.name;
      const services = options.services();
      let linker: ImageLinker | undefined;
      await handler({
        req: req as ParsedRequest,
        res,
        url,
        params: (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodeParam),
        config,
        services,
        log,
        labels,
        // Built when a response links an image: only then does it need the image store.
        links: image => (linker ??= imageLinker(config, services.images, req))(image),
        generator: getGenerator,
        caller,
      });
    } catch (error) {
      failure = toAppError(error);
      sendError(res, failure, failure.code === 'UNAUTHENTICATED' ? {'WWW-Authenticate': 'Bearer'} : {});
    } finally {
      logAccess(log, req, res, started, labels, failure);
    }
  };
}

function logAccess(
  log: Logger,
  req: IncomingMessage,
  res: ServerResponse,
  started: number,
  labels: Record<string, string>,
  failure: AppError | undefined,
): void {
  const latencyMs = performance.now() - started;
  const status = res.statusCode;
  const entry: Record<string, unknown> = {
    httpRequest: {
      requestMethod: req.method,
      requestUrl: req.url,
      status,
      latency: `${(latencyMs / 1000).toFixed(3)}s`,
      userAgent: req.headers['user-agent'],
      remoteIp: req.socket.remoteAddress,
      responseSize: String(res.getHeader('content-length') ?? ''),
    },
    'logging.googleapis.com/labels': labels,
    latency_ms: Math.round(latencyMs),
  };
  if (failure) {
    entry.code = failure.code;
    if (status >= 500) entry.err = failure.cause ?? failure;
  }
  const level = status >= 500 ? 'error' : status >= 400 ? 'warn' : 'info';
  log[level](entry, `${req.method} ${req.url} ${status}`);
}

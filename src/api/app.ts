import type {IncomingMessage, ServerResponse} from 'node:http';
import {z} from 'zod';
import {AppError, validationError, zodProblems} from '../core/errors';
import type {Requester} from '../core/requester';
import {childHiding, traceFields, urlForLog, type Logger} from '../logger';
import {authenticate} from './auth';
import {discardUnreadBody} from './body';
import {HTTP_STATUS, sendError, toAppError} from './responses';
import {readRouteBody} from './route-body';
import type {AppServices, Method, Route} from './route';
import {ROUTES} from './routes';
import {imageLinker, verifyProxySignature, type ImageLinker} from './urls';

interface CompiledRoute {
  route: Route;
  pattern: RegExp;
  names: string[];
}

function compile(route: Route): CompiledRoute {
  const names: string[] = [];
  const source = route.path.replace(/\/$/, '').replace(/\{(\w+)\}/g, (_, name: string) => {
    names.push(name);
    return '([^/]+)';
  });
  return {route, pattern: new RegExp(`^${source}/?$`), names};
}

/**
 * The request target as a URL. A path is never read as a URL of its own
 * (`//host/x` is a path here, not another host); the absolute form
 * (`http://host/x`) gives its path and query.
 */
export function requestTarget(req: IncomingMessage): URL {
  const target = req.url ?? '/';
  try {
    if (/^https?:\/\//i.test(target)) return new URL(target);
    return new URL(`http://function.invalid${target.startsWith('/') ? '' : '/'}${target}`);
  } catch {
    throw new AppError('BAD_REQUEST', 'The request target is not a valid URL');
  }
}

function decodeParam(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // a malformed escape is just an id that matches nothing
  }
}

function validate<T>(schema: z.ZodType<T> | undefined, input: unknown): T {
  if (!schema) return undefined as T;
  const parsed = schema.safeParse(input);
  if (!parsed.success) throw validationError(zodProblems(parsed.error));
  return parsed.data;
}

function queryOf(url: URL): Record<string, string> {
  const query: Record<string, string> = {};
  for (const [name, value] of url.searchParams) {
    if (name in query) throw validationError([{field: name, message: 'given more than once'}]);
    query[name] = value;
  }
  return query;
}

/** The request headers a route declares, under their declared names. */
function headersOf(schema: z.ZodType | undefined, req: IncomingMessage): Record<string, unknown> {
  if (!(schema instanceof z.ZodObject)) return {};
  return Object.fromEntries(Object.keys(schema.shape).map(name => [name, req.headers[name.toLowerCase()]]));
}

/**
 * A URL this function signed for the image it names is its own credential.
 * An expired or forged signature is refused outright, so a caller learns why.
 */
function signedUrlRequester(
  route: Route,
  config: AppServices['config'],
  imageId: string | undefined,
  query: URLSearchParams,
  now: Date,
): Requester | null {
  const key = config.urls.proxySigningKey;
  if (!route.signedUrls || !key || imageId === undefined) return null;
  const expires = query.get('expires');
  const signature = query.get('signature');
  if (expires === null || signature === null) return null;
  if (!/^\d{1,12}$/.test(expires) || !/^[0-9a-f]{64}$/.test(signature)) return null;
  const jobId = query.get('job');
  const verdict = verifyProxySignature(key, imageId, jobId, expires, signature, now);
  if (verdict === 'valid') return {kind: 'signed-url', imageId, jobId};
  throw new AppError(
    'UNAUTHENTICATED',
    verdict === 'expired'
      ? 'This image URL has expired; GET /images/:id/url gives a fresh one'
      : 'This image URL is not one this function signed',
  );
}

/** The function's HTTP face: routes every request, answers every failure with our JSON error, logs it. */
export function createApp(
  services: AppServices,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const {config, logger} = services;
  const projectId = config.storage.kind === 'gcp' ? config.storage.projectId : undefined;
  const compiled = ROUTES.map(compile);

  return async (req, res) => {
    const started = performance.now();
    // With LOG_PROMPTS=false the request's prompts join this list once its body is read.
    const hidden: string[] = [];
    const log = childHiding(logger, traceFields(req.headers, projectId), hidden);
    const labels: Record<string, string> = {};
    let failure: AppError | undefined;
    // The caller went away before the answer ended (a stream it stopped reading); the work goes on.
    let disconnected = false;
    res.once('close', () => (disconnected = !res.writableFinished));
    try {
      const url = requestTarget(req);
      const onPath = compiled.filter(candidate => candidate.pattern.test(url.pathname));
      if (onPath.length === 0) throw new AppError('NOT_FOUND', `No route for ${url.pathname.slice(0, 200)}`);
      const method = (req.method ?? 'GET').toUpperCase() as Method;
      const match = onPath.find(candidate => candidate.route.method === method);
      if (!match) {
        const allow = onPath.map(candidate => candidate.route.method).join(', ');
        res.setHeader('Allow', allow);
        throw new AppError('METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${allow}`);
      }
      const {route} = match;
      const values = (match.pattern.exec(url.pathname) ?? []).slice(1).map(decodeParam);
      const requester: Requester = route.open
        ? {kind: 'public'}
        : (signedUrlRequester(route, config, values[0], url.searchParams, services.now()) ??
          authenticate(req, config.apiKeys));
      if (requester.kind === 'api-key') labels.caller = requester.name;
      const params = validate(
        route.params,
        Object.fromEntries(match.names.map((name, i) => [name, values[i]])),
      );
      const query = validate(route.query, queryOf(url));
      const headers = validate(route.headers, headersOf(route.headers, req));
      const body = route.body ? await readRouteBody(route.body, req, res, config) : undefined;
      if (!config.log.prompts && route.body?.prompts) hidden.push(...route.body.prompts(body));
      let linker: ImageLinker | undefined;
      await route.handle({
        req,
        res,
        params,
        query,
        headers,
        body,
        requester,
        services,
        log,
        labels,
        // Built when a response links an image: only then does it need the object store.
        links: image => (linker ??= imageLinker(config, services.objects, req))(image),
      });
    } catch (error) {
      failure = toAppError(error);
      sendError(res, failure, failure.code === 'UNAUTHENTICATED' ? {'WWW-Authenticate': 'Bearer'} : {});
    } finally {
      // A body nobody read (a refusal before it, a route without one) is thrown away, within a bound.
      discardUnreadBody(req);
      logAccess(log, req, res, started, labels, failure, disconnected);
    }
  };
}

/** The one access log line of a request. */
export function logAccess(
  log: Logger,
  req: IncomingMessage,
  res: ServerResponse,
  started: number,
  labels: Record<string, string>,
  failure: AppError | undefined,
  disconnected = false,
): void {
  const latencyMs = performance.now() - started;
  // 499, as nginx logs a client that closed the request; a stream that began with 200 logs its failure's status.
  const status = disconnected ? 499 : failure ? HTTP_STATUS[failure.code] : res.statusCode;
  const url = urlForLog(req.url);
  const entry: Record<string, unknown> = {
    httpRequest: {
      requestMethod: req.method,
      requestUrl: url,
      status,
      latency: `${(latencyMs / 1000).toFixed(3)}s`,
      userAgent: req.headers['user-agent'],
      remoteIp: req.socket.remoteAddress,
      responseSize: String(res.getHeader('content-length') ?? ''),
    },
    'logging.googleapis.com/labels': labels,
    latency_ms: Math.round(latencyMs),
  };
  if (disconnected) entry.disconnected = true;
  if (failure) {
    entry.code = failure.code;
    if (status >= 500) entry.err = failure.cause ?? failure;
  }
  const level = status >= 500 ? 'error' : status >= 400 ? 'warn' : 'info';
  log[level](entry, `${req.method} ${url} ${status}`);
}

import type {IncomingMessage, ServerResponse} from 'node:http';
import {pipeline} from 'node:stream/promises';
import type {Config} from '../config';
import {AppError} from '../errors';
import {parseGenerateRequest} from '../domain/generate-request';
import type {Logger} from '../logger';
import {traceFields} from '../logger';
import type {Services} from '../services';
import {generateImages} from '../usecases/generate';
import {findImage, openImage} from '../usecases/images';
import {sendError, sendJson, toAppError} from './error-response';
import {jobView, type ImageUrlFor} from './presenters';
import {readJsonBody, type ParsedRequest} from './request-body';
import {baseUrlFor} from './urls';

type Method = 'GET' | 'HEAD' | 'POST' | 'DELETE';

interface RequestContext {
  req: ParsedRequest;
  res: ServerResponse;
  params: string[];
  services: () => Services;
  log: Logger;
  /** Labels for the access log line (job and image ids). */
  labels: Record<string, string>;
  urlFor: ImageUrlFor;
}

type RouteHandler = (ctx: RequestContext) => Promise<void>;

interface Route {
  pattern: RegExp;
  methods: Partial<Record<Method, RouteHandler>>;
}

export interface AppOptions {
  config: Config;
  logger: Logger;
  /** Built on first use, then shared by every request of this instance. */
  services: () => Services;
  maxBodyBytes?: number;
}

const IMAGE_CACHE_CONTROL = 'public, max-age=31536000, immutable';
const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

export function createApp(options: AppOptions): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  const {config, logger} = options;
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;

  const generate: RouteHandler = async ctx => {
    const body = await readJsonBody(ctx.req, maxBodyBytes);
    const parsed = parseGenerateRequest(body, config.defaultModel);
    if (!parsed.ok) {
      throw new AppError(
        'VALIDATION_ERROR',
        parsed.problems.map(p => `${p.field}: ${p.message}`).join('; '),
        {details: {fields: parsed.problems}},
      );
    }
    const command = parsed.command;
    const services = ctx.services();
    if (!services.provider.configured) {
      throw new AppError(
        'SERVICE_ERROR',
        'OPENAI_API_KEY is not set; the function cannot generate images until it is configured',
      );
    }
    ctx.log.info(
      {
        model: command.model,
        count: command.count,
        size: command.size,
        ...(config.log.prompts ? {prompt: truncate(command.prompt, 200)} : {}),
      },
      'generation started',
    );
    const job = await generateImages(services, command);
    ctx.labels.job_id = job.id;
    ctx.labels.image_ids = job.images.map(image => image.id).join(',');
    ctx.labels.upstream_ms = String(job.upstream_ms);
    sendJson(ctx.res, 200, await jobView(job, ctx.urlFor));
  };

  const health: RouteHandler = async ctx => {
    const services = ctx.services();
    const check = async (ping: () => Promise<unknown>) => {
      try {
        await ping();
        return true;
      } catch (error) {
        ctx.log.warn({err: error}, 'health check failed');
        return false;
      }
    };
    const [storageOk, metadataOk] = await Promise.all([
      check(() => services.images.list('health-check/')),
      check(() => services.metadata.ping()),
    ]);
    const healthy = storageOk && metadataOk;
    sendJson(ctx.res, healthy ? 200 : 503, {
      status: healthy ? 'healthy' : 'unhealthy',
      api_key_configured: services.provider.configured,
      timestamp: new Date().toISOString(),
      storage: {kind: services.images.kind, ok: storageOk},
      metadata: {kind: services.metadata.kind, ok: metadataOk},
      default_model: config.defaultModel,
    });
  };

  const serveImage: RouteHandler = async ctx => {
    const image = await findImage(ctx.services(), ctx.params[0]!);
    ctx.labels.image_ids = image.id;
    const etag = `"${image.sha256}"`;
    const headers = {
      'Content-Type': image.content_type,
      ETag: etag,
      'Cache-Control': IMAGE_CACHE_CONTROL,
      'X-Content-Type-Options': 'nosniff',
    };
    const res = ctx.res;
    if (matchesEtag(ctx.req.headers['if-none-match'], etag)) {
      res.writeHead(304, headers).end();
      return;
    }
    if (ctx.req.method === 'HEAD') {
      res.writeHead(200, {...headers, 'Content-Length': String(image.bytes)}).end();
      return;
    }
    const stream = await openImage(ctx.services(), image);
    res.writeHead(200, {...headers, 'Content-Length': String(image.bytes)});
    await pipeline(stream, res);
  };

  const routes: Route[] = [
    {pattern: /^\/(?:generate\/?)?$/, methods: {POST: generate}},
    {pattern: /^\/health\/?$/, methods: {GET: health}},
    {pattern: /^\/images\/([^/]+)\/?$/, methods: {GET: serveImage, HEAD: serveImage}},
  ];

  return async (req, res) => {
    const started = performance.now();
    const request = req as ParsedRequest;
    const log = logger.child(traceFields(req.headers, projectIdOf(config)));
    const labels: Record<string, string> = {};
    const base = baseUrlFor(req, config);
    const ctx: RequestContext = {
      req: request,
      res,
      params: [],
      services: options.services,
      log,
      labels,
      urlFor: image => `${base}/images/${image.id}`,
    };
    let failure: AppError | undefined;
    try {
      const {pathname} = new URL(req.url ?? '/', 'http://internal');
      const route = routes.find(candidate => candidate.pattern.test(pathname));
      if (!route) throw new AppError('NOT_FOUND', `No route for ${pathname.slice(0, 200)}`);
      const method = (req.method ?? 'GET').toUpperCase() as Method;
      const handler = route.methods[method];
      if (!handler) {
        const allow = Object.keys(route.methods).join(', ');
        res.setHeader('Allow', allow);
        throw new AppError('METHOD_NOT_ALLOWED', `${method} is not allowed here; use ${allow}`);
      }
      ctx.params = (route.pattern.exec(pathname) ?? []).slice(1).map(decodeURIComponent);
      await handler(ctx);
    } catch (error) {
      failure = toAppError(error);
      sendError(res, failure);
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

function projectIdOf(config: Config): string | undefined {
  return config.storage.kind === 'gcp' ? config.storage.projectId : undefined;
}

function matchesEtag(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some(tag => {
    const value = tag.trim().replace(/^W\//, '');
    return value === etag || value === '*';
  });
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

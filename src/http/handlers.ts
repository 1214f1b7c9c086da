import {pipeline} from 'node:stream/promises';
import type {ServerResponse} from 'node:http';
import type {Config} from '../config';
import {AppError} from '../errors';
import {IDEMPOTENCY_KEY_FORMAT, parseGenerateRequest} from '../domain/generate-request';
import type {Logger} from '../logger';
import type {Services} from '../services';
import type {IdempotentGenerator} from '../usecases/idempotent-generate';
import {deleteImage, deleteJob, findImage, findJob, listJobs, openImage} from '../usecases/images';
import {sendJson} from './error-response';
import {jobView} from './presenters';
import {readJsonBody, type ParsedRequest} from './request-body';
import {KNOWN_QUERY_KEYS, ListJobsQuerySchema, isMetadataFilterKey, metadataFilterFrom} from './schemas';
import type {ImageLinker} from './urls';
import type {Caller} from './auth';
import {reserveDailyQuota} from '../usecases/quota';

export interface RequestContext {
  req: ParsedRequest;
  res: ServerResponse;
  url: URL;
  params: string[];
  config: Config;
  services: Services;
  log: Logger;
  /** Labels for the access log line (job and image ids, upstream time). */
  labels: Record<string, string>;
  links: ImageLinker;
  generator: () => IdempotentGenerator;
  caller: Caller;
}

export type RouteHandler = (ctx: RequestContext) => Promise<void>;

const IMAGE_CACHE_CONTROL = 'public, max-age=31536000, immutable';

function validationError(problems: {field: string; message: string}[]): AppError {
  return new AppError('VALIDATION_ERROR', problems.map(p => `${p.field}: ${p.message}`).join('; '), {
    details: {fields: problems},
  });
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

export const generate: RouteHandler = async ctx => {
  const {config, services} = ctx;
  const body = await readJsonBody(ctx.req, config.maxBodyBytes);
  const parsed = parseGenerateRequest(body, config.defaultModel);
  if (!parsed.ok) throw validationError(parsed.problems);
  const command = parsed.command;
  const headerKey = ctx.req.headers['idempotency-key'];
  if (headerKey !== undefined) {
    if (typeof headerKey !== 'string' || !IDEMPOTENCY_KEY_FORMAT.test(headerKey)) {
      throw validationError([
        {field: 'Idempotency-Key', message: '1-255 printable ASCII characters without spaces'},
      ]);
    }
    if (command.idempotencyKey !== undefined && command.idempotencyKey !== headerKey) {
      throw validationError([{field: 'idempotency_key', message: 'differs from the Idempotency-Key header'}]);
    }
    command.idempotencyKey = headerKey;
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
  const {name, dailyQuota} = ctx.caller;
  const reserveQuota =
    name !== null && dailyQuota !== null
      ? () => reserveDailyQuota(services.metadata, name, dailyQuota, command.count)
      : undefined;
  const {job, replayed} = await ctx.generator().generate(command, reserveQuota);
  if (replayed) ctx.res.setHeader('Idempotent-Replayed', 'true');
  ctx.labels.job_id = job.id;
  ctx.labels.image_ids = job.images.map(image => image.id).join(',');
  ctx.labels.upstream_ms = String(job.upstream_ms);
  sendJson(ctx.res, 200, await jobView(job, ctx.links));
};

/** The body both probes answer with; readiness adds whether each store answered. */
function probeBody(ctx: RequestContext, status: string, ok?: {storage: boolean; metadata: boolean}) {
  const kinds = ctx.services.storeKinds;
  return {
    status,
    api_key_configured: ctx.services.provider.configured,
    timestamp: new Date().toISOString(),
    storage: ok ? {kind: kinds.storage, ok: ok.storage} : {kind: kinds.storage},
    metadata: ok ? {kind: kinds.metadata, ok: ok.metadata} : {kind: kinds.metadata},
    default_model: ctx.config.defaultModel,
  };
}

/**
 * Liveness: the instance runs and its configuration is valid. It touches no
 * store, so probes may call it often, for free, and a store outage does not
 * get healthy instances replaced.
 */
export const health: RouteHandler = async ctx => {
  sendJson(ctx.res, 200, probeBody(ctx, 'healthy'));
};

/** Readiness: both stores answer (a listing of an empty prefix, a metadata read). 503 says which does not. */
export const ready: RouteHandler = async ctx => {
  const {services} = ctx;
  const check = async (ping: () => Promise<unknown>) => {
    try {
      await ping();
      return true;
    } catch (error) {
      ctx.log.warn({err: error}, 'readiness check failed');
      return false;
    }
  };
  const [storage, metadata] = await Promise.all([
    check(() => services.images.list('health-check/')),
    check(() => services.metadata.ping()),
  ]);
  const ok = storage && metadata;
  sendJson(ctx.res, ok ? 200 : 503, probeBody(ctx, ok ? 'ready' : 'unavailable', {storage, metadata}));
};

function matchesEtag(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some(tag => {
    const value = tag.trim().replace(/^W\//, '');
    return value === etag || value === '*';
  });
}

export const serveImage: RouteHandler = async ctx => {
  const image = await findImage(ctx.services, ctx.params[0]!);
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
  const stream = await openImage(ctx.services, image);
  res.writeHead(200, {...headers, 'Content-Length': String(image.bytes)});
  await pipeline(stream, res);
};

export const imageUrl: RouteHandler = async ctx => {
  const image = await findImage(ctx.services, ctx.params[0]!);
  ctx.labels.image_ids = image.id;
  sendJson(ctx.res, 200, {id: image.id, ...(await ctx.links(image))});
};

export const removeImage: RouteHandler = async ctx => {
  const image = await deleteImage(ctx.services, ctx.params[0]!);
  ctx.labels.job_id = image.job_id;
  ctx.labels.image_ids = image.id;
  sendJson(ctx.res, 200, {status: 'deleted', job_id: image.job_id, image_ids: [image.id]});
};

export const getJob: RouteHandler = async ctx => {
  const job = await findJob(ctx.services, ctx.params[0]!);
  ctx.labels.job_id = job.id;
  sendJson(ctx.res, 200, await jobView(job, ctx.links));
};

export const removeJob: RouteHandler = async ctx => {
  const job = await deleteJob(ctx.services, ctx.params[0]!);
  ctx.labels.job_id = job.id;
  sendJson(ctx.res, 200, {status: 'deleted', job_id: job.id, image_ids: job.images.map(image => image.id)});
};

export const listJobsRoute: RouteHandler = async ctx => {
  const query: Record<string, string> = {};
  for (const [name, value] of ctx.url.searchParams) {
    if (name in query) throw validationError([{field: name, message: 'given more than once'}]);
    query[name] = value;
  }
  const unknown = Object.keys(query).filter(
    name => !KNOWN_QUERY_KEYS.has(name) && !isMetadataFilterKey(name),
  );
  if (unknown.length > 0) {
    throw validationError(
      unknown.map(name => ({
        field: name,
        message: 'unknown query parameter; use limit, cursor, status or metadata.<key>',
      })),
    );
  }
  const parsed = ListJobsQuerySchema.safeParse(query);
  if (!parsed.success) {
    throw validationError(
      parsed.error.issues.map(issue => ({field: issue.path.join('.'), message: issue.message})),
    );
  }
  const filters = metadataFilterFrom(query);
  if (filters.length > 1)
    throw validationError([{field: 'metadata', message: 'filter on one metadata key at a time'}]);
  const page = await listJobs(ctx.services, {
    limit: parsed.data.limit ?? 20,
    ...(parsed.data.cursor ? {cursor: parsed.data.cursor} : {}),
    ...(parsed.data.status ? {status: parsed.data.status} : {}),
    ...(filters[0] ? {metadata: filters[0]} : {}),
  });
  const jobs = await Promise.all(page.jobs.map(job => jobView(job, ctx.links)));
  sendJson(ctx.res, 200, {jobs, next_cursor: page.nextCursor});
};

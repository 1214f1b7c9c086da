import type {IncomingMessage, ServerResponse} from 'node:http';
import type {z} from 'zod';
import type {Config} from '../config';
import type {ErrorCode} from '../core/errors';
import type {DecodedBase64} from '../core/image-bytes';
import type {ImageProvider, MetadataStore, ObjectStore} from '../core/ports';
import type {IdempotentGenerator} from '../core/usecases/idempotency';
import type {ReconcileReport} from '../core/usecases/reconcile';
import type {Requester} from '../core/requester';
import type {Logger} from '../logger';
import type {JsonPath} from './json-base64';
import type {ImageLinker} from './urls';

/** What the routes use, built once per instance by the composition root. */
export interface AppServices {
  config: Config;
  logger: Logger;
  provider: ImageProvider;
  /** Built on first use: in GCP mode that loads the Google Cloud clients. */
  readonly objects: ObjectStore;
  readonly metadata: MetadataStore;
  readonly generator: IdempotentGenerator;
  /** One pass of the reconciler over the stores (each repair is logged). */
  reconcile(options: {scope: 'recent' | 'full'; limit: number}): Promise<ReconcileReport>;
  /** The clock: what is retired, and quota days, depend on it. */
  now: () => Date;
  /** What the stores are, known without building them. */
  storeKinds: {storage: 'local' | 'gcs'; metadata: 'local' | 'firestore'};
}

export type Method = 'GET' | 'HEAD' | 'POST' | 'DELETE';

/** A response a route documents: a JSON schema, other media types, or no body. */
export interface ResponseSpec {
  description: string;
  schema?: z.ZodType;
  /** Media types of a non-JSON body (served as is). */
  mediaTypes?: string[];
  /** The same response as Server-Sent Events (text/event-stream): each event's name and data. */
  events?: EventSpecs;
}

/** Server-Sent Events by name: what each means and the JSON its data holds. */
export type EventSpecs = Record<string, {description: string; schema: z.ZodType}>;

/**
 * A request body: the schema documents it; `parse` validates the JSON object
 * the body reader gives and gives what the handler gets. JSON is always taken
 * (application/json, any application/*+json, or no Content-Type at all).
 */
export interface BodySpec<B> {
  schema: z.ZodType;
  /** `decoded`: the base64 values `base64At` picked out, by the token each left in `body`. */
  parse(body: unknown, decoded?: DecodedBase64): B;
  /**
   * Where the JSON carries large base64 values (images): each string value at
   * such a path is decoded as the body arrives, never held as text (see
   * json-base64.ts), and stands in the parsed body as a token.
   */
  base64At?: (path: JsonPath) => boolean;
  /** The most bytes a body may have, in any media type; MAX_BODY_BYTES when not given. */
  maxBytes?: (config: Config) => number;
  /**
   * Media types besides JSON, by name (e.g. multipart/form-data): each read
   * from the wire by its reader, once its type, coding and declared length
   * are checked. Any other type is 415.
   */
  streamed?: Record<string, StreamedBodySpec<B>>;
  /** The prompts a body carries: with LOG_PROMPTS=false no log line shows them, error messages included. */
  prompts?(body: B): string[];
}

/** A body the route's own reader takes off the wire as it arrives, within `maxBytes`. */
export interface StreamedBodySpec<B> {
  /** What the OpenAPI document shows for this media type. */
  schema: z.ZodType;
  read(req: IncomingMessage, maxBytes: number): Promise<B>;
}

export interface RouteContext<P, Q, H, B> {
  /** The request; its body is unread unless the route has a body spec (then it is in `body`). */
  req: IncomingMessage;
  res: ServerResponse;
  params: P;
  query: Q;
  headers: H;
  body: B;
  /** Who is asking; routes open to everyone (probes) get an anonymous requester. */
  requester: Requester;
  services: AppServices;
  log: Logger;
  /** Labels for the access log line (job and image ids, upstream time). */
  labels: Record<string, string>;
  links: ImageLinker;
}

/**
 * Everything about one operation, in one place: routing, request validation,
 * the responses and error codes it may give, and so its OpenAPI entry.
 */
export interface Route<P = any, Q = any, H = any, B = any> {
  method: Method;
  /** An OpenAPI path template, e.g. /jobs/{id}; a trailing slash is tolerated. */
  path: string;
  operationId: string;
  summary: string;
  /** Open without an API key (health probes, the API description). */
  open?: boolean;
  /** Also answers, without a key, a URL this function signed for the image named by the `id` parameter. */
  signedUrls?: boolean;
  params?: z.ZodType<P>;
  query?: z.ZodType<Q>;
  /** Request headers, by their canonical names. */
  headers?: z.ZodType<H>;
  body?: BodySpec<B>;
  responses: Record<number, ResponseSpec>;
  /** Error codes this operation may answer with, besides those every route may give. */
  errors: readonly ErrorCode[];
  handle(ctx: RouteContext<P, Q, H, B>): Promise<void>;
}

/** Keeps each route's parameter, query, header and body types tied to its handler. */
export function defineRoute<P = undefined, Q = undefined, H = undefined, B = undefined>(
  route: Route<P, Q, H, B>,
): Route<P, Q, H, B> {
  return route;
}

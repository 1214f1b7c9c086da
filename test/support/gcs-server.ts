/**
 * An in-process fake of the Cloud Storage JSON API for tests, spoken to over real HTTP by the
 * real `@google-cloud/storage` client (checked against v8.4).
 *
 * Client construction that works (this is what `storageClientFor` builds):
 *
 *   new Storage({
 *     apiEndpoint: server.url,           // 'http://127.0.0.1:PORT', no '/storage/v1' suffix
 *     projectId: 'test-project',         // no project-id lookup through google-auth-library
 *     retryOptions: {autoRetry: false},  // optional; fail fast on injected faults
 *   });
 *
 * - No credentials are needed. An apiEndpoint other than https://storage.googleapis.com counts as a
 *   custom endpoint: JSON calls (teeny-request) skip google-auth-library, and resumable uploads
 *   (gaxios) use plain `gaxios` because 127.0.0.1 is not a googleapis.com host. Only
 *   `useAuthWithCustomEndpoint: true` would turn auth back on.
 * - Do NOT set STORAGE_EMULATOR_HOST at the same time. If it is set, it wins for JSON calls, and its
 *   value is used as the base URL *as is* (no '/storage/v1' added), while uploads still go to
 *   `apiEndpoint`. This server also accepts '/b/...' paths, so STORAGE_EMULATOR_HOST=server.url works.
 * - `retryOptions.maxRetries: 0` does NOT disable retries: the constructor treats 0 as "unset" and
 *   uses the default of 3. Use `autoRetry: false`. With retries on, each retry waits
 *   min(multiplier^n * 1 s + jitter, maxRetryDelay s), and maxRetryDelay must be >= 1 (see
 *   FAST_RETRY_OPTIONS), so every retry costs about a second.
 * - Under Jest the process needs `--experimental-vm-modules` (e.g. NODE_OPTIONS). Both HTTP stacks of
 *   the client (teeny-request and gaxios) load node-fetch v3, an ES module, via dynamic `import()`.
 *   Jest's CommonJS sandbox refuses that without the flag: "A dynamic import callback was invoked
 *   without --experimental-vm-modules". `storageClientFor` fails fast with a clear message instead.
 *
 * Supported: bucket get/list/insert; uploads (uploadType=media, multipart and resumable, with
 * chunked 308 "Resume Incomplete" handling); object get (metadata), download (alt=media and the
 * /download path, Range, x-goog-hash), patch, update (PUT), delete; list (prefix, delimiter,
 * maxResults, pageToken, startOffset, endOffset, includeTrailingDelimiter); preconditions;
 * `fields` partial responses; fault injection; V4 signed reads (below). Everything else (batch,
 * copy/rewrite, compose, ACLs, matchGlob, signed writes, ...) answers 501 with a JSON error (an XML
 * one for signed XML-API requests). Only the live generation of each object is kept.
 *
 * V4 signed URLs (XML API, `GET|HEAD /<bucket>/<object>?X-Goog-Algorithm=GOOG4-RSA-SHA256&...`):
 *
 * - Which host does the client sign? `file.getSignedUrl()` builds the URL on
 *   `cfg.host || cfg.cname || storage.apiEndpoint` (signer.js, getSignedUrl/getSignedUrlV4), and
 *   signs `host:<that URL's hostname>`. So a client built with `apiEndpoint: server.url` (as
 *   `storageClientFor` does) produces `http://127.0.0.1:PORT/<bucket>/<object>?...` which points
 *   straight at this server: no `cname`, `host` or URL rewriting is needed. The path is
 *   `/<bucket>/<encoded object>`; with `cname` it would be `/<object>` (no bucket), and
 *   `virtualHostedStyle` puts the bucket in the host name: neither is supported here.
 *   A client built for the real endpoint signs `host:storage.googleapis.com`; such a URL with only
 *   its scheme and host rewritten to this server is refused (403 SignatureDoesNotMatch), because
 *   the Host header the server receives is not the signed one. It verifies only if the request
 *   carries `Host: storage.googleapis.com`, as it would reaching GCS. So no `localSignedUrl`-style
 *   rewriting helper exists: build the signing client with `apiEndpoint: server.url` instead.
 * - The signed host is the URL's *hostname*: the client never signs a port (`URL.hostname`). Real
 *   GCS is only reached on default ports, where the Host header carries none, so the two agree.
 *   This server listens on a random port, so it drops the `:PORT` of the Host header it received
 *   before rebuilding `host:<...>`; everything else about the host must still match. That is the
 *   one liberty taken with the canonical request.
 * - Verification rebuilds the canonical request from what was received: the method (a GET-signed
 *   URL does not authorize HEAD; the method is part of the signed request), the canonical URI
 *   (`/<bucket>/<object name>` with each path segment percent-encoded except A-Z a-z 0-9 - . _ ~,
 *   the client's encoding), the canonical query (every parameter but X-Goog-Signature, names and
 *   values encoded the same way, '/' too, sorted by name), the canonical headers listed in
 *   X-Goog-SignedHeaders (values trimmed, inner whitespace runs collapsed), the signed-headers list
 *   and `UNSIGNED-PAYLOAD` (or the signed x-goog-content-sha256). The string to sign is
 *   `GOOG4-RSA-SHA256\n<X-Goog-Date>\n<credential scope>\n<hex sha256(canonical request)>`, and the
 *   hex X-Goog-Signature must be its RSA-SHA256 (PKCS#1 v1.5) signature by one of the keys given to
 *   `trustSigner()` for the credential's email.
 * - Errors are XML bodies as in the XML API (`<Error><Code>...</Code><Message>...</Message>
 *   <Details>...</Details></Error>`): malformed auth parameters 400 MalformedSecurityHeader; expired
 *   (now > X-Goog-Date + X-Goog-Expires, by the server clock, see `setClock`) 400 ExpiredToken;
 *   signer not trusted 403 AccessDenied; bad signature 403 SignatureDoesNotMatch (with
 *   <StringToSign> and <CanonicalRequest>, as GCS sends them); then 404 NoSuchBucket / NoSuchKey.
 *   On success the object is served like a media download (content-type, content-length, etag,
 *   x-goog-* headers, Range), honouring signed `generation`, `response-content-type` and
 *   `response-content-disposition` parameters. Signed reads count as op 'download' for faults.
 */
import {createHash, createPublicKey, randomUUID, verify as cryptoVerify, type KeyObject} from 'node:crypto';
import {createServer, type IncomingMessage, type ServerResponse} from 'node:http';
import vm from 'node:vm';
import {gunzipSync} from 'node:zlib';
import {CRC32C, Storage, type StorageOptions} from '@google-cloud/storage';
import {listenOnLoopback} from './loopback-server';

export type GcsOperation = 'upload' | 'download' | 'metadata' | 'patch' | 'delete' | 'list' | 'bucket';

export interface GcsFault {
  op: GcsOperation | 'any';
  /** Answer this HTTP status with a GCS JSON error body (default 503). */
  status?: number;
  /** Destroy the socket (TCP reset) instead of answering. */
  resetConnection?: boolean;
  /** Delay before handling; then answer normally unless status/resetConnection is given. */
  delayMs?: number;
  /** Only requests about an object whose name matches (requests without an object never match). */
  objectNameMatches?: RegExp;
}

export interface StoredObject {
  bucket: string;
  name: string;
  data: Buffer;
  contentType: string;
  metadata: Record<string, string>;
  generation: string;
  metageneration: string;
  md5Hash: string;
  crc32c: string;
  timeCreated: string;
  updated: string;
  cacheControl?: string;
  contentDisposition?: string;
  contentEncoding?: string;
  contentLanguage?: string;
}

export interface GcsTestServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  createBucket(name: string): void;
  /** A copy of the live object, or undefined. */
  getObject(bucket: string, name: string): StoredObject | undefined;
  /** Object names in GCS (UTF-8 byte) order. */
  listObjectNames(bucket: string, prefix?: string): string[];
  /** `times` defaults to 1. With `probability`, the fault fires with that chance on each matching
   *  request until clearFaults() (or until `times` firings, if `times` is also given). */
  injectFault(fault: GcsFault, opts?: {times?: number; probability?: number}): void;
  clearFaults(): void;
  /** HTTP requests received since start (or the last reset()), faulted ones included. */
  readonly requestCount: number;
  /**
   * Accept V4 signed URLs whose X-Goog-Credential names `clientEmail` and whose signature verifies
   * with this public key (SPKI/PKCS#1 PEM; a private key PEM works too). An email may have several
   * keys, like a service account. Trusted signers survive reset().
   */
  trustSigner(clientEmail: string, publicKeyPem: string): void;
  /**
   * The clock (ms since the epoch) used to check signed-URL expiry; undefined restores Date.now.
   * reset() restores it too. E.g. `server.setClock(() => Date.now() + 901_000)`.
   */
  setClock(now: (() => number) | undefined): void;
  /**
   * Deletes all objects and upload sessions (buckets and trusted signers stay), clears faults,
   * restores the real clock, zeroes requestCount.
   */
  reset(): void;
  close(): Promise<void>;
}

/**
 * Retries on, with the shortest back-off the client tolerates: about 1 s per retry. maxRetryDelay
 * must stay >= 1 (second): file.save() and resumable uploads hand `maxRetryDelay * 1000` to
 * async-retry as maxTimeout, and it throws "minTimeout is greater than maxTimeout" (minTimeout is
 * 1000 ms) on every save, even one that needs no retry.
 */
export const FAST_RETRY_OPTIONS = {
  autoRetry: true,
  maxRetries: 3,
  retryDelayMultiplier: 1,
  maxRetryDelay: 1,
  totalTimeout: 20,
} as const satisfies NonNullable<StorageOptions['retryOptions']>;

/**
 * A real Storage client pointed at the server (see the header comment). Retries are off unless
 * `options.retryOptions` says otherwise (e.g. `{retryOptions: FAST_RETRY_OPTIONS}`).
 */
export function storageClientFor(
  server: GcsTestServer,
  options: Omit<StorageOptions, 'apiEndpoint'> = {},
): Storage {
  if (
    process.env.JEST_WORKER_ID !== undefined &&
    typeof (vm as {SyntheticModule?: unknown}).SyntheticModule !== 'function'
  ) {
    throw new Error(
      'The @google-cloud/storage client cannot make HTTP requests under Jest without ' +
        '--experimental-vm-modules (its transports load node-fetch with a dynamic import()). ' +
        "Run Jest with NODE_OPTIONS='--experimental-vm-modules'.",
    );
  }
  return new Storage({
    projectId: 'test-project',
    retryOptions: {autoRetry: false},
    ...options,
    apiEndpoint: server.url,
  });
}

export async function startGcsTestServer(opts: {buckets?: string[]} = {}): Promise<GcsTestServer> {
  const server = new FakeGcs();
  await server.listen();
  for (const bucket of opts.buckets ?? []) server.createBucket(bucket);
  return server;
}

// ---------------------------------------------------------------------------------------------

const MAX_LIST_RESULTS = 1000;
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';

interface Preconditions {
  ifGenerationMatch?: string;
  ifGenerationNotMatch?: string;
  ifMetagenerationMatch?: string;
  ifMetagenerationNotMatch?: string;
}

/** Writable object fields as they come from a JSON resource (upload metadata, patch, update). */
interface ObjectFields {
  contentType?: string;
  metadata: Record<string, string>;
  cacheControl?: string;
  contentDisposition?: string;
  contentEncoding?: string;
  contentLanguage?: string;
  md5Hash?: string;
  crc32c?: string;
}

interface BucketState {
  name: string;
  timeCreated: string;
  objects: Map<string, StoredObject>;
}

interface UploadSession {
  id: string;
  bucket: string;
  name: string;
  fields: ObjectFields;
  preconditions: Preconditions;
  declaredSize?: number;
  chunks: Buffer[];
  received: number;
  result?: StoredObject;
}

interface ActiveFault {
  fault: GcsFault;
  remaining: number;
  probability?: number;
}

type Handler =
  | 'bucketList'
  | 'bucketInsert'
  | 'bucketGet'
  | 'objectList'
  | 'objectInsert'
  | 'objectGet'
  | 'objectPatch'
  | 'objectUpdate'
  | 'objectDelete'
  | 'resumableChunk'
  | 'resumableCancel'
  | 'signedRead'
  | 'unsupported';

interface Route {
  handler: Handler;
  op?: GcsOperation;
  /** 'xml': a V4-signed XML API request (errors are XML bodies). */
  api: 'json' | 'upload' | 'download' | 'xml';
  bucket?: string;
  object?: string;
  unsupportedMessage?: string;
}

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  route: Route;
  query: URLSearchParams;
  /** The query string as received, without the '?'. */
  rawQuery: string;
  body: Buffer;
}

class GcsHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string = reasonFor(status),
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

function reasonFor(status: number): string {
  switch (status) {
    case 400:
      return 'invalid';
    case 401:
      return 'required';
    case 403:
      return 'forbidden';
    case 404:
      return 'notFound';
    case 409:
      return 'conflict';
    case 412:
      return 'conditionNotMet';
    case 416:
      return 'requestedRangeNotSatisfiable';
    case 429:
      return 'rateLimitExceeded';
    case 501:
      return 'notImplemented';
    default:
      return status >= 500 ? 'backendError' : 'invalid';
  }
}

function errorBody(status: number, message: string, reason: string): string {
  return JSON.stringify({error: {code: status, message, errors: [{message, domain: 'global', reason}]}});
}

const noSuchObject = (bucket: string, name: string) =>
  new GcsHttpError(404, `No such object: ${bucket}/${name}`, 'notFound');
const noSuchBucket = () => new GcsHttpError(404, 'The specified bucket does not exist.', 'notFound');
const conditionNotMet = () =>
  new GcsHttpError(412, 'At least one of the pre-conditions you specified did not hold.', 'conditionNotMet');
const badRequest = (message: string, reason = 'invalid') => new GcsHttpError(400, message, reason);

function md5Of(data: Buffer): string {
  return createHash('md5').update(data).digest('base64');
}

function crc32cOf(data: Buffer): string {
  const crc = new CRC32C();
  crc.update(data);
  return crc.toString();
}

/** GCS orders names by their UTF-8 bytes. */
function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function decodeSegment(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw badRequest(`Invalid percent-encoding in path: ${raw}`);
  }
}

/** Object sub-resources this server does not implement (GET/POST .../o/NAME/<sub>...). */
const OBJECT_SUBRESOURCES = new Set([
  'acl',
  'compose',
  'copyTo',
  'rewriteTo',
  'moveTo',
  'restore',
  'retention',
]);

/** Query parameter names that make a request a V4-signed XML API request (GCS matches them case-insensitively). */
const SIGNED_QUERY_MARKERS = new Set(['x-goog-algorithm', 'x-goog-credential', 'x-goog-signature']);

function isSignedXmlRequest(query: URLSearchParams): boolean {
  for (const key of query.keys()) if (SIGNED_QUERY_MARKERS.has(key.toLowerCase())) return true;
  return false;
}

/** `/<bucket>/<object>` with the object's name decoded (invalid escapes end up as a 400 in the handler). */
function signedXmlRoute(method: string, rawPath: string): Route {
  const m = /^\/([^/]+)\/(.+)$/.exec(rawPath);
  if (!m) {
    return {
      handler: 'unsupported',
      api: 'xml',
      unsupportedMessage: `The GCS test server serves signed URLs for objects only, not ${method} ${rawPath}`,
    };
  }
  if (method !== 'GET' && method !== 'HEAD') {
    return {
      handler: 'unsupported',
      api: 'xml',
      unsupportedMessage: `The GCS test server serves signed GET and HEAD only, not ${method}`,
    };
  }
  let bucket: string;
  let object: string;
  try {
    bucket = decodeURIComponent(m[1] ?? '');
    object = decodeURIComponent(m[2] ?? '');
  } catch {
    return {handler: 'signedRead', op: 'download', api: 'xml'}; // no bucket/object: the handler answers 400
  }
  return {handler: 'signedRead', op: 'download', api: 'xml', bucket, object};
}

function route(method: string, rawPath: string, query: URLSearchParams): Route {
  if (isSignedXmlRequest(query)) return signedXmlRoute(method, rawPath);
  const unsupported = (message: string): Route => ({
    handler: 'unsupported',
    api: 'json',
    unsupportedMessage: message,
  });
  let api: Route['api'] = 'json';
  let rest: string;
  if (rawPath.startsWith('/storage/v1/')) rest = rawPath.slice('/storage/v1'.length);
  else if (rawPath.startsWith('/upload/storage/v1/')) {
    api = 'upload';
    rest = rawPath.slice('/upload/storage/v1'.length);
  } else if (rawPath.startsWith('/download/storage/v1/')) {
    api = 'download';
    rest = rawPath.slice('/download/storage/v1'.length);
  } else if (rawPath.startsWith('/batch/')) {
    return unsupported(
      'Batch requests are not supported by the GCS test server; send the requests one by one.',
    );
  } else if (rawPath === '/b' || rawPath.startsWith('/b/')) {
    rest = rawPath; // STORAGE_EMULATOR_HOST-style base URL without '/storage/v1'
  } else {
    return unsupported(`The GCS test server does not serve ${method} ${rawPath}`);
  }
  const notHere = unsupported(`The GCS test server does not support ${method} ${rawPath}`);

  if (rest === '/b') {
    if (api !== 'json') return notHere;
    if (method === 'GET') return {handler: 'bucketList', op: 'bucket', api};
    if (method === 'POST') return {handler: 'bucketInsert', op: 'bucket', api};
    return notHere;
  }
  const m = /^\/b\/([^/]+)(\/o(?:\/(.*))?)?$/.exec(rest);
  if (!m) return notHere;
  const bucket = decodeSegment(m[1] ?? '');
  const hasO = m[2] !== undefined;
  const rawObject = m[3];

  if (!hasO) {
    if (api === 'json' && method === 'GET') return {handler: 'bucketGet', op: 'bucket', api, bucket};
    return notHere;
  }
  if (rawObject === undefined || rawObject === '') {
    if (api === 'upload') {
      const uploadId = query.get('upload_id');
      if (uploadId !== null) {
        if (method === 'PUT' || method === 'POST')
          return {handler: 'resumableChunk', op: 'upload', api, bucket};
        if (method === 'DELETE') return {handler: 'resumableCancel', op: 'upload', api, bucket};
        return notHere;
      }
      if (method === 'POST')
        return {handler: 'objectInsert', op: 'upload', api, bucket, object: query.get('name') ?? undefined};
      return notHere;
    }
    if (api === 'json' && method === 'GET') return {handler: 'objectList', op: 'list', api, bucket};
    if (api === 'json' && method === 'POST')
      return {handler: 'objectInsert', op: 'upload', api, bucket, object: query.get('name') ?? undefined};
    return notHere;
  }
  if (api === 'upload') return notHere;
  const slash = rawObject.indexOf('/');
  if (slash >= 0 && OBJECT_SUBRESOURCES.has(rawObject.slice(slash + 1).split('/')[0] ?? '')) {
    return unsupported(
      `The GCS test server does not support ${method} on object sub-resource '${rawObject.slice(slash + 1)}'`,
    );
  }
  const object = decodeSegment(rawObject);
  if (api === 'download') {
    if (method === 'GET' || method === 'HEAD')
      return {handler: 'objectGet', op: 'download', api, bucket, object};
    return notHere;
  }
  switch (method) {
    case 'GET':
    case 'HEAD':
      return {
        handler: 'objectGet',
        op: query.get('alt') === 'media' ? 'download' : 'metadata',
        api,
        bucket,
        object,
      };
    case 'PATCH':
      return {handler: 'objectPatch', op: 'patch', api, bucket, object};
    case 'PUT':
      return {handler: 'objectUpdate', op: 'patch', api, bucket, object};
    case 'DELETE':
      return {handler: 'objectDelete', op: 'delete', api, bucket, object};
    default:
      return notHere;
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
    req.on('close', () => {
      if (!req.complete) reject(new Error('request aborted'));
    });
  });
}

function preconditionsFrom(query: URLSearchParams): Preconditions {
  const p: Preconditions = {};
  for (const key of [
    'ifGenerationMatch',
    'ifGenerationNotMatch',
    'ifMetagenerationMatch',
    'ifMetagenerationNotMatch',
  ] as const) {
    const value = query.get(key);
    if (value === null) continue;
    if (!/^\d+$/.test(value)) throw badRequest(`Invalid value for ${key}: ${value}`);
    p[key] = value;
  }
  return p;
}

/**
 * Throws 412 when a precondition fails (or 304 for a failed *NotMatch on reads, as GCS does).
 * `existing` is the live object or undefined.
 */
function checkPreconditions(p: Preconditions, existing: StoredObject | undefined, isRead = false): void {
  const notMatchFailure = () =>
    isRead ? new GcsHttpError(304, 'Not Modified', 'notModified') : conditionNotMet();
  if (p.ifGenerationMatch !== undefined) {
    const ok =
      p.ifGenerationMatch === '0' ? existing === undefined : existing?.generation === p.ifGenerationMatch;
    if (!ok) throw conditionNotMet();
  }
  if (p.ifGenerationNotMatch !== undefined) {
    const fails =
      p.ifGenerationNotMatch === '0'
        ? existing === undefined
        : existing?.generation === p.ifGenerationNotMatch;
    if (fails) throw notMatchFailure();
  }
  if (p.ifMetagenerationMatch !== undefined && existing?.metageneration !== p.ifMetagenerationMatch) {
    throw conditionNotMet();
  }
  if (p.ifMetagenerationNotMatch !== undefined && existing?.metageneration === p.ifMetagenerationNotMatch) {
    throw notMatchFailure();
  }
}

function parseJsonObject(body: Buffer, what: string): Record<string, unknown> {
  if (body.length === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw badRequest(`${what} is not valid JSON`, 'parseError');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw badRequest(`${what} must be a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

const STRING_FIELDS = [
  'contentType',
  'cacheControl',
  'contentDisposition',
  'contentEncoding',
  'contentLanguage',
] as const;
type StringField = (typeof STRING_FIELDS)[number];

function optionalString(resource: Record<string, unknown>, key: string): string | null | undefined {
  const value = resource[key];
  if (value === undefined || value === null) return value;
  if (typeof value !== 'string') throw badRequest(`Invalid value for ${key}: expected a string`);
  return value;
}

function metadataValues(value: unknown): Record<string, string | null> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw badRequest('Invalid value for metadata: expected an object');
  }
  const out: Record<string, string | null> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v === null) out[k] = null;
    else if (typeof v === 'object') throw badRequest(`Invalid value for metadata.${k}`);
    else out[k] = String(v);
  }
  return out;
}

/** Fields of an object resource sent with an upload (nulls are ignored, like GCS). */
function fieldsFromResource(resource: Record<string, unknown>): ObjectFields {
  const fields: ObjectFields = {metadata: {}};
  for (const key of STRING_FIELDS) {
    const v = optionalString(resource, key);
    if (typeof v === 'string') fields[key] = v;
  }
  for (const key of ['md5Hash', 'crc32c'] as const) {
    const v = optionalString(resource, key);
    if (typeof v === 'string') fields[key] = v;
  }
  if (resource.metadata !== undefined && resource.metadata !== null) {
    for (const [k, v] of Object.entries(metadataValues(resource.metadata)))
      if (v !== null) fields.metadata[k] = v;
  }
  return fields;
}

function parseGoogHash(header: string | string[] | undefined): {md5?: string; crc32c?: string} {
  const out: {md5?: string; crc32c?: string} = {};
  const value = Array.isArray(header) ? header.join(',') : header;
  for (const pair of (value ?? '').split(',')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    const type = pair.slice(0, eq).trim().toLowerCase();
    const hash = pair.slice(eq + 1).trim();
    if (type === 'md5') out.md5 = hash;
    if (type === 'crc32c') out.crc32c = hash;
  }
  return out;
}

/** Splits a multipart/related body into its parts. */
function parseMultipart(
  body: Buffer,
  contentType: string,
): Array<{headers: Record<string, string>; data: Buffer}> {
  const m = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  const boundary = m?.[1] ?? m?.[2];
  if (!boundary) throw badRequest('Multipart upload without a boundary in Content-Type');
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  const buf = Buffer.concat([Buffer.from('\r\n'), body]);
  const parts: Array<{headers: Record<string, string>; data: Buffer}> = [];
  let pos = buf.indexOf(delimiter);
  if (pos < 0) throw badRequest('Malformed multipart body: no boundary found');
  for (;;) {
    let start = pos + delimiter.length;
    if (buf.subarray(start, start + 2).toString() === '--') break; // closing delimiter
    const lineEnd = buf.indexOf('\r\n', start);
    if (lineEnd < 0) throw badRequest('Malformed multipart body');
    start = lineEnd + 2;
    const headerEnd = buf.indexOf('\r\n\r\n', start - 2);
    if (headerEnd < 0) throw badRequest('Malformed multipart body: part without headers');
    const headers: Record<string, string> = {};
    for (const line of buf.subarray(start, headerEnd).toString('utf8').split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const next = buf.indexOf(delimiter, headerEnd + 4);
    if (next < 0) throw badRequest('Malformed multipart body: missing closing boundary');
    parts.push({headers, data: buf.subarray(Math.min(headerEnd + 4, next), next)});
    pos = next;
  }
  return parts;
}

// --- `fields` partial responses -------------------------------------------------------------

type FieldTree = Map<string, FieldTree | null>;

function parseFields(spec: string): FieldTree {
  let i = 0;
  const parseList = (): FieldTree => {
    const tree: FieldTree = new Map();
    for (;;) {
      const path: string[] = [];
      let name = '';
      while (i < spec.length && !',()'.includes(spec[i] ?? '')) {
        const ch = spec[i++] ?? '';
        if (ch === '/') {
          path.push(name.trim());
          name = '';
        } else name += ch;
      }
      path.push(name.trim());
      let sub: FieldTree | null = null;
      if (spec[i] === '(') {
        i++;
        sub = parseList();
        if (spec[i] !== ')') throw badRequest(`Invalid fields parameter: ${spec}`);
        i++;
      }
      if (path.some(p => p === '')) throw badRequest(`Invalid fields parameter: ${spec}`);
      let node = tree;
      path.forEach((segment, idx) => {
        const last = idx === path.length - 1;
        const existing = node.get(segment);
        if (last) {
          if (existing === undefined) node.set(segment, sub);
          else if (existing === null || sub === null) node.set(segment, null);
          else node.set(segment, mergeTrees(existing, sub));
        } else {
          if (existing === null) return; // already selecting the whole sub-object
          const child = existing ?? new Map();
          node.set(segment, child);
          node = child;
        }
      });
      if (spec[i] === ',') {
        i++;
        continue;
      }
      return tree;
    }
  };
  const tree = parseList();
  if (i !== spec.length) throw badRequest(`Invalid fields parameter: ${spec}`);
  return tree;
}

function mergeTrees(a: FieldTree, b: FieldTree): FieldTree {
  const out: FieldTree = new Map(a);
  for (const [k, v] of b) {
    const prev = out.get(k);
    out.set(k, prev === null || v === null ? null : prev === undefined ? v : mergeTrees(prev, v));
  }
  return out;
}

function selectFields(value: unknown, tree: FieldTree): unknown {
  if (Array.isArray(value)) return value.map(v => selectFields(v, tree));
  if (value === null || typeof value !== 'object') return value;
  const src = value as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [key, sub] of tree) {
    const keys = key === '*' ? Object.keys(src) : [key];
    for (const k of keys) {
      if (!(k in src)) continue;
      out[k] = sub === null ? src[k] : selectFields(src[k], sub);
    }
  }
  return out;
}

// --- V4 signed URLs (XML API) ----------------------------------------------------------------

/** An XML API error: `<Error><Code>code</Code><Message>..</Message><Details>..</Details>...</Error>`. */
class XmlApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: string,
    /** Further elements, in order (e.g. ParameterName, StringToSign, CanonicalRequest). */
    readonly extra: ReadonlyArray<readonly [string, string]> = [],
  ) {
    super(message);
  }
}

const MAX_SIGNED_URL_EXPIRES = 7 * 24 * 60 * 60;

const malformed = (parameter: string, details: string) =>
  new XmlApiError(400, 'MalformedSecurityHeader', 'Your request has a malformed header.', details, [
    ['ParameterName', parameter],
  ]);

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, c => `&#${c.charCodeAt(0)};`);
}

function xmlErrorBody(err: XmlApiError): string {
  const elements: Array<readonly [string, string]> = [
    ['Code', err.code],
    ['Message', err.message],
  ];
  if (err.details !== undefined) elements.push(['Details', err.details]);
  elements.push(...err.extra);
  return `<?xml version='1.0' encoding='UTF-8'?><Error>${elements.map(([k, v]) => `<${k}>${escapeXml(v)}</${k}>`).join('')}</Error>`;
}

/** The XML API's view of an error raised by the shared JSON-API code (ranges, injected faults). */
function xmlErrorFrom(err: GcsHttpError): XmlApiError {
  const codes: Record<number, [string, string]> = {
    400: ['InvalidArgument', 'Invalid argument.'],
    403: ['AccessDenied', 'Access denied.'],
    404: ['NoSuchKey', 'The specified key does not exist.'],
    412: ['PreconditionFailed', 'At least one of the pre-conditions you specified did not hold.'],
    416: ['InvalidRange', 'The requested range cannot be satisfied.'],
    429: ['SlowDown', 'Please reduce your request rate.'],
    501: ['NotImplemented', 'A header or query you provided requested a function that is not implemented.'],
    503: ['ServiceUnavailable', 'Service unavailable.'],
  };
  const [code, message] =
    codes[err.status] ??
    (err.status >= 500 ? ['InternalError', 'Internal error.'] : ['InvalidArgument', 'Invalid argument.']);
  return new XmlApiError(err.status, code, message, err.message);
}

/** RFC 3986 encoding as the client does it for V4 (util.js fixedEncodeURIComponent): all but A-Z a-z 0-9 - . _ ~. */
function encodeStrict(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, c => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** Splits a raw query string into decoded [name, value] pairs; '+' is a literal plus (the client encodes spaces as %20). */
function parseRawQuery(raw: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  for (const part of raw.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const rawName = eq < 0 ? part : part.slice(0, eq);
    const rawValue = eq < 0 ? '' : part.slice(eq + 1);
    try {
      pairs.push([decodeURIComponent(rawName), decodeURIComponent(rawValue)]);
    } catch {
      throw new XmlApiError(
        400,
        'InvalidArgument',
        'Invalid argument.',
        `Invalid percent-encoding in query parameter ${rawName}`,
      );
    }
  }
  return pairs;
}

/** `20240102T030405Z` to ms since the epoch, or undefined. */
function parseGoogDate(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, se);
  const back = new Date(ms);
  if (back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d || h > 23 || mi > 59 || se > 59)
    return undefined;
  return ms;
}

/** The canonical value of a header: trimmed, runs of whitespace collapsed to one space. */
function canonicalHeaderValue(value: string): string {
  return value.trim().replace(/\s{2,}/g, ' ');
}

/** The Host header without its port, as the client signs it (`new URL(endpoint).hostname`). */
function signedHostOf(hostHeader: string): string {
  const m = /^(\[[^\]]*\]|[^:]*)(?::\d*)?$/.exec(hostHeader.trim());
  return (m?.[1] ?? hostHeader).toLowerCase();
}

interface SignedRequestAuth {
  clientEmail: string;
  /** Decoded query parameters other than the X-Goog-* authentication ones. */
  params: Map<string, string>;
}

// ---------------------------------------------------------------------------------------------

class FakeGcs implements GcsTestServer {
  private readonly http = createServer((req, res) => void this.onRequest(req, res));
  private destroyConnections: () => void = () => undefined;
  private readonly buckets = new Map<string, BucketState>();
  private readonly sessions = new Map<string, UploadSession>();
  private faults: ActiveFault[] = [];
  private readonly sleepers = new Set<{timer: NodeJS.Timeout; resolve: () => void}>();
  private lastGeneration = 0;
  private count = 0;
  private closed = false;
  private baseUrl = '';
  private readonly signers = new Map<string, KeyObject[]>();
  private now: () => number = Date.now;

  get url(): string {
    return this.baseUrl;
  }

  get requestCount(): number {
    return this.count;
  }

  async listen(): Promise<void> {
    // The client pools keep-alive sockets: never close them from this side.
    const listener = await listenOnLoopback(this.http, {noIdleTimeout: true});
    this.baseUrl = listener.origin;
    this.destroyConnections = listener.destroyConnections;
  }

  createBucket(name: string): void {
    if (!name || name.includes('/')) throw new Error(`Invalid bucket name: ${JSON.stringify(name)}`);
    if (!this.buckets.has(name)) {
      this.buckets.set(name, {name, timeCreated: new Date().toISOString(), objects: new Map()});
    }
  }

  getObject(bucket: string, name: string): StoredObject | undefined {
    const o = this.buckets.get(bucket)?.objects.get(name);
    return o ? {...o, metadata: {...o.metadata}} : undefined;
  }

  listObjectNames(bucket: string, prefix = ''): string[] {
    const objects = this.buckets.get(bucket)?.objects;
    if (!objects) return [];
    return [...objects.keys()].filter(n => n.startsWith(prefix)).sort(compareNames);
  }

  injectFault(fault: GcsFault, opts: {times?: number; probability?: number} = {}): void {
    const {times, probability} = opts;
    if (times !== undefined && !(Number.isInteger(times) && times >= 1)) {
      throw new Error(`times must be a positive integer, got ${times}`);
    }
    if (probability !== undefined && !(probability > 0 && probability <= 1)) {
      throw new Error(`probability must be in (0, 1], got ${probability}`);
    }
    if (
      fault.status !== undefined &&
      !(Number.isInteger(fault.status) && fault.status >= 400 && fault.status <= 599)
    ) {
      throw new Error(`status must be an HTTP error status, got ${fault.status}`);
    }
    const remaining = times ?? (probability === undefined ? 1 : Number.POSITIVE_INFINITY);
    this.faults.push(probability === undefined ? {fault, remaining} : {fault, remaining, probability});
  }

  clearFaults(): void {
    this.faults = [];
  }

  trustSigner(clientEmail: string, publicKeyPem: string): void {
    if (!clientEmail) throw new Error('trustSigner needs a client email');
    const key = createPublicKey(publicKeyPem);
    if (key.asymmetricKeyType !== 'rsa')
      throw new Error(`trustSigner needs an RSA key, got ${key.asymmetricKeyType}`);
    const keys = this.signers.get(clientEmail) ?? [];
    keys.push(key);
    this.signers.set(clientEmail, keys);
  }

  setClock(now: (() => number) | undefined): void {
    this.now = now ?? Date.now;
  }

  reset(): void {
    for (const bucket of this.buckets.values()) bucket.objects.clear();
    this.sessions.clear();
    this.clearFaults();
    this.now = Date.now;
    this.count = 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sleepers) {
      clearTimeout(s.timer);
      s.resolve();
    }
    this.sleepers.clear();
    const done = new Promise<void>(resolve => this.http.close(() => resolve()));
    this.http.closeAllConnections();
    this.destroyConnections();
    await done;
  }

  // --- plumbing ------------------------------------------------------------------------------

  private sleep(ms: number): Promise<void> {
    return new Promise(resolve => {
      const entry = {
        timer: setTimeout(() => {
          this.sleepers.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      this.sleepers.add(entry);
    });
  }

  private takeFault(op: GcsOperation | undefined, objectName: string | undefined): GcsFault | undefined {
    for (const active of this.faults) {
      const {fault} = active;
      if (fault.op !== 'any' && fault.op !== op) continue;
      if (fault.objectNameMatches) {
        if (objectName === undefined) continue;
        fault.objectNameMatches.lastIndex = 0;
        if (!fault.objectNameMatches.test(objectName)) continue;
      }
      if (active.probability !== undefined && Math.random() >= active.probability) continue;
      active.remaining -= 1;
      if (active.remaining <= 0) this.faults = this.faults.filter(f => f !== active);
      return fault;
    }
    return undefined;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.count += 1;
    let api: Route['api'] = 'json';
    try {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const method = (req.method ?? 'GET').toUpperCase();
      const r = route(method, url.pathname, url.searchParams);
      api = r.api;

      let objectName = r.object;
      if (r.handler === 'resumableChunk' || r.handler === 'resumableCancel') {
        objectName =
          this.sessions.get(url.searchParams.get('upload_id') ?? '')?.name ??
          url.searchParams.get('name') ??
          undefined;
      }
      const fault = this.takeFault(r.op, objectName);
      if (fault) {
        if (fault.delayMs) await this.sleep(fault.delayMs);
        if (this.closed || res.destroyed) return;
        if (fault.resetConnection) {
          req.socket.resetAndDestroy();
          return;
        }
        if (fault.status !== undefined || !fault.delayMs) {
          await readBody(req);
          const status = fault.status ?? 503;
          throw new GcsHttpError(status, `Injected fault: HTTP ${status} for ${method} ${url.pathname}`);
        }
      }

      const body = await readBody(req);
      if (this.closed || res.destroyed) return;
      const rawQuery = url.search.slice(1);
      await this.dispatch({req, res, route: r, query: url.searchParams, rawQuery, body});
    } catch (err) {
      if (res.headersSent || res.destroyed) {
        res.destroy();
        return;
      }
      if (err instanceof XmlApiError) {
        this.sendXmlError(res, err);
      } else if (api === 'xml' && err instanceof GcsHttpError && err.status !== 304) {
        this.sendXmlError(res, xmlErrorFrom(err), err.headers);
      } else if (
        api === 'xml' &&
        !(err instanceof GcsHttpError) &&
        !(err instanceof Error && err.message === 'request aborted')
      ) {
        this.sendXmlError(
          res,
          new XmlApiError(
            500,
            'InternalError',
            'Internal error.',
            `GCS test server error: ${String(err instanceof Error ? err.stack : err)}`,
          ),
        );
      } else if (err instanceof GcsHttpError) {
        this.sendError(res, err);
      } else if (!(err instanceof Error && err.message === 'request aborted')) {
        this.sendError(
          res,
          new GcsHttpError(500, `GCS test server error: ${String(err instanceof Error ? err.stack : err)}`),
        );
      }
    }
  }

  private sendError(res: ServerResponse, err: GcsHttpError): void {
    if (err.status === 304) {
      res.writeHead(304, err.headers);
      res.end();
      return;
    }
    this.sendJson(res, err.status, JSON.parse(errorBody(err.status, err.message, err.reason)), err.headers);
  }

  private sendXmlError(res: ServerResponse, err: XmlApiError, headers: Record<string, string> = {}): void {
    const payload = Buffer.from(xmlErrorBody(err));
    res.writeHead(err.status, {
      'content-type': 'application/xml; charset=UTF-8',
      'content-length': String(payload.length),
      ...headers,
    });
    res.end(payload);
  }

  private sendJson(
    res: ServerResponse,
    status: number,
    value: unknown,
    headers: Record<string, string> = {},
  ): void {
    const payload = Buffer.from(JSON.stringify(value));
    res.writeHead(status, {
      'content-type': 'application/json; charset=UTF-8',
      'content-length': String(payload.length),
      ...headers,
    });
    res.end(payload);
  }

  private sendResource(ctx: Ctx, status: number, value: unknown, headers: Record<string, string> = {}): void {
    const fields = ctx.query.get('fields');
    this.sendJson(ctx.res, status, fields ? selectFields(value, parseFields(fields)) : value, headers);
  }

  private bucketOrThrow(name: string | undefined): BucketState {
    const bucket = name === undefined ? undefined : this.buckets.get(name);
    if (!bucket) throw noSuchBucket();
    return bucket;
  }

  private liveObject(ctx: Ctx): StoredObject {
    const bucket = this.bucketOrThrow(ctx.route.bucket);
    const name = ctx.route.object ?? '';
    const obj = bucket.objects.get(name);
    const generation = ctx.query.get('generation');
    if (!obj || (generation !== null && generation !== obj.generation)) throw noSuchObject(bucket.name, name);
    return obj;
  }

  private nextGeneration(): string {
    this.lastGeneration = Math.max(Date.now() * 1000, this.lastGeneration + 1);
    return String(this.lastGeneration);
  }

  private bucketResource(b: BucketState): Record<string, unknown> {
    return {
      kind: 'storage#bucket',
      selfLink: `${this.baseUrl}/storage/v1/b/${encodeURIComponent(b.name)}`,
      id: b.name,
      name: b.name,
      projectNumber: '0',
      metageneration: '1',
      location: 'US',
      locationType: 'multi-region',
      storageClass: 'STANDARD',
      etag: 'CAE=',
      timeCreated: b.timeCreated,
      updated: b.timeCreated,
    };
  }

  private objectResource(o: StoredObject): Record<string, unknown> {
    const path = `b/${encodeURIComponent(o.bucket)}/o/${encodeURIComponent(o.name)}`;
    const r: Record<string, unknown> = {
      kind: 'storage#object',
      id: `${o.bucket}/${o.name}/${o.generation}`,
      selfLink: `${this.baseUrl}/storage/v1/${path}`,
      mediaLink: `${this.baseUrl}/download/storage/v1/${path}?generation=${o.generation}&alt=media`,
      name: o.name,
      bucket: o.bucket,
      generation: o.generation,
      metageneration: o.metageneration,
      contentType: o.contentType,
      storageClass: 'STANDARD',
      size: String(o.data.length),
      md5Hash: o.md5Hash,
      crc32c: o.crc32c,
      etag: etagOf(o),
      timeCreated: o.timeCreated,
      updated: o.updated,
      timeStorageClassUpdated: o.timeCreated,
    };
    for (const key of ['cacheControl', 'contentDisposition', 'contentEncoding', 'contentLanguage'] as const) {
      if (o[key] !== undefined) r[key] = o[key];
    }
    if (Object.keys(o.metadata).length > 0) r.metadata = {...o.metadata};
    return r;
  }

  // --- handlers ------------------------------------------------------------------------------

  private async dispatch(ctx: Ctx): Promise<void> {
    switch (ctx.route.handler) {
      case 'bucketList':
        return this.sendResource(ctx, 200, {
          kind: 'storage#buckets',
          items: [...this.buckets.values()]
            .sort((a, b) => compareNames(a.name, b.name))
            .map(b => this.bucketResource(b)),
        });
      case 'bucketInsert': {
        const resource = parseJsonObject(ctx.body, 'Bucket resource');
        const name = resource.name;
        if (typeof name !== 'string' || !name) throw badRequest('Required field: name', 'required');
        if (this.buckets.has(name)) {
          throw new GcsHttpError(
            409,
            'Your previous request to create the named bucket succeeded and you already own it.',
            'conflict',
          );
        }
        this.createBucket(name);
        return this.sendResource(ctx, 200, this.bucketResource(this.bucketOrThrow(name)));
      }
      case 'bucketGet':
        return this.sendResource(ctx, 200, this.bucketResource(this.bucketOrThrow(ctx.route.bucket)));
      case 'objectList':
        return this.list(ctx);
      case 'objectInsert':
        return this.insert(ctx);
      case 'objectGet':
        return this.get(ctx);
      case 'objectPatch':
      case 'objectUpdate':
        return this.patch(ctx, ctx.route.handler === 'objectUpdate');
      case 'objectDelete': {
        const obj = this.liveObject(ctx);
        checkPreconditions(preconditionsFrom(ctx.query), obj);
        this.bucketOrThrow(obj.bucket).objects.delete(obj.name);
        ctx.res.writeHead(204, {'content-length': '0'});
        ctx.res.end();
        return;
      }
      case 'resumableChunk':
        return this.resumableChunk(ctx);
      case 'resumableCancel': {
        const id = ctx.query.get('upload_id') ?? '';
        if (!this.sessions.delete(id))
          throw new GcsHttpError(404, `No such upload session: ${id}`, 'notFound');
        ctx.res.writeHead(499, {'content-length': '0'});
        ctx.res.end();
        return;
      }
      case 'signedRead':
        return this.signedRead(ctx);
      case 'unsupported':
        throw new GcsHttpError(
          501,
          ctx.route.unsupportedMessage ?? 'Not implemented by the GCS test server',
          'notImplemented',
        );
    }
  }

  private get(ctx: Ctx): void {
    const obj = this.liveObject(ctx);
    checkPreconditions(preconditionsFrom(ctx.query), obj, true);
    const wantsMedia = ctx.route.api === 'download' || ctx.query.get('alt') === 'media';
    if (!wantsMedia) return this.sendResource(ctx, 200, this.objectResource(obj));
    this.sendMedia(ctx, obj);
  }

  /** A signed XML API read: authenticate (see the header comment), then serve the object. */
  private signedRead(ctx: Ctx): void {
    const {route: r} = ctx;
    if (r.bucket === undefined || r.object === undefined) {
      throw new XmlApiError(
        400,
        'InvalidArgument',
        'Invalid argument.',
        `Invalid percent-encoding in path: ${ctx.req.url}`,
      );
    }
    const auth = this.authenticateSigned(ctx, r.bucket, r.object);
    const bucket = this.buckets.get(r.bucket);
    if (!bucket) throw new XmlApiError(404, 'NoSuchBucket', 'The specified bucket does not exist.');
    const obj = bucket.objects.get(r.object);
    const generation = auth.params.get('generation');
    if (!obj || (generation !== undefined && generation !== obj.generation)) {
      throw new XmlApiError(
        404,
        'NoSuchKey',
        'The specified key does not exist.',
        `No such object: ${r.bucket}/${r.object}`,
      );
    }
    const overrides: Record<string, string> = {};
    const responseType = auth.params.get('response-content-type');
    const responseDisposition = auth.params.get('response-content-disposition');
    if (responseType !== undefined) overrides['content-type'] = responseType;
    if (responseDisposition !== undefined) overrides['content-disposition'] = responseDisposition;
    this.sendMedia(ctx, obj, overrides);
  }

  /**
   * Checks a V4 query-string signature the way GCS does and returns the signer and the remaining
   * query parameters, or throws the XML API error GCS would answer.
   */
  private authenticateSigned(ctx: Ctx, bucket: string, objectName: string): SignedRequestAuth {
    const {req} = ctx;
    const pairs = parseRawQuery(ctx.rawQuery);
    const single = (name: string): string | undefined => {
      const found = pairs.filter(([k]) => k.toLowerCase() === name.toLowerCase());
      if (found.length > 1) throw malformed(name, `The query parameter ${name} was given more than once.`);
      return found[0]?.[1];
    };
    const required = (name: string): string => {
      const value = single(name);
      if (value === undefined || value === '')
        throw malformed(name, `Missing required query parameter ${name}.`);
      return value;
    };

    const algorithm = required('X-Goog-Algorithm');
    if (algorithm === 'GOOG4-HMAC-SHA256') {
      throw new XmlApiError(
        501,
        'NotImplemented',
        'Not implemented.',
        'The GCS test server checks RSA (service account) signatures only, not HMAC keys.',
      );
    }
    if (algorithm !== 'GOOG4-RSA-SHA256')
      throw malformed('X-Goog-Algorithm', `Unsupported signing algorithm: ${algorithm}`);

    const date = required('X-Goog-Date');
    const dateMs = parseGoogDate(date);
    if (dateMs === undefined)
      throw malformed('X-Goog-Date', `Invalid X-Goog-Date (expected YYYYMMDD'T'HHMMSS'Z'): ${date}`);

    const expiresRaw = required('X-Goog-Expires');
    const expires = /^\d+$/.test(expiresRaw) ? Number(expiresRaw) : Number.NaN;
    if (!(expires >= 1 && expires <= MAX_SIGNED_URL_EXPIRES)) {
      throw malformed(
        'X-Goog-Expires',
        `X-Goog-Expires must be an integer from 1 to ${MAX_SIGNED_URL_EXPIRES}, got ${expiresRaw}`,
      );
    }

    const credential = required('X-Goog-Credential');
    const parts = credential.split('/');
    const [clientEmail, scopeDate, location, service, requestType] = parts;
    if (
      parts.length !== 5 ||
      !clientEmail ||
      !location ||
      service !== 'storage' ||
      requestType !== 'goog4_request'
    ) {
      throw malformed(
        'X-Goog-Credential',
        `Invalid credential (expected <email>/<YYYYMMDD>/<location>/storage/goog4_request): ${credential}`,
      );
    }
    if (scopeDate !== date.slice(0, 8)) {
      throw malformed(
        'X-Goog-Credential',
        `The credential's date ${scopeDate} does not match X-Goog-Date ${date}`,
      );
    }
    const credentialScope = parts.slice(1).join('/');

    const signedHeadersParam = required('X-Goog-SignedHeaders');
    const signedHeaders = signedHeadersParam.split(';');
    if (signedHeaders.some(h => h === '' || h !== h.toLowerCase())) {
      throw malformed('X-Goog-SignedHeaders', `Invalid X-Goog-SignedHeaders: ${signedHeadersParam}`);
    }
    if (!signedHeaders.includes('host'))
      throw malformed('X-Goog-SignedHeaders', 'X-Goog-SignedHeaders must include host.');

    const signatureHex = required('X-Goog-Signature');
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(signatureHex))
      throw malformed('X-Goog-Signature', 'Signature was not hex encoded.');

    const headerLines = [...signedHeaders].sort().map(name => {
      const raw = req.headers[name];
      if (raw === undefined) {
        throw malformed(name, 'Header was included in signedheaders, but not in the request.');
      }
      const value = Array.isArray(raw) ? raw.join(',') : raw;
      return `${name}:${canonicalHeaderValue(name === 'host' ? signedHostOf(value) : value)}\n`;
    });

    // Authentication proper: the validity window, then the signature.
    const expiresAtMs = dateMs + expires * 1000;
    if (this.now() > expiresAtMs) {
      throw new XmlApiError(
        400,
        'ExpiredToken',
        'The provided token has expired.',
        `Request signature expired at: ${new Date(expiresAtMs).toISOString()}`,
      );
    }
    const keys = this.signers.get(clientEmail);
    if (!keys) {
      throw new XmlApiError(
        403,
        'AccessDenied',
        'Access denied.',
        `The GCS test server does not trust signer ${clientEmail}; call trustSigner() with its public key.`,
      );
    }

    const canonicalQuery = pairs
      .filter(([k]) => k.toLowerCase() !== 'x-goog-signature')
      .map(([k, v]) => [encodeStrict(k), encodeStrict(v)] as const)
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
      .map(([k, v]) => `${k}=${v}`)
      .join('&');
    const canonicalUri = `/${bucket}/${objectName.split('/').map(encodeStrict).join('/')}`;
    const contentSha = signedHeaders.includes('x-goog-content-sha256')
      ? String(req.headers['x-goog-content-sha256'])
      : 'UNSIGNED-PAYLOAD';
    const canonicalRequest = [
      (req.method ?? 'GET').toUpperCase(),
      canonicalUri,
      canonicalQuery,
      headerLines.join(''),
      signedHeadersParam,
      contentSha,
    ].join('\n');
    const stringToSign = [
      'GOOG4-RSA-SHA256',
      date,
      credentialScope,
      createHash('sha256').update(canonicalRequest).digest('hex'),
    ].join('\n');
    const signature = Buffer.from(signatureHex, 'hex');
    if (!keys.some(key => cryptoVerify('sha256', Buffer.from(stringToSign, 'utf8'), key, signature))) {
      throw new XmlApiError(
        403,
        'SignatureDoesNotMatch',
        'Access denied.',
        'The request signature we calculated does not match the signature you provided. Check your Google secret key and signing method.',
        [
          ['StringToSign', stringToSign],
          ['CanonicalRequest', canonicalRequest],
        ],
      );
    }

    const authParams = new Set([
      'x-goog-algorithm',
      'x-goog-credential',
      'x-goog-date',
      'x-goog-expires',
      'x-goog-signedheaders',
      'x-goog-signature',
    ]);
    const params = new Map(pairs.filter(([k]) => !authParams.has(k.toLowerCase())));
    return {clientEmail, params};
  }

  /** Answers a media download of `obj` (Range, gzip transcoding, x-goog-* headers). */
  private sendMedia(ctx: Ctx, obj: StoredObject, overrides: Record<string, string> = {}): void {
    const {req, res} = ctx;
    const headers: Record<string, string> = {
      'content-type': obj.contentType,
      'x-goog-hash': `crc32c=${obj.crc32c},md5=${obj.md5Hash}`,
      'x-goog-generation': obj.generation,
      'x-goog-metageneration': obj.metageneration,
      'x-goog-stored-content-length': String(obj.data.length),
      'x-goog-stored-content-encoding': obj.contentEncoding ?? 'identity',
      'x-goog-storage-class': 'STANDARD',
      etag: `"${Buffer.from(obj.md5Hash, 'base64').toString('hex')}"`,
      'last-modified': new Date(obj.updated).toUTCString(),
      'cache-control': obj.cacheControl ?? 'private, max-age=0',
      'accept-ranges': 'bytes',
    };
    if (obj.contentDisposition !== undefined) headers['content-disposition'] = obj.contentDisposition;
    if (obj.contentLanguage !== undefined) headers['content-language'] = obj.contentLanguage;
    Object.assign(headers, overrides);
    const send = (status: number, data: Buffer) => {
      headers['content-length'] = String(data.length);
      res.writeHead(status, headers);
      res.end(req.method === 'HEAD' ? undefined : data);
    };

    if (obj.contentEncoding === 'gzip') {
      const accepted = String(req.headers['accept-encoding'] ?? '');
      if (/\bgzip\b/i.test(accepted)) {
        headers['content-encoding'] = 'gzip';
        return send(200, obj.data); // served as stored; the client validates, then gunzips
      }
      // Decompressive transcoding: Range is ignored, like GCS.
      let plain: Buffer;
      try {
        plain = gunzipSync(obj.data);
      } catch {
        plain = obj.data;
      }
      delete headers['x-goog-hash'];
      return send(200, plain);
    }

    const size = obj.data.length;
    const range = parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      throw new GcsHttpError(
        416,
        'The requested range cannot be satisfied.',
        'requestedRangeNotSatisfiable',
        {
          'content-range': `bytes */${size}`,
        },
      );
    }
    if (range === undefined) return send(200, obj.data);
    headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
    return send(206, obj.data.subarray(range.start, range.end + 1));
  }

  private patch(ctx: Ctx, replace: boolean): void {
    const obj = this.liveObject(ctx);
    checkPreconditions(preconditionsFrom(ctx.query), obj);
    const resource = parseJsonObject(ctx.body, 'Object resource');
    for (const key of ['name', 'bucket'] as const) {
      const v = resource[key];
      if (v !== undefined && v !== obj[key])
        throw badRequest(`The ${key} of an object cannot be changed by ${ctx.req.method}`);
    }
    // Validate everything before touching the stored object.
    const strings: Partial<Record<StringField, string | null | undefined>> = {};
    for (const key of STRING_FIELDS) strings[key] = optionalString(resource, key);
    const metadata =
      resource.metadata === undefined || resource.metadata === null
        ? resource.metadata
        : metadataValues(resource.metadata);

    const next: StoredObject = {...obj, metadata: replace ? {} : {...obj.metadata}};
    for (const key of STRING_FIELDS) {
      const v = strings[key];
      if (v === undefined && !replace) continue;
      if (key === 'contentType') next.contentType = v ?? DEFAULT_CONTENT_TYPE;
      else if (v === undefined || v === null) delete next[key];
      else next[key] = v;
    }
    if (metadata === null) next.metadata = {};
    else if (metadata !== undefined) {
      for (const [k, v] of Object.entries(metadata)) {
        if (v === null) delete next.metadata[k];
        else next.metadata[k] = v;
      }
    }
    next.metageneration = String(Number(obj.metageneration) + 1);
    next.updated = new Date().toISOString();
    this.bucketOrThrow(obj.bucket).objects.set(obj.name, next);
    this.sendResource(ctx, 200, this.objectResource(next));
  }

  private list(ctx: Ctx): void {
    const bucket = this.bucketOrThrow(ctx.route.bucket);
    const q = ctx.query;
    if (q.get('matchGlob') !== null) {
      throw new GcsHttpError(
        501,
        'The GCS test server does not support matchGlob; use prefix/delimiter',
        'notImplemented',
      );
    }
    const prefix = q.get('prefix') ?? '';
    const delimiter = q.get('delimiter') ?? '';
    const startOffset = q.get('startOffset');
    const endOffset = q.get('endOffset');
    const includeTrailingDelimiter = q.get('includeTrailingDelimiter') === 'true';
    const maxResultsRaw = q.get('maxResults');
    let maxResults = MAX_LIST_RESULTS;
    if (maxResultsRaw !== null) {
      if (!/^\d+$/.test(maxResultsRaw) || Number(maxResultsRaw) < 1)
        throw badRequest(`Invalid value for maxResults: ${maxResultsRaw}`);
      maxResults = Math.min(Number(maxResultsRaw), MAX_LIST_RESULTS);
    }
    let after: string | undefined;
    const token = q.get('pageToken');
    if (token) {
      try {
        const decoded = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as unknown;
        if (
          typeof decoded !== 'object' ||
          decoded === null ||
          typeof (decoded as {after?: unknown}).after !== 'string'
        )
          throw new Error();
        after = (decoded as {after: string}).after;
      } catch {
        throw badRequest(`Invalid pageToken: ${token}`);
      }
    }

    const names = [...bucket.objects.keys()]
      .filter(
        n =>
          n.startsWith(prefix) &&
          (startOffset === null || compareNames(n, startOffset) >= 0) &&
          (endOffset === null || compareNames(n, endOffset) < 0),
      )
      .sort(compareNames);

    // One entry per object, or per rolled-up prefix. Names sharing a rolled-up prefix are
    // contiguous in sorted order and sort after it, so entry keys are strictly increasing.
    interface Entry {
      key: string;
      item?: StoredObject;
      prefix?: string;
    }
    const entries: Entry[] = [];
    for (const name of names) {
      const obj = bucket.objects.get(name);
      if (!obj) continue;
      const cut = delimiter ? name.indexOf(delimiter, prefix.length) : -1;
      if (cut < 0) {
        entries.push({key: name, item: obj});
        continue;
      }
      const rolled = name.slice(0, cut + delimiter.length);
      const last = entries[entries.length - 1];
      const entry = last?.prefix === rolled ? last : {key: rolled, prefix: rolled};
      if (entry !== last) entries.push(entry);
      if (includeTrailingDelimiter && name === rolled) entry.item = obj;
    }
    const start = after === undefined ? 0 : entries.findIndex(e => compareNames(e.key, after) > 0);
    const page = start < 0 ? [] : entries.slice(start, start + maxResults);
    const items = page.filter(e => e.item).map(e => this.objectResource(e.item as StoredObject));
    const prefixes = page.filter(e => e.prefix !== undefined).map(e => e.prefix as string);
    const response: Record<string, unknown> = {kind: 'storage#objects'};
    const lastEntry = page[page.length - 1];
    if (start >= 0 && lastEntry && start + page.length < entries.length) {
      response.nextPageToken = Buffer.from(JSON.stringify({after: lastEntry.key})).toString('base64url');
    }
    if (prefixes.length > 0) response.prefixes = prefixes;
    if (items.length > 0) response.items = items;
    this.sendResource(ctx, 200, response);
  }

  private insert(ctx: Ctx): void {
    const bucket = this.bucketOrThrow(ctx.route.bucket);
    const {req, query, body} = ctx;
    const uploadType = query.get('uploadType');
    const preconditions = preconditionsFrom(query);
    const requestType = String(req.headers['content-type'] ?? '');
    const requireName = (name: unknown): string => {
      if (typeof name !== 'string' || name === '') throw badRequest('Required parameter: name', 'required');
      return name;
    };

    switch (uploadType) {
      case 'media': {
        const name = requireName(query.get('name'));
        const fields: ObjectFields = {metadata: {}, contentType: requestType || DEFAULT_CONTENT_TYPE};
        const contentEncoding = query.get('contentEncoding');
        if (contentEncoding) fields.contentEncoding = contentEncoding;
        this.commit(ctx, bucket, name, body, fields, preconditions);
        return;
      }
      case 'multipart': {
        if (!/^multipart\//i.test(requestType))
          throw badRequest(`Multipart upload with Content-Type ${requestType}`);
        const parts = parseMultipart(body, requestType);
        const [metaPart, mediaPart] = parts;
        if (parts.length !== 2 || !metaPart || !mediaPart) {
          throw badRequest(
            `Multipart upload must have exactly 2 parts (metadata, media), got ${parts.length}`,
          );
        }
        const resource = parseJsonObject(metaPart.data, 'Multipart metadata part');
        const fields = fieldsFromResource(resource);
        fields.contentType ??= mediaPart.headers['content-type'] || DEFAULT_CONTENT_TYPE;
        const name = requireName(query.get('name') ?? resource.name);
        this.commit(ctx, bucket, name, mediaPart.data, fields, preconditions);
        return;
      }
      case 'resumable': {
        const resource = parseJsonObject(body, 'Resumable upload metadata');
        const name = requireName(query.get('name') ?? resource.name);
        const fields = fieldsFromResource(resource);
        const headerType = req.headers['x-upload-content-type'];
        if (typeof headerType === 'string' && headerType) fields.contentType = headerType;
        checkPreconditions(preconditions, bucket.objects.get(name));
        const session: UploadSession = {
          id: randomUUID(),
          bucket: bucket.name,
          name,
          fields,
          preconditions,
          chunks: [],
          received: 0,
        };
        const declared = req.headers['x-upload-content-length'];
        if (typeof declared === 'string' && /^\d+$/.test(declared)) session.declaredSize = Number(declared);
        this.sessions.set(session.id, session);
        const location =
          `${this.baseUrl}/upload/storage/v1/b/${encodeURIComponent(bucket.name)}/o` +
          `?uploadType=resumable&name=${encodeURIComponent(name)}&upload_id=${session.id}`;
        ctx.res.writeHead(200, {location, 'x-guploader-uploadid': session.id, 'content-length': '0'});
        ctx.res.end();
        return;
      }
      case null: {
        if (ctx.route.api === 'upload')
          throw badRequest('Upload requests must include an uploadType parameter', 'required');
        // JSON-API insert with only a resource: an empty object.
        const resource = parseJsonObject(body, 'Object resource');
        const name = requireName(query.get('name') ?? resource.name);
        const fields = fieldsFromResource(resource);
        this.commit(ctx, bucket, name, Buffer.alloc(0), fields, preconditions);
        return;
      }
      default:
        throw badRequest(`Unsupported uploadType: ${uploadType}`);
    }
  }

  private resumableChunk(ctx: Ctx): void {
    const {req, res, query, body} = ctx;
    const id = query.get('upload_id') ?? '';
    const session = this.sessions.get(id);
    if (!session) throw new GcsHttpError(404, `No such upload session: ${id}`, 'notFound');
    if (session.result) return this.sendResource(ctx, 200, this.objectResource(session.result));

    const rangeHeader = req.headers['content-range'];
    let start = session.received;
    let end: number | '*' = '*';
    let total: number | '*' = '*';
    let statusQuery = false;
    if (rangeHeader !== undefined) {
      const m = /^bytes\s+(?:(\*)|(\d+)-(-1|\d+|\*))\/(\d+|\*)$/.exec(rangeHeader.trim());
      if (!m) throw badRequest(`Invalid Content-Range: ${rangeHeader}`);
      total = m[4] === '*' ? '*' : Number(m[4]);
      if (m[1] === '*') statusQuery = true;
      else {
        start = Number(m[2]);
        end = m[3] === '*' ? '*' : Number(m[3]);
      }
    } else {
      total = session.received + body.length; // no Content-Range: this request completes the upload
    }

    if (statusQuery) {
      if (body.length > 0) throw badRequest('Content-Range "bytes */N" must come with an empty body');
      if (total !== '*' && session.received === total) return this.finalize(ctx, session);
      if (total !== '*' && session.received > total)
        throw badRequest(`Upload already has ${session.received} bytes, more than ${total}`);
      return this.resumeIncomplete(res, session);
    }
    if (end !== '*' && end !== -1 && end < start) throw badRequest(`Invalid Content-Range: ${rangeHeader}`);
    const expectedLength = end === '*' ? body.length : end - start + 1;
    if (body.length !== expectedLength) {
      throw badRequest(
        `Content-Range ${rangeHeader} announces ${expectedLength} bytes but the body has ${body.length}`,
      );
    }
    if (start > session.received) {
      throw badRequest(`Content-Range starts at ${start} but only ${session.received} bytes were persisted`);
    }
    const fresh = body.subarray(Math.min(session.received - start, body.length));
    if (fresh.length > 0) {
      session.chunks.push(Buffer.from(fresh));
      session.received += fresh.length;
    }
    if (total !== '*') {
      if (session.received > total)
        throw badRequest(`Upload has ${session.received} bytes, more than the declared ${total}`);
      if (session.received === total) return this.finalize(ctx, session);
      return this.resumeIncomplete(res, session);
    }
    // Unknown total: "bytes N-*/*" (the client's single-request mode) ends the upload; a chunk with a
    // known end ("bytes N-M/*") leaves it open.
    if (end === '*') return this.finalize(ctx, session);
    return this.resumeIncomplete(res, session);
  }

  private resumeIncomplete(res: ServerResponse, session: UploadSession): void {
    const headers: Record<string, string> = {'content-length': '0', 'x-guploader-uploadid': session.id};
    if (session.received > 0) headers.range = `bytes=0-${session.received - 1}`;
    res.writeHead(308, 'Resume Incomplete', headers); // no Location header, or fetch implementations would follow it
    res.end();
  }

  private finalize(ctx: Ctx, session: UploadSession): void {
    const data = Buffer.concat(session.chunks);
    if (session.declaredSize !== undefined && session.declaredSize !== data.length) {
      throw badRequest(
        `X-Upload-Content-Length was ${session.declaredSize} but ${data.length} bytes were uploaded`,
      );
    }
    const bucket = this.bucketOrThrow(session.bucket);
    const stored = this.commit(ctx, bucket, session.name, data, session.fields, session.preconditions);
    session.result = stored;
    session.chunks = [];
  }

  /** Checks preconditions and hashes, stores the object and answers 200 with its resource. */
  private commit(
    ctx: Ctx,
    bucket: BucketState,
    name: string,
    data: Buffer,
    fields: ObjectFields,
    preconditions: Preconditions,
  ): StoredObject {
    if (Buffer.byteLength(name, 'utf8') > 1024) throw badRequest('Object name is longer than 1024 bytes');
    checkPreconditions(preconditions, bucket.objects.get(name));
    const md5Hash = md5Of(data);
    const crc32c = crc32cOf(data);
    const claimed = parseGoogHash(ctx.req.headers['x-goog-hash']);
    const claimedMd5 = fields.md5Hash ?? claimed.md5;
    const claimedCrc = fields.crc32c ?? claimed.crc32c;
    if (claimedMd5 !== undefined && claimedMd5 !== md5Hash) {
      throw badRequest(`Provided MD5 hash "${claimedMd5}" doesn't match calculated MD5 hash "${md5Hash}".`);
    }
    if (claimedCrc !== undefined && claimedCrc !== crc32c) {
      throw badRequest(`Provided CRC32C "${claimedCrc}" doesn't match calculated CRC32C "${crc32c}".`);
    }
    const now = new Date().toISOString();
    const stored: StoredObject = {
      bucket: bucket.name,
      name,
      data,
      contentType: fields.contentType ?? DEFAULT_CONTENT_TYPE,
      metadata: {...fields.metadata},
      generation: this.nextGeneration(),
      metageneration: '1',
      md5Hash,
      crc32c,
      timeCreated: now,
      updated: now,
    };
    for (const key of ['cacheControl', 'contentDisposition', 'contentEncoding', 'contentLanguage'] as const) {
      const v = fields[key];
      if (v !== undefined) stored[key] = v;
    }
    bucket.objects.set(name, stored);
    this.sendResource(ctx, 200, this.objectResource(stored));
    return stored;
  }
}

function etagOf(o: StoredObject): string {
  return Buffer.from(`${o.generation}/${o.metageneration}`).toString('base64');
}

/** Parses a single-range "bytes=" header; multi-range and malformed headers are ignored (full body). */
function parseRange(
  header: string | undefined,
  size: number,
): {start: number; end: number} | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  if (size === 0) return undefined; // nothing to slice: answer 200 with the empty body
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) return 'unsatisfiable';
    return {start: Math.max(0, size - suffix), end: size - 1};
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (m[2] !== '' && Number(m[2]) < start) return undefined;
  if (start >= size) return 'unsatisfiable';
  return {start, end};
}

/**
 * A Cloud Storage test server: the part of the JSON API (and of the XML API, for V4-signed reads)
 * that the project's `@google-cloud/storage` calls use, over real HTTP, with fault injection.
 * Checked against @google-cloud/storage 8.4.
 *
 * Served (JSON paths with the `/storage/v1` prefix, or without it, see STORAGE_EMULATOR_HOST below):
 *
 * - `file.save(data, {resumable: false})`: `POST /upload/storage/v1/b/B/o?uploadType=multipart&name=N`.
 *   The resource part may set contentType, cacheControl, contentDisposition, metadata and md5Hash (checked against the
 *   bytes: 400 on a mismatch). `ifGenerationMatch=0` makes the upload create-only (412 if the
 *   object exists); any other value must equal the live generation.
 * - `file.getMetadata()`: `GET .../b/B/o/N`; `file.createReadStream()`: `GET .../b/B/o/N?alt=media`
 *   (whole objects only, with the x-goog-hash the client validates); `file.delete()`:
 *   `DELETE .../b/B/o/N`. A missing object or bucket is 404.
 * - `bucket.getFiles()`: `GET .../b/B/o?prefix=&maxResults=&pageToken=`, in name order.
 * - `file.getSignedUrl({version: 'v4', action: 'read'})`, then a plain GET of the URL (below).
 *
 * Everything else answers 501, and so do query parameters and upload fields not listed above
 * (resumable uploads, `fields`, delimiters, patches, gzip, ranges, ...): a call the server does
 * not implement fails loudly instead of getting a plausible but wrong answer. Only the live
 * generation of an object is kept, and buckets exist from `startGcsTestServer({buckets})` on.
 *
 * Client construction that works (this is what `storageClientFor` builds):
 *
 *   new Storage({
 *     apiEndpoint: server.url,           // 'http://127.0.0.1:PORT', no '/storage/v1' suffix
 *     projectId: 'test-project',         // no project-id lookup through google-auth-library
 *     retryOptions: {autoRetry: false},  // optional; fail fast on injected faults
 *   });
 *
 * - No credentials are needed: an apiEndpoint other than https://storage.googleapis.com counts as
 *   a custom endpoint, and JSON calls to it skip google-auth-library.
 * - STORAGE_EMULATOR_HOST=server.url (how the function under test is pointed here) works too: the
 *   client then uses that value *as is* as the JSON base URL (paths start with '/b/'), while
 *   uploads still go to `${apiEndpoint}/upload/storage/v1`.
 * - `retryOptions.maxRetries: 0` does NOT disable retries: the constructor treats 0 as "unset" and
 *   uses the default of 3. Use `autoRetry: false`. With retries on, each retry waits
 *   min(multiplier^n * 1 s + jitter, maxRetryDelay s), and maxRetryDelay must be >= 1 (see
 *   FAST_RETRY_OPTIONS), so every retry costs about a second.
 * - Under Jest the process needs `--experimental-vm-modules`: the client's HTTP stack loads
 *   node-fetch v3, an ES module, with a dynamic `import()`, which Jest's CommonJS sandbox refuses
 *   without the flag. `storageClientFor` fails fast with a clear message instead.
 *
 * Faults (`injectFault`) are chosen per operation ('upload', 'download', 'metadata', 'delete',
 * 'list'; signed reads count as 'download') and optionally by object name. A fault answers an
 * error status, resets the connection, or hangs; `delayMs` holds the answer back first (a stall),
 * and `applyFirst` carries the request out before failing it, so a write lands while its answer
 * is lost. The client's own `timeout` option does not end a hang (its Node transport, node-fetch
 * v3, ignores it): only the caller's deadline, or close(), does.
 *
 * V4 signed URLs (XML API, `GET /<bucket>/<object>?X-Goog-Algorithm=GOOG4-RSA-SHA256&...`):
 *
 * - `file.getSignedUrl()` builds the URL on `storage.apiEndpoint` and signs
 *   `host:<that URL's hostname>`, so a client built with `apiEndpoint: server.url` (as
 *   `storageClientFor` does) produces `http://127.0.0.1:PORT/<bucket>/<object>?...`, pointing
 *   straight at this server. A URL signed for storage.googleapis.com and rewritten to this server
 *   is refused (403 SignatureDoesNotMatch): the Host header received is not the signed one.
 * - The client never signs a port (`URL.hostname`), and real GCS is reached on default ports, so
 *   the server drops the `:PORT` of the Host header before rebuilding `host:<...>`. That is the one
 *   liberty taken with the canonical request.
 * - Verification rebuilds the canonical request from what was received: the method (GET), the
 *   canonical URI (`/<bucket>/<object name>`, each path segment percent-encoded except A-Z a-z 0-9
 *   - . _ ~, as the client encodes it), the canonical query (every parameter but X-Goog-Signature,
 *   encoded the same way, sorted by name), `host:<host>`, `host` (the only header a signed read
 *   has; others are 501) and `UNSIGNED-PAYLOAD`. The hex X-Goog-Signature must be the RSA-SHA256
 *   signature of `GOOG4-RSA-SHA256\n<X-Goog-Date>\n<scope>\n<hex sha256(canonical request)>` by a
 *   key given to `trustSigner()` for the credential's email.
 * - Errors are XML API bodies (`<Error><Code>..</Code><Message>..</Message><Details>..</Details>`):
 *   malformed auth parameters 400 MalformedSecurityHeader; expired (now > X-Goog-Date +
 *   X-Goog-Expires, by the server clock, see `setClock`) 400 ExpiredToken; signer not trusted 403
 *   AccessDenied; bad signature 403 SignatureDoesNotMatch (with <StringToSign> and
 *   <CanonicalRequest>, as GCS sends them); then 404 NoSuchBucket / NoSuchKey. Signed parameters
 *   beyond authentication (response-content-type, generation, ...) and methods other than GET are
 *   501 NotImplemented. On success the object is served as by a media download.
 */
import {createHash, createPublicKey, verify as cryptoVerify, type KeyObject} from 'node:crypto';
import {createServer, type IncomingMessage, type ServerResponse} from 'node:http';
import {buffer} from 'node:stream/consumers';
import vm from 'node:vm';
import {CRC32C, Storage, type StorageOptions} from '@google-cloud/storage';
import {listenOnLoopback} from './loopback-server';

export type GcsOperation = 'upload' | 'download' | 'metadata' | 'delete' | 'list' | 'testPermissions';

/**
 * What goes wrong with a matching request. The answer is `status`, a connection reset or a hang
 * (at most one of them); with none of them it is a 503, unless the fault only delays.
 */
export interface GcsFault {
  op: GcsOperation;
  /** Only requests about an object whose name matches (listings never match). */
  objectNameMatches?: RegExp;
  /** Answer this HTTP error status with the API's error body. */
  status?: number;
  /** Destroy the socket (TCP reset) instead of answering. */
  resetConnection?: boolean;
  /** Never answer: the request stays open until the client gives up or the server closes. */
  hang?: boolean;
  /**
   * Stall this long before answering (alone: then answer normally). Without applyFirst the request
   * is carried out only after the stall, so a client that gives up first leaves no trace.
   */
  delayMs?: number;
  /**
   * Carry the request out first (the object is written or deleted), then fail as asked: the
   * operation took effect but the client cannot know it.
   */
  applyFirst?: boolean;
}

export interface StoredObject {
  bucket: string;
  name: string;
  data: Buffer;
  contentType: string;
  cacheControl?: string;
  contentDisposition?: string;
  metadata: Record<string, string>;
  generation: string;
  md5Hash: string;
  crc32c: string;
  timeCreated: string;
}

export interface GcsTestServer {
  /** http://127.0.0.1:PORT */
  readonly url: string;
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
  /** The runtime account lacks these on `bucket`: testPermissions leaves them out. reset() grants all. */
  denyPermissions(bucket: string, permissions: string[]): void;
  /** Deletes all objects (buckets and trusted signers stay), clears faults, restores the real
   *  clock, zeroes requestCount, grants every permission again. */
  reset(): void;
  /** Stops the server, ending open requests (hung ones included). */
  close(): Promise<void>;
}

/**
 * Retries on, with the shortest back-off the client tolerates: about 1 s per retry. maxRetryDelay
 * must stay >= 1 (second): file.save() hands `maxRetryDelay * 1000` to async-retry as maxTimeout,
 * and it throws "minTimeout is greater than maxTimeout" (minTimeout is 1000 ms) on every save,
 * even one that needs no retry.
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
  const server = new GcsServer(opts.buckets ?? []);
  await server.listen();
  return server;
}

// --- answers and errors ----------------------------------------------------------------------

const MAX_LIST_RESULTS = 1000;
const DEFAULT_CONTENT_TYPE = 'application/octet-stream';
const MAX_SIGNED_URL_EXPIRES = 7 * 24 * 60 * 60;

/** A whole answer, built before anything is sent so that a fault can still replace it. */
interface Reply {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/** Thrown to answer with an error reply. */
class Refusal extends Error {
  constructor(readonly reply: Reply) {
    super(`HTTP ${reply.status}`);
  }
}

function jsonReply(status: number, value: unknown): Reply {
  return {
    status,
    headers: {'content-type': 'application/json; charset=UTF-8'},
    body: Buffer.from(JSON.stringify(value)),
  };
}

/** The `reason` GCS puts in JSON errors; the client reads the status, callers sometimes the reason. */
const JSON_REASONS: Record<number, string> = {
  404: 'notFound',
  412: 'conditionNotMet',
  501: 'notImplemented',
};

function jsonError(status: number, message: string): Refusal {
  const reason = JSON_REASONS[status] ?? (status >= 500 ? 'backendError' : 'invalid');
  return new Refusal(
    jsonReply(status, {error: {code: status, message, errors: [{message, domain: 'global', reason}]}}),
  );
}

const notImplemented = (what: string) => jsonError(501, `The GCS test server does not implement ${what}`);

/** A refusal's reply; anything else is a bug here (or a request the server cannot parse): 500. */
function replyToError(err: unknown): Reply {
  if (err instanceof Refusal) return err.reply;
  return jsonError(500, `GCS test server error: ${String(err instanceof Error ? err.stack : err)}`).reply;
}

const noSuchObject = (bucket: string, name: string) => jsonError(404, `No such object: ${bucket}/${name}`);

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, c => `&#${c.charCodeAt(0)};`);
}

/** An XML API error: `<Error><Code>..</Code><Message>..</Message><Details>..</Details>...</Error>`. */
function xmlError(
  status: number,
  code: string,
  message: string,
  details?: string,
  /** Further elements, in order (e.g. ParameterName, StringToSign, CanonicalRequest). */
  extra: ReadonlyArray<readonly [string, string]> = [],
): Refusal {
  const elements: Array<readonly [string, string]> = [
    ['Code', code],
    ['Message', message],
  ];
  if (details !== undefined) elements.push(['Details', details]);
  elements.push(...extra);
  const xml = `<?xml version='1.0' encoding='UTF-8'?><Error>${elements.map(([k, v]) => `<${k}>${escapeXml(v)}</${k}>`).join('')}</Error>`;
  return new Refusal({
    status,
    headers: {'content-type': 'application/xml; charset=UTF-8'},
    body: Buffer.from(xml),
  });
}

function injectedError(api: Api, status: number, what: string): Refusal {
  const message = `Injected fault: HTTP ${status} for ${what}`;
  if (api === 'json') return jsonError(status, message);
  const code = status === 503 ? 'ServiceUnavailable' : status >= 500 ? 'InternalError' : 'InvalidArgument';
  return xmlError(status, code, message);
}

const xmlNotImplemented = (details: string) =>
  xmlError(
    501,
    'NotImplemented',
    'A header or query you provided requested a function that is not implemented.',
    `The GCS test server does not implement ${details}`,
  );

const malformed = (parameter: string, details: string) =>
  xmlError(400, 'MalformedSecurityHeader', 'Your request has a malformed header.', details, [
    ['ParameterName', parameter],
  ]);

// --- requests ----------------------------------------------------------------------------------

type Api = 'json' | 'xml';
type Handler = GcsOperation | 'signedRead';

interface ParsedRequest {
  handler: Handler;
  api: Api;
  bucket: string;
  object?: string;
  query: URLSearchParams;
}

/** Query parameters each JSON operation understands; any other one is refused with 501. */
const KNOWN_PARAMS: Record<GcsOperation, readonly string[]> = {
  upload: ['uploadType', 'name', 'ifGenerationMatch'],
  download: ['alt'],
  metadata: [],
  delete: [],
  list: ['prefix', 'maxResults', 'pageToken'],
  testPermissions: ['permissions'],
};

/** `<method> [/upload]/o[/N]` (the path after `/b/<bucket>`) to the operation. */
const JSON_ROUTES: Record<string, GcsOperation> = {
  'POST /upload/o': 'upload',
  'GET /o': 'list',
  'GET /o/N': 'metadata', // 'download' with alt=media
  'DELETE /o/N': 'delete',
};

/** Resource fields a multipart upload may set; any other one is refused with 501. */
const UPLOAD_FIELDS = new Set(['contentType', 'cacheControl', 'contentDisposition', 'metadata', 'md5Hash']);

/** Query parameters that make a request a V4-signed XML API request (matched case-insensitively). */
const SIGNED_QUERY_MARKERS = new Set(['x-goog-algorithm', 'x-goog-credential', 'x-goog-signature']);

function parseRequest(method: string, url: URL): ParsedRequest {
  const query = url.searchParams;
  const signed = [...query.keys()].some(key => SIGNED_QUERY_MARKERS.has(key.toLowerCase()));
  if (signed) {
    const m = /^\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (!m || method !== 'GET')
      throw xmlNotImplemented(`${method} ${url.pathname} (signed GETs of objects only)`);
    return {
      handler: 'signedRead',
      api: 'xml',
      bucket: decodeURIComponent(m[1] ?? ''),
      object: decodeURIComponent(m[2] ?? ''),
      query,
    };
  }

  const iam = /^(?:\/storage\/v1)?\/b\/([^/]+)\/iam\/testPermissions$/.exec(url.pathname);
  if (iam && method === 'GET') {
    for (const name of query.keys()) {
      if (!KNOWN_PARAMS.testPermissions.includes(name))
        throw notImplemented(`the query parameter '${name}' (testPermissions)`);
    }
    return {handler: 'testPermissions', api: 'json', bucket: decodeURIComponent(iam[1]!), query};
  }

  // '/storage/v1' is absent when the client's base URL is STORAGE_EMULATOR_HOST. An object name is
  // one encoded segment: a raw '/' after it would be a sub-resource (acl, copyTo, ...).
  const m = /^(?:(\/upload)\/storage\/v1|\/storage\/v1)?\/b\/([^/]+)\/o(?:\/([^/]+))?$/.exec(url.pathname);
  const [, upload = '', rawBucket = '', rawObject] = m ?? [];
  let handler = m ? JSON_ROUTES[`${method} ${upload}/o${rawObject === undefined ? '' : '/N'}`] : undefined;
  if (handler === 'metadata' && query.get('alt') === 'media') handler = 'download';
  if (!handler) throw notImplemented(`${method} ${url.pathname}`);
  for (const name of query.keys()) {
    if (!KNOWN_PARAMS[handler].includes(name))
      throw notImplemented(`the query parameter '${name}' (${handler})`);
  }
  return {
    handler,
    api: 'json',
    bucket: decodeURIComponent(rawBucket),
    object:
      handler === 'upload'
        ? (query.get('name') ?? undefined)
        : rawObject === undefined
          ? undefined
          : decodeURIComponent(rawObject),
    query,
  };
}

/** The bodies of a multipart/related upload's parts (the client sends the resource, then the media). */
function multipartBodies(body: Buffer, contentType: string): Buffer[] {
  const boundary = /boundary=([^;\s]+)/i.exec(contentType)?.[1] ?? '';
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  const buf = Buffer.concat([Buffer.from('\r\n'), body]);
  const parts: Buffer[] = [];
  // Each part sits between two delimiters, as "\r\n<headers>\r\n\r\n<body>"; the last delimiter
  // ends with "--" and has no part after it.
  for (let pos = buf.indexOf(delimiter), next; pos >= 0; pos = next) {
    next = buf.indexOf(delimiter, pos + delimiter.length);
    if (next < 0) break;
    const part = buf.subarray(pos + delimiter.length, next);
    parts.push(part.subarray(part.indexOf('\r\n\r\n') + 4));
  }
  return parts;
}

function stringField(resource: Record<string, unknown>, key: string): string | undefined {
  const value = resource[key];
  return typeof value === 'string' ? value : undefined;
}

/** Custom metadata values are strings in GCS; the client may send numbers, null means "none". */
function customMetadata(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(value ?? {})) if (v !== null) out[key] = String(v);
  return out;
}

/** GCS orders names by their UTF-8 bytes. */
function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

// --- V4 signature checks -------------------------------------------------------------------------

/** RFC 3986 encoding as the client does it for V4 (util.js fixedEncodeURIComponent): all but A-Z a-z 0-9 - . _ ~. */
function encodeStrict(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, c => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** `20240102T030405Z` to ms since the epoch, or undefined. */
function parseGoogDate(value: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value);
  if (!m) return undefined;
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  return Date.UTC(y, mo - 1, d, h, mi, se);
}

/** The Host header without its port, as the client signs it (`new URL(endpoint).hostname`). */
function signedHostOf(hostHeader: string): string {
  return hostHeader.trim().replace(/:\d*$/, '').toLowerCase();
}

const AUTH_PARAMS = new Set([
  'x-goog-algorithm',
  'x-goog-credential',
  'x-goog-date',
  'x-goog-expires',
  'x-goog-signedheaders',
  'x-goog-signature',
]);

// --- the server ------------------------------------------------------------------------------------

interface ActiveFault {
  fault: GcsFault;
  remaining: number;
  probability?: number;
}

class GcsServer implements GcsTestServer {
  private readonly http = createServer((req, res) => void this.onRequest(req, res));
  /** Bucket name to its objects by name. */
  private readonly buckets = new Map<string, Map<string, StoredObject>>();
  private faults: ActiveFault[] = [];
  /** Permissions testPermissions answers as not granted, per bucket (every other one is). */
  private readonly denied = new Map<string, Set<string>>();
  private lastGeneration = 0;
  private count = 0;
  private baseUrl = '';
  private readonly signers = new Map<string, KeyObject[]>();
  private now: () => number = Date.now;

  constructor(buckets: string[]) {
    for (const name of buckets) this.buckets.set(name, new Map());
  }

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
  }

  getObject(bucket: string, name: string): StoredObject | undefined {
    const o = this.buckets.get(bucket)?.get(name);
    return o ? {...o, metadata: {...o.metadata}} : undefined;
  }

  listObjectNames(bucket: string, prefix = ''): string[] {
    return [...(this.buckets.get(bucket)?.keys() ?? [])].filter(n => n.startsWith(prefix)).sort(compareNames);
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
    if ([fault.status !== undefined, fault.resetConnection, fault.hang].filter(Boolean).length > 1) {
      throw new Error('A fault answers one way: status, resetConnection or hang');
    }
    const remaining = times ?? (probability === undefined ? 1 : Number.POSITIVE_INFINITY);
    this.faults.push(probability === undefined ? {fault, remaining} : {fault, remaining, probability});
  }

  clearFaults(): void {
    this.faults = [];
  }

  trustSigner(clientEmail: string, publicKeyPem: string): void {
    const key = createPublicKey(publicKeyPem);
    this.signers.set(clientEmail, [...(this.signers.get(clientEmail) ?? []), key]);
  }

  setClock(now: (() => number) | undefined): void {
    this.now = now ?? Date.now;
  }

  denyPermissions(bucket: string, permissions: string[]): void {
    this.denied.set(bucket, new Set(permissions));
  }

  reset(): void {
    this.denied.clear();
    for (const objects of this.buckets.values()) objects.clear();
    this.clearFaults();
    this.now = Date.now;
    this.count = 0;
  }

  async close(): Promise<void> {
    const done = new Promise<void>(resolve => this.http.close(() => resolve()));
    this.http.closeAllConnections(); // hung requests included
    await done;
  }

  // --- plumbing ------------------------------------------------------------------------------

  private takeFault(request: ParsedRequest): GcsFault | undefined {
    const op: GcsOperation = request.handler === 'signedRead' ? 'download' : request.handler;
    for (const active of this.faults) {
      const {fault} = active;
      if (fault.op !== op) continue;
      // search() rather than test(): it ignores the lastIndex of a /g pattern.
      if (fault.objectNameMatches && (request.object?.search(fault.objectNameMatches) ?? -1) < 0) continue;
      if (active.probability !== undefined && Math.random() >= active.probability) continue;
      active.remaining -= 1;
      if (active.remaining <= 0) this.faults = this.faults.filter(f => f !== active);
      return fault;
    }
    return undefined;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.count += 1;
    const reply = await this.replyTo(req, res).catch(replyToError);
    if (!reply || res.destroyed) return;
    res.writeHead(reply.status, {...reply.headers, 'content-length': String(reply.body.length)});
    res.end(reply.body);
  }

  /** The answer to send, or undefined when a fault has dealt with the connection itself. */
  private async replyTo(req: IncomingMessage, res: ServerResponse): Promise<Reply | undefined> {
    const method = (req.method ?? 'GET').toUpperCase();
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const request = parseRequest(method, url);
    const body = await buffer(req);
    const fault = this.takeFault(request);
    const answer = (): Reply => {
      try {
        return this.handle(request, req, body);
      } catch (err) {
        return replyToError(err);
      }
    };
    let reply = fault?.applyFirst ? answer() : undefined;
    if (fault?.delayMs) {
      const {delayMs} = fault;
      await new Promise(resolve => setTimeout(resolve, delayMs).unref()); // never keeps a test process alive
      // A client that gave up during the stall gets nothing; unless applyFirst, nothing happened.
      if (res.closed) return undefined;
    }
    if (fault?.resetConnection) {
      req.socket.resetAndDestroy();
      return undefined;
    }
    if (fault?.hang) return undefined; // no answer: the socket stays open until one side closes it
    const status = fault && (fault.status ?? (fault.delayMs ? undefined : 503));
    if (status !== undefined) reply = injectedError(request.api, status, `${method} ${url.pathname}`).reply;
    return reply ?? answer();
  }

  private handle(request: ParsedRequest, req: IncomingMessage, body: Buffer): Reply {
    switch (request.handler) {
      case 'upload':
        return this.upload(request, String(req.headers['content-type'] ?? ''), body);
      case 'metadata':
        return jsonReply(200, this.objectResource(this.liveObject(request)));
      case 'download':
        return mediaReply(this.liveObject(request));
      case 'delete': {
        const obj = this.liveObject(request);
        this.bucketOrThrow(obj.bucket).delete(obj.name);
        return {status: 204, headers: {}, body: Buffer.alloc(0)};
      }
      case 'list':
        return this.list(request);
      case 'signedRead':
        return this.signedRead(request, req);
      case 'testPermissions': {
        this.bucketOrThrow(request.bucket);
        const denied = this.denied.get(request.bucket) ?? new Set<string>();
        const granted = request.query.getAll('permissions').filter(permission => !denied.has(permission));
        // Like Cloud Storage, the field is left out when nothing is granted.
        return jsonReply(200, {
          kind: 'storage#testIamPermissionsResponse',
          ...(granted.length > 0 ? {permissions: granted} : {}),
        });
      }
    }
  }

  private bucketOrThrow(name: string): Map<string, StoredObject> {
    const objects = this.buckets.get(name);
    if (!objects) throw jsonError(404, 'The specified bucket does not exist.');
    return objects;
  }

  private liveObject(request: ParsedRequest): StoredObject {
    const name = request.object ?? '';
    const obj = this.bucketOrThrow(request.bucket).get(name);
    if (!obj) throw noSuchObject(request.bucket, name);
    return obj;
  }

  private objectResource(o: StoredObject): Record<string, unknown> {
    const resource: Record<string, unknown> = {
      name: o.name,
      bucket: o.bucket,
      generation: o.generation,
      contentType: o.contentType,
      size: String(o.data.length),
      md5Hash: o.md5Hash,
      crc32c: o.crc32c,
      timeCreated: o.timeCreated,
      updated: o.timeCreated, // objects are never patched here
    };
    if (o.cacheControl !== undefined) resource.cacheControl = o.cacheControl;
    if (o.contentDisposition !== undefined) resource.contentDisposition = o.contentDisposition;
    if (Object.keys(o.metadata).length > 0) resource.metadata = {...o.metadata};
    return resource;
  }

  private upload(request: ParsedRequest, contentType: string, body: Buffer): Reply {
    const objects = this.bucketOrThrow(request.bucket);
    const {query} = request;
    const uploadType = query.get('uploadType');
    if (uploadType !== 'multipart') {
      throw notImplemented(`uploadType=${uploadType} (only multipart: save() with resumable: false)`);
    }
    const name = request.object ?? '';
    const parts = multipartBodies(body, contentType);
    const [resourcePart, mediaPart] = parts;
    if (parts.length !== 2 || !resourcePart || !mediaPart) {
      throw jsonError(400, `A multipart upload has 2 parts (metadata, media), not ${parts.length}`);
    }
    const resource = JSON.parse(resourcePart.toString('utf8')) as Record<string, unknown>;
    for (const field of Object.keys(resource)) {
      if (!UPLOAD_FIELDS.has(field)) throw notImplemented(`the upload field '${field}'`);
    }
    const data = mediaPart;

    const expectedGeneration = query.get('ifGenerationMatch');
    const existing = objects.get(name);
    if (
      expectedGeneration !== null &&
      (expectedGeneration === '0' ? existing !== undefined : existing?.generation !== expectedGeneration)
    ) {
      throw jsonError(412, 'At least one of the pre-conditions you specified did not hold.');
    }
    const md5Hash = createHash('md5').update(data).digest('base64');
    const claimedMd5 = stringField(resource, 'md5Hash');
    if (claimedMd5 !== undefined && claimedMd5 !== md5Hash) {
      throw jsonError(
        400,
        `Provided MD5 hash "${claimedMd5}" doesn't match calculated MD5 hash "${md5Hash}".`,
      );
    }
    const crc = new CRC32C();
    crc.update(data);
    const stored: StoredObject = {
      bucket: request.bucket,
      name,
      data,
      contentType: stringField(resource, 'contentType') ?? DEFAULT_CONTENT_TYPE,
      metadata: customMetadata(resource.metadata),
      generation: this.nextGeneration(),
      md5Hash,
      crc32c: crc.toString(),
      timeCreated: new Date().toISOString(),
    };
    const cacheControl = stringField(resource, 'cacheControl');
    if (cacheControl !== undefined) stored.cacheControl = cacheControl;
    const contentDisposition = stringField(resource, 'contentDisposition');
    if (contentDisposition !== undefined) stored.contentDisposition = contentDisposition;
    objects.set(name, stored);
    return jsonReply(200, this.objectResource(stored));
  }

  private nextGeneration(): string {
    this.lastGeneration = Math.max(Date.now() * 1000, this.lastGeneration + 1);
    return String(this.lastGeneration);
  }

  private list(request: ParsedRequest): Reply {
    const objects = this.bucketOrThrow(request.bucket);
    const {query} = request;
    const maxResults = Math.min(Number(query.get('maxResults')) || MAX_LIST_RESULTS, MAX_LIST_RESULTS);
    // The page token is the last name of the previous page, opaque to the client.
    const token = query.get('pageToken');
    const after = token ? Buffer.from(token, 'base64url').toString('utf8') : undefined;
    const names = this.listObjectNames(request.bucket, query.get('prefix') ?? '').filter(
      name => after === undefined || compareNames(name, after) > 0,
    );
    const page = names.slice(0, maxResults);
    const response: Record<string, unknown> = {
      items: page.map(name => this.objectResource(objects.get(name) as StoredObject)),
    };
    const last = page[page.length - 1];
    if (last !== undefined && names.length > page.length) {
      response.nextPageToken = Buffer.from(last, 'utf8').toString('base64url');
    }
    return jsonReply(200, response);
  }

  /** A signed XML API read: authenticate (see the header comment), then serve the object. */
  private signedRead(request: ParsedRequest, req: IncomingMessage): Reply {
    const {bucket, object = ''} = request;
    this.authenticateSigned(request, req);
    const objects = this.buckets.get(bucket);
    if (!objects) throw xmlError(404, 'NoSuchBucket', 'The specified bucket does not exist.');
    const obj = objects.get(object);
    if (!obj) {
      throw xmlError(
        404,
        'NoSuchKey',
        'The specified key does not exist.',
        `No such object: ${bucket}/${object}`,
      );
    }
    return mediaReply(obj);
  }

  /** Checks a V4 query-string signature the way GCS does, or throws the XML API error GCS would answer. */
  private authenticateSigned(request: ParsedRequest, req: IncomingMessage): void {
    const pairs = [...request.query];
    const required = (name: string): string => {
      const value = pairs.find(([k]) => k.toLowerCase() === name.toLowerCase())?.[1];
      if (!value) throw malformed(name, `Missing required query parameter ${name}.`);
      return value;
    };

    const algorithm = required('X-Goog-Algorithm');
    if (algorithm !== 'GOOG4-RSA-SHA256') {
      throw malformed('X-Goog-Algorithm', `Unsupported signing algorithm (RSA only here): ${algorithm}`);
    }

    const date = required('X-Goog-Date');
    const dateMs = parseGoogDate(date);
    if (dateMs === undefined)
      throw malformed('X-Goog-Date', `Invalid X-Goog-Date (expected YYYYMMDD'T'HHMMSS'Z'): ${date}`);

    const expiresParam = required('X-Goog-Expires');
    const expires = /^\d+$/.test(expiresParam) ? Number(expiresParam) : Number.NaN;
    if (!(expires >= 1 && expires <= MAX_SIGNED_URL_EXPIRES)) {
      throw malformed(
        'X-Goog-Expires',
        `X-Goog-Expires must be an integer from 1 to ${MAX_SIGNED_URL_EXPIRES}, got ${expiresParam}`,
      );
    }

    const credential = required('X-Goog-Credential');
    const parts = credential.split('/');
    const [clientEmail = '', , location, service, requestType] = parts;
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

    // The client signs only the host for a read.
    const signedHeaders = required('X-Goog-SignedHeaders');
    if (signedHeaders !== 'host') throw xmlNotImplemented(`signed headers other than host: ${signedHeaders}`);

    const signatureHex = required('X-Goog-Signature');
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(signatureHex))
      throw malformed('X-Goog-Signature', 'Signature was not hex encoded.');

    // Authentication proper: the validity window, then the signature.
    const expiresAtMs = dateMs + expires * 1000;
    if (this.now() > expiresAtMs) {
      throw xmlError(
        400,
        'ExpiredToken',
        'The provided token has expired.',
        `Request signature expired at: ${new Date(expiresAtMs).toISOString()}`,
      );
    }
    const keys = this.signers.get(clientEmail);
    if (!keys) {
      throw xmlError(
        403,
        'AccessDenied',
        'Access denied.',
        `The GCS test server does not trust signer ${clientEmail}; call trustSigner() with its public key.`,
      );
    }

    const canonicalQuery = pairs
      .filter(([k]) => k.toLowerCase() !== 'x-goog-signature')
      .map(([k, v]) => [encodeStrict(k), encodeStrict(v)] as const)
      .sort(([a], [b]) => (a < b ? -1 : 1)) // by name; the client never repeats one
      .map(([k, v]) => `${k}=${v}`)
      .join('&');
    const canonicalRequest = [
      'GET',
      `/${request.bucket}/${(request.object ?? '').split('/').map(encodeStrict).join('/')}`,
      canonicalQuery,
      `host:${signedHostOf(req.headers.host ?? '')}\n`,
      signedHeaders,
      'UNSIGNED-PAYLOAD',
    ].join('\n');
    const stringToSign = [
      'GOOG4-RSA-SHA256',
      date,
      parts.slice(1).join('/'),
      createHash('sha256').update(canonicalRequest).digest('hex'),
    ].join('\n');
    const signature = Buffer.from(signatureHex, 'hex');
    if (!keys.some(key => cryptoVerify('sha256', Buffer.from(stringToSign, 'utf8'), key, signature))) {
      throw xmlError(
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

    const extra = pairs.find(([k]) => !AUTH_PARAMS.has(k.toLowerCase()));
    if (extra) throw xmlNotImplemented(`the signed parameter ${extra[0]}`);
  }
}

/** A media download of the whole object, with the hashes the client validates it against. */
function mediaReply(obj: StoredObject): Reply {
  return {
    status: 200,
    headers: {
      'content-type': obj.contentType,
      ...(obj.contentDisposition ? {'content-disposition': obj.contentDisposition} : {}),
      'x-goog-hash': `crc32c=${obj.crc32c},md5=${obj.md5Hash}`,
      // The client validates only objects it knows were stored without content encoding.
      'x-goog-stored-content-encoding': 'identity',
    },
    body: obj.data,
  };
}

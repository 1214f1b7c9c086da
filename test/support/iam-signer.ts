/**
 * An in-process fake of the IAM Credentials `signBlob` API, the path a deployed function without a
 * key file (Cloud Run) signs URLs through:
 *
 *   POST {url}{email}:signBlob   Authorization: Bearer <token>   {"payload": "<base64>"}
 *   -> 200 {"keyId": "...", "signedBlob": "<base64 RSA-SHA256 signature of the payload>"}
 *
 * `url` ends with `/v1/projects/-/serviceAccounts/`, the form `getSignedUrl({signingEndpoint})` and
 * `GoogleAuth.sign(data, endpoint)` expect. Requests without `Authorization: Bearer <accessToken>`
 * get 401; a service account other than `email` gets 403 (what IAM answers when the caller lacks
 * iam.serviceAccounts.signBlob on it).
 *
 * `keylessStorageFor(server, signer)` builds a real Storage client with no key that signs through
 * this fake. How it works (google-auth-library 11, @google-cloud/storage 8):
 *
 * - `new Storage({authClient})` uses a `GoogleAuth` instance as is (any other AuthClient is wrapped
 *   in a new GoogleAuth). The URL signer uses exactly that object: `file.getSignedUrl()` does
 *   `new URLSigner(storage.authClient, ...)`, and V4 signing calls `auth.getCredentials()` (for the
 *   email in X-Goog-Credential) and `auth.sign(stringToSign, signingEndpoint)`.
 * - `GoogleAuth.sign` signs locally only when its client is a JWT with a private key. Otherwise it
 *   takes `client_email` from `getCredentials()` and POSTs to `${endpoint}${email}:signBlob` through
 *   `client.request()`, which adds the client's `Authorization: Bearer` header.
 * - So `KeylessTestAuth` (a GoogleAuth) returns `{client_email}` from getCredentials(), which a plain
 *   GoogleAuth could only learn from the GCE metadata server, and an OAuth2Client holding a static
 *   access token (no expiry, so it never refreshes) from getClient(). That is the Cloud Run shape: a
 *   Compute client with a token and an email, no key.
 * - JSON API calls to a custom apiEndpoint skip auth altogether (`customEndpoint &&
 *   !useAuthWithCustomEndpoint`), so the token only ever goes to the signer.
 * - signBlob is retried by gaxios: `retry: true` with POST allowed, 3 retries on 408/429/5xx (and
 *   network errors), waiting about 100 ms, 500 ms, 1.5 s. A single 5xx is therefore invisible to
 *   the caller. `injectFault(status)` faults every call until `clearFaults()` (or `times` calls);
 *   `keylessStorageFor(..., {fastRetries: true})` keeps the retries but not the waits.
 */
import {generateKeyPair, randomBytes, sign as cryptoSign} from 'node:crypto';
import {createServer, type IncomingMessage, type ServerResponse} from 'node:http';
import type {Storage, StorageOptions} from '@google-cloud/storage';
import {GoogleAuth, OAuth2Client, type CredentialBody} from 'google-auth-library';
import {storageClientFor, type GcsTestServer} from './gcs-server';
import {listenOnLoopback} from './loopback-server';

export const SIGN_BLOB_PATH_PREFIX = '/v1/projects/-/serviceAccounts/';

export interface IamSigner {
  /** `http://127.0.0.1:PORT/v1/projects/-/serviceAccounts/`: pass it as `signingEndpoint`. */
  readonly url: string;
  /** The service account this fake signs for. */
  readonly email: string;
  /** SPKI PEM of its key: `gcsServer.trustSigner(signer.email, signer.publicKeyPem)`. */
  readonly publicKeyPem: string;
  /** The keyId returned with every signature. */
  readonly keyId: string;
  /** The bearer token signBlob requires (`keylessStorageFor` sends it). */
  readonly accessToken: string;
  /** signBlob requests received: answered, refused and faulted ones (so retries show). */
  readonly calls: number;
  /** Answer `status` (a Google JSON error) to the next `times` signBlob calls, default: all until clearFaults(). */
  injectFault(status: number, times?: number): void;
  clearFaults(): void;
  close(): Promise<void>;
}

export interface IamSignerOptions {
  /** Default: a fresh `signer-<hex>@test-project.iam.gserviceaccount.com`. */
  email?: string;
}

export async function startIamSigner(opts: IamSignerOptions = {}): Promise<IamSigner> {
  const {publicKey, privateKey} = await new Promise<{publicKey: string; privateKey: string}>(
    (resolve, reject) =>
      generateKeyPair(
        'rsa',
        {
          modulusLength: 2048,
          publicKeyEncoding: {type: 'spki', format: 'pem'},
          privateKeyEncoding: {type: 'pkcs8', format: 'pem'},
        },
        (err, pub, priv) => (err ? reject(err) : resolve({publicKey: pub, privateKey: priv})),
      ),
  );
  const signer = new FakeIamSigner(
    opts.email ?? `signer-${randomBytes(4).toString('hex')}@test-project.iam.gserviceaccount.com`,
    publicKey,
    privateKey,
  );
  await signer.listen();
  return signer;
}

export interface KeylessOptions {
  /**
   * Shrink gaxios' waits between signBlob retries (about 100 ms, 500 ms, 1.5 s) to ~1 ms. Which
   * statuses are retried, and how often (3 times), stays the library's default.
   */
  fastRetries?: boolean;
}

/**
 * A keyless GoogleAuth, as on Cloud Run: it knows its service account's email and has an access
 * token, but no private key, so `sign()` goes through IAM signBlob (see the header comment).
 */
export class KeylessTestAuth extends GoogleAuth {
  private readonly tokenClient: OAuth2Client;

  constructor(
    private readonly clientEmail: string,
    accessToken: string,
    opts: KeylessOptions = {},
  ) {
    // Request options merge deeply over these transporter defaults, so signBlob keeps its own
    // retry settings (retry: true, POST retried) and only the waits shrink.
    const tokenClient = new OAuth2Client(
      opts.fastRetries ? {transporterOptions: {retryConfig: {retryDelay: 1, retryDelayMultiplier: 1}}} : {},
    );
    tokenClient.setCredentials({access_token: accessToken, token_type: 'Bearer'});
    super({authClient: tokenClient, projectId: 'test-project'});
    this.tokenClient = tokenClient;
  }

  override getCredentials(): Promise<CredentialBody>;
  override getCredentials(callback: (err: Error | null, credentials?: CredentialBody) => void): void;
  override getCredentials(
    callback?: (err: Error | null, credentials?: CredentialBody) => void,
  ): Promise<CredentialBody> | void {
    const credentials: CredentialBody = {client_email: this.clientEmail};
    if (callback) {
      callback(null, credentials);
      return;
    }
    return Promise.resolve(credentials);
  }

  override async getClient(): Promise<OAuth2Client> {
    return this.tokenClient;
  }

  /**
   * GoogleAuth.sign, with one guard: without an endpoint it would call the real
   * iamcredentials.googleapis.com, so that is an error here instead of a network call.
   */
  override async sign(data: string, endpoint?: string): Promise<string> {
    if (!endpoint) {
      throw new Error(
        'KeylessTestAuth.sign() without an endpoint would call the real IAM API; pass signingEndpoint: signer.url to getSignedUrl().',
      );
    }
    return super.sign(data, endpoint);
  }
}

/**
 * A real Storage client for `server` that has no key and signs URLs through `signer`'s signBlob.
 * getSignedUrl() must be given `signingEndpoint: signer.url`.
 */
export function keylessStorageFor(
  server: GcsTestServer,
  signer: Pick<IamSigner, 'email' | 'accessToken'>,
  options: Omit<StorageOptions, 'apiEndpoint' | 'authClient'> & KeylessOptions = {},
): Storage {
  const {fastRetries, ...storageOptions} = options;
  const auth = new KeylessTestAuth(
    signer.email,
    signer.accessToken,
    fastRetries === undefined ? {} : {fastRetries},
  );
  return storageClientFor(server, {...storageOptions, authClient: auth});
}

// ---------------------------------------------------------------------------------------------

const GOOGLE_STATUS: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  429: 'RESOURCE_EXHAUSTED',
  500: 'INTERNAL',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

class FakeIamSigner implements IamSigner {
  readonly keyId = randomBytes(20).toString('hex');
  readonly accessToken = `test-token-${randomBytes(8).toString('hex')}`;
  private readonly http = createServer((req, res) => this.onRequest(req, res));
  private destroyConnections: () => void = () => undefined;
  private baseUrl = '';
  private count = 0;
  private fault: {status: number; remaining: number} | undefined;
  private closed = false;

  constructor(
    readonly email: string,
    readonly publicKeyPem: string,
    private readonly privateKeyPem: string,
  ) {}

  get url(): string {
    return `${this.baseUrl}${SIGN_BLOB_PATH_PREFIX}`;
  }

  get calls(): number {
    return this.count;
  }

  async listen(): Promise<void> {
    const listener = await listenOnLoopback(this.http, {noIdleTimeout: true});
    this.baseUrl = listener.origin;
    this.destroyConnections = listener.destroyConnections;
  }

  injectFault(status: number, times = Number.POSITIVE_INFINITY): void {
    if (!(Number.isInteger(status) && status >= 400 && status <= 599))
      throw new Error(`status must be an HTTP error status, got ${status}`);
    if (!(times >= 1)) throw new Error(`times must be at least 1, got ${times}`);
    this.fault = {status, remaining: times};
  }

  clearFaults(): void {
    this.fault = undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>(resolve => this.http.close(() => resolve()));
    this.http.closeAllConnections();
    this.destroyConnections();
    await done;
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('error', () => res.destroy());
    req.on('end', () => {
      try {
        this.handle(req, res, Buffer.concat(chunks));
      } catch (err) {
        this.sendError(
          res,
          500,
          `IAM signer test server error: ${String(err instanceof Error ? err.stack : err)}`,
        );
      }
    });
  }

  private handle(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
    const m = /^\/v1\/projects\/([^/]+)\/serviceAccounts\/([^/]+):signBlob$/.exec(path);
    if (!m)
      return this.sendError(
        res,
        404,
        `The IAM signer test server only serves POST ${SIGN_BLOB_PATH_PREFIX}<email>:signBlob, not ${path}`,
      );
    if (req.method !== 'POST')
      return this.sendError(res, 405, `Method ${req.method} not allowed for signBlob`);
    this.count += 1;

    if (this.fault) {
      const {status} = this.fault;
      this.fault.remaining -= 1;
      if (this.fault.remaining <= 0) this.fault = undefined;
      return this.sendError(res, status, `Injected fault: HTTP ${status} for signBlob`);
    }

    const authorization = req.headers.authorization ?? '';
    if (authorization !== `Bearer ${this.accessToken}`) {
      return this.sendError(
        res,
        401,
        'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      );
    }
    let account: string;
    try {
      account = decodeURIComponent(m[2] ?? '');
    } catch {
      return this.sendError(res, 400, `Invalid service account in ${path}`);
    }
    if (account !== this.email) {
      return this.sendError(
        res,
        403,
        "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist).",
      );
    }

    let payload: unknown;
    try {
      payload = (JSON.parse(body.toString('utf8')) as {payload?: unknown}).payload;
    } catch {
      return this.sendError(res, 400, 'Invalid JSON payload received.');
    }
    if (typeof payload !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(payload) || payload.length % 4 !== 0) {
      return this.sendError(res, 400, "Invalid value at 'payload' (TYPE_BYTES): expected base64 bytes");
    }
    const signedBlob = cryptoSign('sha256', Buffer.from(payload, 'base64'), this.privateKeyPem).toString(
      'base64',
    );
    this.sendJson(res, 200, {keyId: this.keyId, signedBlob});
  }

  private sendError(res: ServerResponse, status: number, message: string): void {
    this.sendJson(res, status, {
      error: {
        code: status,
        message,
        status: GOOGLE_STATUS[status] ?? (status >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION'),
      },
    });
  }

  private sendJson(res: ServerResponse, status: number, value: unknown): void {
    const payload = Buffer.from(JSON.stringify(value));
    res.writeHead(status, {
      'content-type': 'application/json; charset=UTF-8',
      'content-length': String(payload.length),
    });
    res.end(payload);
  }
}

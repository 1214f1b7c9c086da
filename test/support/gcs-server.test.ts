import {createHash, generateKeyPairSync, randomBytes} from 'node:crypto';
import {request as httpRequest} from 'node:http';
import {ApiError, Storage, type File, type GetFilesResponse} from '@google-cloud/storage';
import {FAST_RETRY_OPTIONS, startGcsTestServer, storageClientFor, type GcsTestServer} from './gcs-server';

const BUCKET = 'test-bucket';
const IMMUTABLE = 'public, max-age=31536000, immutable';

let server: GcsTestServer;
let storage: Storage;

beforeAll(async () => {
  server = await startGcsTestServer({buckets: [BUCKET]});
  storage = storageClientFor(server);
});

afterEach(() => server.reset());

afterAll(async () => {
  await server.close();
});

const file = (name: string, client: Storage = storage): File => client.bucket(BUCKET).file(name);
const md5 = (data: Buffer) => createHash('md5').update(data).digest('base64');

/** The upload the product makes: multipart, create-only, with the MD5 for the server to check. */
function putAsProduct(
  target: File,
  data: Buffer,
  opts: {contentType?: string; metadata?: Record<string, string>; md5Hash?: string} = {},
): Promise<void> {
  const contentType = opts.contentType ?? 'image/png';
  return target.save(data, {
    resumable: false,
    contentType,
    metadata: {
      contentType,
      cacheControl: IMMUTABLE,
      metadata: opts.metadata ?? {},
      md5Hash: opts.md5Hash ?? md5(data),
    },
    validation: false,
    preconditionOpts: {ifGenerationMatch: 0},
  });
}

/** Resolves to the rejection of `promise`, failing the test if it resolves. */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected the promise to reject');
}

async function apiErrorOf(promise: Promise<unknown>): Promise<ApiError> {
  const err = await rejectionOf(promise);
  expect(err).toBeInstanceOf(ApiError);
  return err as ApiError;
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

/** A low-level call without the client. */
async function raw(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, init);
}

describe('objects', () => {
  test('a create-only multipart upload stores bytes, type, cache control and metadata', async () => {
    const data = randomBytes(100_000);
    await putAsProduct(file('images/a.png'), data, {metadata: {job_id: 'job-1'}});

    const [md] = await file('images/a.png').getMetadata();
    expect(md).toMatchObject({
      name: 'images/a.png',
      bucket: BUCKET,
      contentType: 'image/png',
      cacheControl: IMMUTABLE,
      size: String(data.length),
      md5Hash: md5(data),
      metadata: {job_id: 'job-1'},
    });
    expect(md.generation).toMatch(/^\d+$/);
    expect(new Date(md.timeCreated as string).getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(md.updated).toBe(md.timeCreated);

    const before = server.requestCount;
    expect((await readAll(file('images/a.png').createReadStream())).equals(data)).toBe(true);
    expect(server.requestCount - before).toBe(1);
    const stored = server.getObject(BUCKET, 'images/a.png');
    expect(stored?.data.equals(data)).toBe(true);
    expect(stored?.crc32c).toBe(md.crc32c);
  });

  test('downloads carry the hashes the client validates; uploads answer them', async () => {
    // The client's default validation checks the upload's answer and the download's x-goog-hash.
    const data = randomBytes(1000);
    await file('h.bin').save(data, {resumable: false, metadata: {metadata: {index: 3}}});
    const [downloaded] = await file('h.bin').download();
    expect(downloaded.equals(data)).toBe(true);
    const stored = server.getObject(BUCKET, 'h.bin');
    expect(stored?.contentType).toBe('application/octet-stream');
    expect(stored?.metadata).toEqual({index: '3'});

    const res = await raw(`/storage/v1/b/${BUCKET}/o/h.bin?alt=media`);
    expect(res.headers.get('x-goog-hash')).toBe(`crc32c=${stored?.crc32c},md5=${md5(data)}`);
    expect(res.headers.get('content-length')).toBe('1000');
  });

  test('an existing name is refused with 412 and kept; a matching generation replaces it', async () => {
    await putAsProduct(file('once.png'), Buffer.from('first'));
    const err = await apiErrorOf(putAsProduct(file('once.png'), Buffer.from('second')));
    expect(err.code).toBe(412);
    expect(err.errors?.[0]?.reason).toBe('conditionNotMet');
    expect(server.getObject(BUCKET, 'once.png')?.data.toString()).toBe('first');

    const generation = server.getObject(BUCKET, 'once.png')?.generation as string;
    await file('once.png').save('third', {
      resumable: false,
      preconditionOpts: {ifGenerationMatch: generation},
    });
    expect(server.getObject(BUCKET, 'once.png')?.data.toString()).toBe('third');
    const stale = await apiErrorOf(
      file('once.png').save('fourth', {resumable: false, preconditionOpts: {ifGenerationMatch: generation}}),
    );
    expect(stale.code).toBe(412);
  });

  test('an MD5 that does not match the bytes is refused with 400 and nothing is stored', async () => {
    const err = await apiErrorOf(
      putAsProduct(file('bad.png'), Buffer.from('bytes'), {md5Hash: md5(Buffer.from('other'))}),
    );
    expect(err.code).toBe(400);
    expect(server.getObject(BUCKET, 'bad.png')).toBeUndefined();
  });

  test('delete removes; a missing object is 404 for getMetadata, createReadStream and delete', async () => {
    await putAsProduct(file('gone.png'), Buffer.from('bye'));
    await file('gone.png').delete();
    expect(server.getObject(BUCKET, 'gone.png')).toBeUndefined();

    const metaErr = await apiErrorOf(file('gone.png').getMetadata());
    expect(metaErr.code).toBe(404);
    expect(metaErr.message).toBe(`No such object: ${BUCKET}/gone.png`);
    expect((await apiErrorOf(readAll(file('gone.png').createReadStream()))).code).toBe(404);
    expect((await apiErrorOf(file('gone.png').delete())).code).toBe(404);
  });

  test('an unknown bucket is 404; error bodies have the GCS JSON shape', async () => {
    const err = await apiErrorOf(storage.bucket('nope').file('x').save('data', {resumable: false}));
    expect(err.code).toBe(404);
    expect(server.listObjectNames('nope')).toEqual([]);
    const res = await raw(`/storage/v1/b/${BUCKET}/o/${encodeURIComponent('no/such')}`);
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({
      error: {
        code: 404,
        message: `No such object: ${BUCKET}/no/such`,
        errors: [{message: `No such object: ${BUCKET}/no/such`, domain: 'global', reason: 'notFound'}],
      },
    });
  });

  test('names with slashes, spaces and non-ASCII characters round-trip', async () => {
    const names = ['a/b/c.txt', 'with space/ü+%#?.txt', 'x:y/z'];
    for (const name of names) await file(name).save(`content of ${name}`, {resumable: false});
    for (const name of names) {
      const [data] = await file(name).download();
      expect(data.toString()).toBe(`content of ${name}`);
    }
    const [files] = await storage.bucket(BUCKET).getFiles();
    expect(files.map(f => f.name)).toEqual([...names].sort());
  });
});

describe('listing', () => {
  test('pages of maxResults follow pageToken in name order; autoPaginate walks them all', async () => {
    const names = ['p/e', 'p/a', 'p/c', 'p/b', 'p/d', 'p/f', 'p/g', 'q/other'];
    await Promise.all(names.map(n => putAsProduct(file(n), Buffer.from(n), {metadata: {n}})));

    const seen: string[] = [];
    let query: Record<string, unknown> | null = {prefix: 'p/', maxResults: 3, autoPaginate: false};
    let pages = 0;
    while (query) {
      const [files, nextQuery]: GetFilesResponse = await storage.bucket(BUCKET).getFiles(query);
      pages += 1;
      expect(files.length).toBeLessThanOrEqual(3);
      seen.push(...files.map(f => f.name));
      query = nextQuery ? {...(nextQuery as Record<string, unknown>)} : null;
    }
    expect(pages).toBe(3);
    expect(seen).toEqual(['p/a', 'p/b', 'p/c', 'p/d', 'p/e', 'p/f', 'p/g']);

    const [all] = await storage.bucket(BUCKET).getFiles({prefix: 'p/', autoPaginate: true});
    expect(all.map(f => f.name)).toEqual(seen);
    expect(server.listObjectNames(BUCKET, 'p/')).toEqual(seen);
    // Listed resources carry what a walk over images/ needs without fetching each object.
    expect(all[0]?.metadata).toMatchObject({
      name: 'p/a',
      size: '3',
      contentType: 'image/png',
      metadata: {n: 'p/a'},
      timeCreated: expect.any(String),
      updated: expect.any(String),
    });
  });
});

describe('what is not implemented answers 501 instead of a wrong answer', () => {
  test('resumable uploads, delimiters, patches, gzip and copies', async () => {
    const resumable = (await rejectionOf(file('r').save('x', {resumable: true}))) as {status?: number};
    expect(resumable.status).toBe(501); // the session POST fails; gaxios reports .status

    const delimited = await apiErrorOf(storage.bucket(BUCKET).getFiles({delimiter: '/'}));
    expect(delimited.code).toBe(501);
    expect(delimited.errors?.[0]?.reason).toBe('notImplemented');
    expect(delimited.message).toContain("'delimiter'");

    await file('o').save('x', {resumable: false});
    expect((await apiErrorOf(file('o').setMetadata({metadata: {a: 'b'}}))).code).toBe(501);
    expect((await apiErrorOf(file('gz').save('x', {resumable: false, gzip: true}))).code).toBe(501);
    expect((await apiErrorOf(file('o').copy('o2'))).code).toBe(501);
    expect(server.listObjectNames(BUCKET)).toEqual(['o']);
  });

  test('a malformed upload is a 400; a request the server cannot parse is a 500 saying why', async () => {
    const upload = await raw(`/upload/storage/v1/b/${BUCKET}/o?uploadType=multipart&name=m`, {
      method: 'POST',
      headers: {'content-type': 'multipart/related; boundary=b'},
      body: '--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--',
    });
    expect(upload.status).toBe(400);
    expect(server.getObject(BUCKET, 'm')).toBeUndefined();

    const badEscape = await raw(`/storage/v1/b/${BUCKET}/o/%E0%A4%A`);
    expect(badEscape.status).toBe(500);
    expect(await badEscape.text()).toContain('URIError');
  });
});

describe('fault injection', () => {
  test('a status fails the operation once by default, with the API error body', async () => {
    await putAsProduct(file('f.png'), Buffer.from('x'));
    server.injectFault({op: 'download', status: 503});
    expect((await apiErrorOf(readAll(file('f.png').createReadStream()))).code).toBe(503);
    expect((await readAll(file('f.png').createReadStream())).toString()).toBe('x');
  });

  test('faults choose by operation, object name, times and probability', async () => {
    await putAsProduct(file('keep/a'), Buffer.from('a'));
    await putAsProduct(file('hit/b'), Buffer.from('b'));
    server.injectFault({op: 'metadata', status: 429, objectNameMatches: /^hit\//}, {times: 2});
    await expect(file('keep/a').getMetadata()).resolves.toBeDefined();
    expect((await apiErrorOf(file('hit/b').getMetadata())).code).toBe(429);
    expect((await apiErrorOf(file('hit/b').getMetadata())).code).toBe(429);
    await expect(file('hit/b').getMetadata()).resolves.toBeDefined();
    server.injectFault({op: 'list', status: 500, objectNameMatches: /./});
    await expect(storage.bucket(BUCKET).getFiles()).resolves.toBeDefined(); // a listing names no object
    server.clearFaults();

    server.injectFault({op: 'upload', status: 500}, {probability: 1});
    for (let i = 0; i < 3; i++) {
      expect((await apiErrorOf(putAsProduct(file(`u${i}`), Buffer.from('x')))).code).toBe(500);
    }
    server.clearFaults();
    await putAsProduct(file('u0'), Buffer.from('x'));
    expect(server.listObjectNames(BUCKET, 'u')).toEqual(['u0']);
  });

  test('list and delete faults wait for their own operation; with no answer given a fault is a 503', async () => {
    await putAsProduct(file('o'), Buffer.from('x'));
    server.injectFault({op: 'delete'});
    server.injectFault({op: 'list', status: 502});
    expect((await file('o').getMetadata())[0].name).toBe('o');
    expect((await apiErrorOf(storage.bucket(BUCKET).getFiles())).code).toBe(502);
    expect((await apiErrorOf(file('o').delete())).code).toBe(503);
    expect(server.getObject(BUCKET, 'o')).toBeDefined();
  });

  test('a probability fault fires when the draw falls below it', async () => {
    await putAsProduct(file('p'), Buffer.from('x'));
    const random = jest.spyOn(Math, 'random').mockReturnValueOnce(0.7).mockReturnValueOnce(0.2);
    try {
      server.injectFault({op: 'metadata', status: 500}, {probability: 0.5});
      await expect(file('p').getMetadata()).resolves.toBeDefined();
      expect((await apiErrorOf(file('p').getMetadata())).code).toBe(500);
    } finally {
      random.mockRestore();
    }
  });

  test('resetConnection surfaces as a network error, not an ApiError', async () => {
    await putAsProduct(file('r'), Buffer.from('x'));
    server.injectFault({op: 'download', resetConnection: true});
    const err = await rejectionOf(readAll(file('r').createReadStream()));
    expect(err).not.toBeInstanceOf(ApiError);
    expect(String(err)).toMatch(/ECONNRESET|socket hang up/i);
    server.injectFault({op: 'metadata', resetConnection: true});
    await expect(file('r').getMetadata()).rejects.toThrow(/ECONNRESET|socket hang up/i);
    await expect(file('r').getMetadata()).resolves.toBeDefined();
  });

  test('delayMs stalls, then answers normally', async () => {
    await putAsProduct(file('slow'), Buffer.from('x'));
    server.injectFault({op: 'metadata', delayMs: 150});
    const started = Date.now();
    const [md] = await file('slow').getMetadata();
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(md.name).toBe('slow');
  });

  test('a client that gives up during a stall leaves no trace', async () => {
    await putAsProduct(file('kept'), Buffer.from('x'));
    server.injectFault({op: 'delete', delayMs: 200});
    const err = await rejectionOf(
      fetch(`${server.url}/storage/v1/b/${BUCKET}/o/kept`, {
        method: 'DELETE',
        signal: AbortSignal.timeout(50),
      }),
    );
    expect((err as Error).name).toBe('TimeoutError');
    await new Promise(resolve => setTimeout(resolve, 300));
    expect(server.getObject(BUCKET, 'kept')).toBeDefined();
  });

  test('hang never answers: the request stays open until the client gives up', async () => {
    await putAsProduct(file('stuck'), Buffer.from('x'));
    server.injectFault({op: 'metadata', hang: true});
    const started = Date.now();
    // The Storage client's `timeout` option would not end it (its Node transport, node-fetch v3,
    // ignores it): a caller needs a deadline of its own, as this fetch has.
    const err = await rejectionOf(
      fetch(`${server.url}/storage/v1/b/${BUCKET}/o/stuck`, {signal: AbortSignal.timeout(300)}),
    );
    expect((err as Error).name).toBe('TimeoutError');
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    await expect(file('stuck').getMetadata()).resolves.toBeDefined();
  });

  test('applyFirst: the write lands (or the object goes) but the client only sees the fault', async () => {
    server.injectFault({op: 'upload', status: 503, applyFirst: true});
    expect((await apiErrorOf(putAsProduct(file('landed.png'), Buffer.from('l')))).code).toBe(503);
    expect(server.getObject(BUCKET, 'landed.png')?.data.toString()).toBe('l');

    server.injectFault({op: 'delete', resetConnection: true, applyFirst: true});
    await expect(file('landed.png').delete()).rejects.toThrow(/ECONNRESET|socket hang up/i);
    expect(server.getObject(BUCKET, 'landed.png')).toBeUndefined();
  });

  test('applyFirst with hang: the write lands while the client waits; close() ends the wait', async () => {
    const other = await startGcsTestServer({buckets: [BUCKET]});
    other.injectFault({op: 'upload', hang: true, applyFirst: true});
    let settled = false;
    const pending = rejectionOf(putAsProduct(file('late.png', storageClientFor(other)), Buffer.from('z')));
    const markSettled = () => (settled = true);
    pending.then(markSettled, markSettled);
    for (let waited = 0; !other.getObject(BUCKET, 'late.png') && waited < 2000; waited += 10) {
      await new Promise(resolve => setTimeout(resolve, 10));
    }
    await new Promise(resolve => setTimeout(resolve, 100));
    const settledBeforeClose = settled;
    const landed = other.getObject(BUCKET, 'late.png')?.data.toString();

    // close() settles although a request hangs; before any expectation, so a failure cannot leave it open.
    await other.close();
    expect(settledBeforeClose).toBe(false);
    expect(landed).toBe('z');
    expect(String(await pending)).toMatch(/ECONNRESET|socket hang up|other side closed/i);
  });

  test('a create-only upload whose answer was lost comes back 412 when the client retries it', async () => {
    // ifGenerationMatch makes the upload idempotent, so the client retries it: the object the first
    // attempt wrote now exists. This is the unknown outcome the product has to resolve.
    const retrying = storageClientFor(server, {retryOptions: FAST_RETRY_OPTIONS});
    server.injectFault({op: 'upload', status: 503, applyFirst: true});
    const before = server.requestCount;
    expect((await apiErrorOf(putAsProduct(file('twice.png', retrying), Buffer.from('t')))).code).toBe(412);
    expect(server.requestCount - before).toBe(2);
    expect(server.getObject(BUCKET, 'twice.png')?.data.toString()).toBe('t');
  });

  test('injectFault refuses options that cannot work', () => {
    expect(() => server.injectFault({op: 'list'}, {times: 0})).toThrow(/times/);
    expect(() => server.injectFault({op: 'list'}, {probability: 1.5})).toThrow(/probability/);
    expect(() => server.injectFault({op: 'list', status: 200})).toThrow(/status/);
    expect(() => server.injectFault({op: 'list', status: 503, hang: true})).toThrow(/one way/);
  });
});

describe('server', () => {
  test('reset() deletes objects and clears faults, keeps buckets, zeroes requestCount', async () => {
    await putAsProduct(file('x'), Buffer.from('x'));
    server.injectFault({op: 'upload', status: 500});
    expect(server.requestCount).toBe(1);
    server.reset();
    expect(server.requestCount).toBe(0);
    expect(server.getObject(BUCKET, 'x')).toBeUndefined();
    await putAsProduct(file('y'), Buffer.from('y'));
    expect(server.listObjectNames(BUCKET)).toEqual(['y']);
  });

  test('STORAGE_EMULATOR_HOST pointing at the server (paths without /storage/v1) works too', async () => {
    const previous = process.env.STORAGE_EMULATOR_HOST;
    process.env.STORAGE_EMULATOR_HOST = server.url;
    try {
      const viaEnv = storageClientFor(server);
      await putAsProduct(file('env.png', viaEnv), Buffer.from('env'));
      expect((await file('env.png', viaEnv).getMetadata())[0].size).toBe('3');
      expect((await readAll(file('env.png', viaEnv).createReadStream())).toString()).toBe('env');
      const [files] = await viaEnv.bucket(BUCKET).getFiles({prefix: 'env'});
      expect(files.map(f => f.name)).toEqual(['env.png']);
      await file('env.png', viaEnv).delete();
      expect(server.getObject(BUCKET, 'env.png')).toBeUndefined();
    } finally {
      if (previous === undefined) delete process.env.STORAGE_EMULATOR_HOST;
      else process.env.STORAGE_EMULATOR_HOST = previous;
    }
  });
});

// --- V4 signed URLs -----------------------------------------------------------------------------

/** A fresh service-account identity: the key a key file would hold. */
function newServiceAccount(name: string): {email: string; privateKey: string; publicKey: string} {
  const {publicKey, privateKey} = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: {type: 'spki', format: 'pem'},
    privateKeyEncoding: {type: 'pkcs8', format: 'pem'},
  });
  return {
    email: `${name}-${randomBytes(3).toString('hex')}@test-project.iam.gserviceaccount.com`,
    privateKey,
    publicKey,
  };
}

/**
 * google-auth-library warns on every client built with `credentials` (deprecated in favour of
 * constructing a JWT, which Storage cannot use for getCredentials() off GCP). Only that warning is muted.
 */
function muteCredentialsDeprecation(): jest.SpyInstance {
  const original = console.warn.bind(console);
  return jest.spyOn(console, 'warn').mockImplementation((...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].startsWith('The `credentials` option is deprecated')) return;
    original(...args);
  });
}

/**
 * A key-file client, which signs locally with the private key: pointed at the test server, or with
 * the default endpoint (https://storage.googleapis.com; used here for signing only, no requests).
 */
function keyFileStorage(
  account: {email: string; privateKey: string},
  endpoint: 'test-server' | 'google' = 'test-server',
): Storage {
  const credentials = {client_email: account.email, private_key: account.privateKey};
  return endpoint === 'google'
    ? new Storage({projectId: 'test-project', credentials})
    : storageClientFor(server, {credentials});
}

interface XmlError {
  status: number;
  code: string | undefined;
  body: string;
}

async function xmlErrorOf(response: Response): Promise<XmlError> {
  const body = await response.text();
  expect(response.headers.get('content-type')).toMatch(/^application\/xml/);
  return {status: response.status, code: /<Code>([^<]*)<\/Code>/.exec(body)?.[1], body};
}

/** Replaces one query parameter of a URL, keeping the rest as is. */
function withParam(url: string, name: string, value: string): string {
  const u = new URL(url);
  u.searchParams.set(name, value);
  return u.href;
}

/** A raw HTTP GET that sends exactly the Host header given (fetch does not let a caller set Host). */
function getWithHost(url: string, host: string): Promise<{status: number; body: string}> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, {headers: {host}}, res => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8')}),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

describe('V4 signed URLs signed with a key file', () => {
  const account = newServiceAccount('key-file');
  let signing: Storage;
  let muted: jest.SpyInstance;
  const signedFile = (name: string): File => signing.bucket(BUCKET).file(name);
  const signRead = async (name: string, extra: Record<string, unknown> = {}): Promise<string> => {
    const [url] = await signedFile(name).getSignedUrl({
      version: 'v4',
      action: 'read',
      expires: Date.now() + 15 * 60_000,
      ...extra,
    });
    return url;
  };

  beforeAll(() => {
    muted = muteCredentialsDeprecation();
    signing = keyFileStorage(account);
    server.trustSigner(account.email, account.publicKey);
  });

  afterAll(() => muted.mockRestore());

  test('the URL the real client signs points at the server and serves the bytes', async () => {
    const data = randomBytes(5000);
    await signedFile('images/a.png').save(data, {resumable: false, contentType: 'image/png'});
    const url = await signRead('images/a.png');

    const parsed = new URL(url);
    expect(parsed.origin).toBe(server.url); // apiEndpoint is the base: no cname or rewriting needed
    expect(parsed.pathname).toBe(`/${BUCKET}/images/a.png`);
    expect(parsed.searchParams.get('X-Goog-Algorithm')).toBe('GOOG4-RSA-SHA256');
    expect(parsed.searchParams.get('X-Goog-Credential')).toMatch(
      new RegExp(`^${account.email.replace(/[.]/g, '\\.')}/\\d{8}/auto/storage/goog4_request$`),
    );
    expect(parsed.searchParams.get('X-Goog-SignedHeaders')).toBe('host');
    expect(parsed.searchParams.get('X-Goog-Expires')).toMatch(/^(899|900)$/);

    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('image/png');
    expect(response.headers.get('content-length')).toBe(String(data.length));
    expect(Buffer.from(await response.arrayBuffer()).equals(data)).toBe(true);
  });

  test('object names that need encoding verify (the canonical URI is rebuilt as the client encodes it)', async () => {
    const name = "dir/ü ñ+(1)*!'~ [x]&y=z?.png";
    await signedFile(name).save('odd name', {resumable: false, contentType: 'text/plain'});
    const url = await signRead(name);
    expect(new URL(url).pathname).toBe(
      `/${BUCKET}/dir/%C3%BC%20%C3%B1%2B%281%29%2A%21%27~%20%5Bx%5D%26y%3Dz%3F.png`,
    );
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('odd name');
  });

  test('a tampered signature is refused with 403 SignatureDoesNotMatch', async () => {
    await signedFile('t.txt').save('t', {resumable: false});
    const url = await signRead('t.txt');
    const signature = new URL(url).searchParams.get('X-Goog-Signature') ?? '';
    const flipped = (signature[0] === 'a' ? 'b' : 'a') + signature.slice(1);
    const err = await xmlErrorOf(await fetch(withParam(url, 'X-Goog-Signature', flipped)));
    expect(err).toMatchObject({status: 403, code: 'SignatureDoesNotMatch'});
    expect(err.body).toContain('<CanonicalRequest>GET\n/test-bucket/t.txt\n');
    expect(err.body).toContain('host:127.0.0.1\n');

    // Any signed part changed, e.g. the expiry (longer).
    expect(await xmlErrorOf(await fetch(withParam(url, 'X-Goog-Expires', '3600')))).toMatchObject({
      status: 403,
      code: 'SignatureDoesNotMatch',
    });
    // The untouched URL still works.
    expect((await fetch(url)).status).toBe(200);
  });

  test('the order of the query parameters does not matter (the canonical query is sorted)', async () => {
    await signedFile('order.txt').save('o', {resumable: false});
    const url = new URL(await signRead('order.txt'));
    const reversed = [...url.searchParams].reverse();
    url.search = new URLSearchParams(reversed).toString();
    expect(url.searchParams.keys().next().value).toBe('X-Goog-Signature');
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('o');
  });

  test('a valid signature for one path does not open another (403), even an existing object', async () => {
    await signedFile('mine.txt').save('mine', {resumable: false});
    await signedFile('other.txt').save('other', {resumable: false});
    const url = new URL(await signRead('mine.txt'));
    url.pathname = `/${BUCKET}/other.txt`;
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 403, code: 'SignatureDoesNotMatch'});
  });

  test('a valid URL for a missing object answers 404 NoSuchKey; for a missing bucket 404 NoSuchBucket', async () => {
    const url = await signRead('never-written.txt');
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 404, code: 'NoSuchKey'});
    const [noBucket] = await signing
      .bucket('no-such-bucket')
      .file('x')
      .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000});
    expect(await xmlErrorOf(await fetch(noBucket))).toMatchObject({status: 404, code: 'NoSuchBucket'});
  });

  test('an expired URL is refused with 400 ExpiredToken (real clock: validity window already over)', async () => {
    await signedFile('e.txt').save('e', {resumable: false});
    // The client refuses an `expires` in the past, so start the window a minute ago and end it now:
    // X-Goog-Date is 60 s back and X-Goog-Expires about 60, both signed by the real client.
    const now = Date.now();
    const url = await signRead('e.txt', {accessibleAt: now - 60_000, expires: now + 1});
    const params = new URL(url).searchParams;
    const date = params.get('X-Goog-Date') ?? '';
    const start = Date.UTC(
      +date.slice(0, 4),
      +date.slice(4, 6) - 1,
      +date.slice(6, 8),
      +date.slice(9, 11),
      +date.slice(11, 13),
      +date.slice(13, 15),
    );
    const end = start + Number(params.get('X-Goog-Expires')) * 1000;
    expect(end).toBeLessThanOrEqual(now + 1);
    await new Promise(resolve => setTimeout(resolve, Math.max(0, end - Date.now() + 5)));
    const err = await xmlErrorOf(await fetch(url));
    expect(err).toMatchObject({status: 400, code: 'ExpiredToken'});
    expect(err.body).toContain('<Message>The provided token has expired.</Message>');
  });

  test('a production-shaped URL (15 min) works until its expiry on the server clock, then 400', async () => {
    await signedFile('clock.txt').save('c', {resumable: false});
    const url = await signRead('clock.txt');
    server.setClock(() => Date.now() + 14 * 60_000);
    expect((await fetch(url)).status).toBe(200);
    server.setClock(() => Date.now() + 15 * 60_000 + 1000);
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 400, code: 'ExpiredToken'});
    server.setClock(undefined);
    expect((await fetch(url)).status).toBe(200);
  });

  test('signers must be trusted, and the key must be the trusted one', async () => {
    await signedFile('s.txt').save('s', {resumable: false});
    const stranger = newServiceAccount('stranger');
    const [strangerUrl] = await keyFileStorage(stranger)
      .bucket(BUCKET)
      .file('s.txt')
      .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000});
    expect(await xmlErrorOf(await fetch(strangerUrl))).toMatchObject({status: 403, code: 'AccessDenied'});

    // The trusted email, but signed with some other key.
    const impostor = {email: account.email, privateKey: stranger.privateKey};
    const [impostorUrl] = await keyFileStorage(impostor)
      .bucket(BUCKET)
      .file('s.txt')
      .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000});
    expect(await xmlErrorOf(await fetch(impostorUrl))).toMatchObject({
      status: 403,
      code: 'SignatureDoesNotMatch',
    });

    // A second key for the same account is accepted alongside the first.
    server.trustSigner(account.email, stranger.publicKey);
    expect((await fetch(impostorUrl)).status).toBe(200);
  });

  test('the Host header is part of the signature', async () => {
    await signedFile('h.txt').save('h', {resumable: false});
    const url = await signRead('h.txt');
    expect((await getWithHost(url, 'storage.googleapis.com')).status).toBe(403);

    // A client on the real endpoint signs host:storage.googleapis.com. Sent here, the URL verifies
    // only if the request carries that Host header, as it would reaching GCS.
    const [googleUrl] = await keyFileStorage(account, 'google')
      .bucket(BUCKET)
      .file('h.txt')
      .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000});
    expect(new URL(googleUrl).origin).toBe('https://storage.googleapis.com');
    const local = new URL(googleUrl);
    const serverUrl = new URL(server.url);
    local.protocol = serverUrl.protocol;
    local.host = serverUrl.host;
    expect(await xmlErrorOf(await fetch(local))).toMatchObject({status: 403, code: 'SignatureDoesNotMatch'});
    const asIfAtGoogle = await getWithHost(local.href, 'storage.googleapis.com');
    expect(asIfAtGoogle).toEqual({status: 200, body: 'h'});
  });

  test('malformed authentication parameters are 400 MalformedSecurityHeader; signed writes are 501', async () => {
    await signedFile('m.txt').save('m', {resumable: false});
    const url = await signRead('m.txt');
    for (const [name, value] of [
      ['X-Goog-Expires', 'soon'],
      ['X-Goog-Expires', '604801'],
      ['X-Goog-Date', '2024-01-01'],
      ['X-Goog-Credential', 'someone@example.com'],
      ['X-Goog-Signature', 'not-hex'],
      ['X-Goog-Algorithm', 'GOOG4-RSA-SHA1'],
      ['X-Goog-Date', ''],
    ] as const) {
      const err = await xmlErrorOf(await fetch(withParam(url, name, value)));
      expect({name, value, ...err}).toMatchObject({status: 400, code: 'MalformedSecurityHeader'});
      expect(err.body).toContain(`<ParameterName>${name}</ParameterName>`);
    }
    const [writeUrl] = await signedFile('w.txt').getSignedUrl({
      version: 'v4',
      action: 'write',
      expires: Date.now() + 60_000,
    });
    const put = await fetch(writeUrl, {method: 'PUT', body: 'w'});
    expect(await xmlErrorOf(put)).toMatchObject({status: 501, code: 'NotImplemented'});
    expect(server.getObject(BUCKET, 'w.txt')).toBeUndefined();
  });

  test('signed parameters beyond authentication, and methods other than GET, are 501', async () => {
    await signedFile('x.txt').save('x', {resumable: false});
    const withDisposition = await signRead('x.txt', {responseDisposition: 'attachment'});
    expect(await xmlErrorOf(await fetch(withDisposition))).toMatchObject({
      status: 501,
      code: 'NotImplemented',
    });
    const head = await fetch(await signRead('x.txt'), {method: 'HEAD'});
    expect(head.status).toBe(501);
    const moreHeaders = withParam(await signRead('x.txt'), 'X-Goog-SignedHeaders', 'host;x-extra');
    expect(await xmlErrorOf(await fetch(moreHeaders))).toMatchObject({status: 501, code: 'NotImplemented'});
  });

  test('faults injected for downloads hit signed reads too, as XML errors', async () => {
    await signedFile('f.txt').save('f', {resumable: false});
    const url = await signRead('f.txt');
    server.injectFault({op: 'download', status: 503});
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 503, code: 'ServiceUnavailable'});
    server.injectFault({op: 'download', status: 500});
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 500, code: 'InternalError'});
    server.injectFault({op: 'download', status: 429});
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 429, code: 'InvalidArgument'});
    expect((await fetch(url)).status).toBe(200);
  });
});

import {createHash, generateKeyPairSync, randomBytes} from 'node:crypto';
import {request as httpRequest} from 'node:http';
import {Readable} from 'node:stream';
import {pipeline} from 'node:stream/promises';
import {ApiError, Storage, type File, type GetFilesResponse} from '@google-cloud/storage';
import {GcsImageStore} from '../../src/adapters/gcs-image-store';
import {FAST_RETRY_OPTIONS, startGcsTestServer, storageClientFor, type GcsTestServer} from './gcs-server';

const BUCKET = 'test-bucket';

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

const file = (name: string): File => storage.bucket(BUCKET).file(name);
const md5 = (data: Buffer) => createHash('md5').update(data).digest('base64');

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

/** Low-level JSON API call without the client. */
async function raw(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, init);
}

describe('buckets', () => {
  test('known buckets exist and report their metadata; unknown ones 404', async () => {
    const [exists] = await storage.bucket(BUCKET).exists();
    expect(exists).toBe(true);
    const [metadata] = await storage.bucket(BUCKET).getMetadata();
    expect(metadata).toMatchObject({kind: 'storage#bucket', name: BUCKET, id: BUCKET});

    const [missing] = await storage.bucket('no-such-bucket').exists();
    expect(missing).toBe(false);
    const err = await apiErrorOf(storage.bucket('no-such-bucket').getMetadata());
    expect(err.code).toBe(404);
    expect(err.errors?.[0]?.reason).toBe('notFound');
  });

  test('uploads to an unknown bucket fail with 404', async () => {
    const err = await apiErrorOf(storage.bucket('nope').file('x').save('data', {resumable: false}));
    expect(err.code).toBe(404);
  });

  test('createBucket through the client and the test API', async () => {
    const [bucket] = await storage.createBucket('made-by-client');
    expect(bucket.name).toBe('made-by-client');
    const [again] = await storage.bucket('made-by-client').exists();
    expect(again).toBe(true);
    const conflict = await apiErrorOf(storage.createBucket('made-by-client'));
    expect(conflict.code).toBe(409);
  });
});

describe('uploads and downloads', () => {
  test('multipart upload (resumable: false) round-trips bytes, contentType and custom metadata', async () => {
    const data = randomBytes(100_000);
    await file('images/a.png').save(data, {
      resumable: false,
      contentType: 'image/png',
      metadata: {cacheControl: 'public, max-age=60', metadata: {jobId: 'job-1', index: 3}},
    });
    const [downloaded] = await file('images/a.png').download();
    expect(downloaded.equals(data)).toBe(true);

    const [md] = await file('images/a.png').getMetadata();
    expect(md).toMatchObject({
      kind: 'storage#object',
      name: 'images/a.png',
      bucket: BUCKET,
      contentType: 'image/png',
      cacheControl: 'public, max-age=60',
      size: String(data.length),
      md5Hash: md5(data),
      metadata: {jobId: 'job-1', index: '3'},
      metageneration: '1',
    });
    expect(md.generation).toMatch(/^\d+$/);
    const stored = server.getObject(BUCKET, 'images/a.png');
    expect(stored?.data.equals(data)).toBe(true);
    expect(stored?.crc32c).toBe(md.crc32c);
  });

  test('resumable upload via save() round-trips bytes and metadata', async () => {
    const data = randomBytes(300_000);
    await file('r/one.bin').save(data, {
      resumable: true,
      contentType: 'application/x-test',
      metadata: {metadata: {k: 'v'}},
    });
    const [downloaded] = await file('r/one.bin').download();
    expect(downloaded.equals(data)).toBe(true);
    const [md] = await file('r/one.bin').getMetadata();
    expect(md.contentType).toBe('application/x-test');
    expect(md.metadata).toEqual({k: 'v'});
  });

  test('uploadType=media (not used by the client) stores the body; the client reads it back', async () => {
    const data = randomBytes(2048);
    const res = await raw(
      `/upload/storage/v1/b/${BUCKET}/o?uploadType=media&name=${encodeURIComponent('media/x y.bin')}`,
      {
        method: 'POST',
        headers: {'content-type': 'application/x-media'},
        body: data,
      },
    );
    expect(res.status).toBe(200);
    const resource = (await res.json()) as Record<string, unknown>;
    expect(resource).toMatchObject({name: 'media/x y.bin', size: '2048', contentType: 'application/x-media'});
    const [downloaded] = await file('media/x y.bin').download();
    expect(downloaded.equals(data)).toBe(true);
  });

  test('hand-made multipart body on the /storage/v1 path (without /upload) is accepted too', async () => {
    const boundary = 'b0undary';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n`),
      Buffer.from(JSON.stringify({name: 'hand/made.txt', metadata: {x: '1'}})),
      Buffer.from(
        `\r\n--${boundary}\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--${boundary}--\r\n`,
      ),
    ]);
    const res = await raw(`/storage/v1/b/${BUCKET}/o?uploadType=multipart`, {
      method: 'POST',
      headers: {'content-type': `multipart/related; boundary=${boundary}`},
      body,
    });
    expect(res.status).toBe(200);
    const stored = server.getObject(BUCKET, 'hand/made.txt');
    expect(stored?.data.toString()).toBe('line1\r\nline2');
    expect(stored?.contentType).toBe('text/plain');
    expect(stored?.metadata).toEqual({x: '1'});
  });

  test('chunked resumable upload (chunkSize) goes through 308 Resume Incomplete', async () => {
    const data = randomBytes(1024 * 1024 + 17);
    const before = server.requestCount;
    await pipeline(Readable.from([data]), file('chunked.bin').createWriteStream({chunkSize: 256 * 1024}));
    // 1 session POST + 5 chunk PUTs (4 full chunks and a 17-byte tail)
    expect(server.requestCount - before).toBeGreaterThanOrEqual(6);
    expect(server.getObject(BUCKET, 'chunked.bin')?.data.equals(data)).toBe(true);
  });

  test('resumable protocol: partial chunk → 308 with Range, status query, final chunk → object', async () => {
    const start = await raw(`/upload/storage/v1/b/${BUCKET}/o?uploadType=resumable&name=proto.txt`, {
      method: 'POST',
      headers: {'content-type': 'application/json', 'x-upload-content-type': 'text/plain'},
      body: JSON.stringify({metadata: {step: 'one'}}),
    });
    expect(start.status).toBe(200);
    const location = start.headers.get('location');
    expect(location).toContain(`${server.url}/upload/storage/v1/b/${BUCKET}/o?`);

    const first = await fetch(location as string, {
      method: 'PUT',
      headers: {'content-range': 'bytes 0-9/*'},
      body: '0123456789',
      redirect: 'manual',
    });
    expect(first.status).toBe(308);
    expect(first.headers.get('range')).toBe('bytes=0-9');

    const status = await fetch(location as string, {
      method: 'PUT',
      headers: {'content-range': 'bytes */*'},
      redirect: 'manual',
    });
    expect(status.status).toBe(308);
    expect(status.headers.get('range')).toBe('bytes=0-9');

    const last = await fetch(location as string, {
      method: 'PUT',
      headers: {'content-range': 'bytes 10-14/15'},
      body: 'abcde',
    });
    expect(last.status).toBe(200);
    expect(await last.json()).toMatchObject({
      name: 'proto.txt',
      size: '15',
      contentType: 'text/plain',
      metadata: {step: 'one'},
    });

    // The finished session keeps answering with the object.
    const after = await fetch(location as string, {method: 'PUT', headers: {'content-range': 'bytes */15'}});
    expect(after.status).toBe(200);
    expect(server.getObject(BUCKET, 'proto.txt')?.data.toString()).toBe('0123456789abcde');
  });

  test('createWriteStream streams ~5 MB', async () => {
    const chunk = randomBytes(64 * 1024);
    const chunks = Array.from({length: 80}, (_, i) => Buffer.concat([chunk, Buffer.from([i])]));
    const expected = Buffer.concat(chunks);
    const writable = file('big/stream.bin').createWriteStream({contentType: 'application/octet-stream'});
    await pipeline(Readable.from(chunks), writable);
    const stored = server.getObject(BUCKET, 'big/stream.bin');
    expect(stored?.data.length).toBe(expected.length);
    expect(stored?.md5Hash).toBe(md5(expected));
    const before = server.requestCount;
    const downloaded = await readAll(file('big/stream.bin').createReadStream());
    expect(downloaded.equals(expected)).toBe(true);
    expect(server.requestCount - before).toBe(1);
  });

  test('empty objects upload and download with every upload type', async () => {
    await file('empty-multipart').save(Buffer.alloc(0), {resumable: false});
    await file('empty-resumable').save(Buffer.alloc(0), {resumable: true});
    for (const name of ['empty-multipart', 'empty-resumable']) {
      const [data] = await file(name).download();
      expect(data.length).toBe(0);
      expect(server.getObject(BUCKET, name)?.crc32c).toBe('AAAAAA==');
    }
  });

  test('gzip uploads are stored compressed and downloaded decompressed', async () => {
    const text = Buffer.from('hello '.repeat(5000));
    await file('doc.txt').save(text, {resumable: false, gzip: true, contentType: 'text/plain'});
    const stored = server.getObject(BUCKET, 'doc.txt');
    expect(stored?.contentEncoding).toBe('gzip');
    expect(stored?.data.length).toBeLessThan(text.length);
    const [downloaded] = await file('doc.txt').download();
    expect(downloaded.equals(text)).toBe(true);
  });

  test('ranged reads return 206 slices', async () => {
    const data = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
    await file('range.txt').save(data, {resumable: false});
    const [middle] = await file('range.txt').download({start: 10, end: 19});
    expect(middle.toString()).toBe('abcdefghij');
    const fromOffset = await readAll(file('range.txt').createReadStream({start: 30}));
    expect(fromOffset.toString()).toBe('uvwxyz');
    const tail = await readAll(file('range.txt').createReadStream({end: -4}));
    expect(tail.toString()).toBe('wxyz');

    const res = await raw(`/storage/v1/b/${BUCKET}/o/range.txt?alt=media`, {headers: {range: 'bytes=5-7'}});
    expect(res.status).toBe(206);
    expect(res.headers.get('content-range')).toBe('bytes 5-7/36');
    expect(await res.text()).toBe('567');
    const beyond = await raw(`/storage/v1/b/${BUCKET}/o/range.txt?alt=media`, {
      headers: {range: 'bytes=99-'},
    });
    expect(beyond.status).toBe(416);
  });

  test('downloads carry x-goog-hash, generation and length headers; /download path and mediaLink work', async () => {
    const data = randomBytes(1000);
    await file('dir/h.bin').save(data, {resumable: false, contentType: 'application/x-h'});
    const [md] = await file('dir/h.bin').getMetadata();
    const res = await raw(`/download/storage/v1/b/${BUCKET}/o/${encodeURIComponent('dir/h.bin')}?alt=media`);
    expect(res.status).toBe(200);
    expect(res.headers.get('x-goog-hash')).toBe(`crc32c=${md.crc32c},md5=${md.md5Hash}`);
    expect(res.headers.get('x-goog-generation')).toBe(String(md.generation));
    expect(res.headers.get('content-type')).toBe('application/x-h');
    expect(res.headers.get('content-length')).toBe('1000');
    expect(Buffer.from(await res.arrayBuffer()).equals(data)).toBe(true);
    const viaMediaLink = await fetch(md.mediaLink as string);
    expect(Buffer.from(await viaMediaLink.arrayBuffer()).equals(data)).toBe(true);
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

describe('metadata, existence and deletion', () => {
  test('setMetadata merges custom metadata, null removes a key, metageneration bumps', async () => {
    await file('m.json').save('{}', {
      resumable: false,
      contentType: 'application/json',
      metadata: {metadata: {a: '1', b: '2'}},
    });
    const [md] = await file('m.json').setMetadata({metadata: {b: null, c: '3'}, cacheControl: 'no-cache'});
    expect(md.metadata).toEqual({a: '1', c: '3'});
    expect(md.cacheControl).toBe('no-cache');
    expect(md.metageneration).toBe('2');
    const [again] = await file('m.json').getMetadata();
    expect(again.metadata).toEqual({a: '1', c: '3'});
    expect(again.contentType).toBe('application/json');
    expect(server.getObject(BUCKET, 'm.json')?.metadata).toEqual({a: '1', c: '3'});
  });

  test('exists(), delete() and 404 afterwards', async () => {
    await file('gone.txt').save('bye', {resumable: false});
    expect((await file('gone.txt').exists())[0]).toBe(true);
    await file('gone.txt').delete();
    expect((await file('gone.txt').exists())[0]).toBe(false);
    expect(server.getObject(BUCKET, 'gone.txt')).toBeUndefined();

    const metaErr = await apiErrorOf(file('gone.txt').getMetadata());
    expect(metaErr.code).toBe(404);
    expect(metaErr.message).toBe(`No such object: ${BUCKET}/gone.txt`);
    const deleteErr = await apiErrorOf(file('gone.txt').delete());
    expect(deleteErr.code).toBe(404);
    const downloadErr = await apiErrorOf(file('gone.txt').download());
    expect(downloadErr.code).toBe(404);
  });

  test('404 bodies have the GCS JSON error shape', async () => {
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

  test('fields selects a partial response', async () => {
    await file('f/1').save('x', {resumable: false});
    const res = await raw(
      `/storage/v1/b/${BUCKET}/o?fields=${encodeURIComponent('items(name,size),nextPageToken')}`,
    );
    expect(await res.json()).toEqual({items: [{name: 'f/1', size: '1'}]});
    const nested = await raw(`/storage/v1/b/${BUCKET}/o?fields=${encodeURIComponent('kind,items/name')}`);
    expect(await nested.json()).toEqual({kind: 'storage#objects', items: [{name: 'f/1'}]});
  });
});

describe('preconditions', () => {
  test('ifGenerationMatch: 0 on an existing object → 412 (multipart and resumable)', async () => {
    await file('once.txt').save('first', {resumable: false, preconditionOpts: {ifGenerationMatch: 0}});
    const err = await apiErrorOf(
      file('once.txt').save('second', {resumable: false, preconditionOpts: {ifGenerationMatch: 0}}),
    );
    expect(err.code).toBe(412);
    expect(err.errors?.[0]?.reason).toBe('conditionNotMet');

    // The resumable path fails when creating the session; gaxios reports it as GaxiosError.status.
    const resumableErr = (await rejectionOf(
      file('once.txt').save('second', {resumable: true, preconditionOpts: {ifGenerationMatch: 0}}),
    )) as {status?: number};
    expect(resumableErr.status).toBe(412);
    expect(server.getObject(BUCKET, 'once.txt')?.data.toString()).toBe('first');
  });

  test('ifGenerationMatch with the current generation succeeds; a stale one fails', async () => {
    await file('g.txt').save('v1', {resumable: false});
    const generation = server.getObject(BUCKET, 'g.txt')?.generation as string;
    await file('g.txt').save('v2', {resumable: false, preconditionOpts: {ifGenerationMatch: generation}});
    const stale = await apiErrorOf(
      file('g.txt').save('v3', {resumable: false, preconditionOpts: {ifGenerationMatch: generation}}),
    );
    expect(stale.code).toBe(412);
    expect(server.getObject(BUCKET, 'g.txt')?.data.toString()).toBe('v2');
    expect(server.getObject(BUCKET, 'g.txt')?.generation).not.toBe(generation);
  });

  test('ifMetagenerationMatch on patch and ifGenerationMatch on delete', async () => {
    await file('p.txt').save('x', {resumable: false});
    const patchErr = await apiErrorOf(
      file('p.txt').setMetadata({metadata: {a: '1'}}, {ifMetagenerationMatch: 7}),
    );
    expect(patchErr.code).toBe(412);
    await file('p.txt').setMetadata({metadata: {a: '1'}}, {ifMetagenerationMatch: 1});
    expect(server.getObject(BUCKET, 'p.txt')?.metageneration).toBe('2');

    const deleteErr = await apiErrorOf(file('p.txt').delete({ifGenerationMatch: 1}));
    expect(deleteErr.code).toBe(412);
    await file('p.txt').delete({ifGenerationMatch: server.getObject(BUCKET, 'p.txt')?.generation});
    expect(server.getObject(BUCKET, 'p.txt')).toBeUndefined();
  });

  test('ifGenerationNotMatch on upload', async () => {
    await file('n.txt').save('x', {resumable: false});
    const generation = server.getObject(BUCKET, 'n.txt')?.generation as string;
    const err = await apiErrorOf(
      file('n.txt').save('y', {resumable: false, preconditionOpts: {ifGenerationNotMatch: generation}}),
    );
    expect(err.code).toBe(412);
  });
});

describe('listing', () => {
  test('prefix + maxResults pagination with pageToken, in lexicographic order', async () => {
    const names = ['p/e', 'p/a', 'p/c', 'p/b', 'p/d', 'p/f', 'p/g', 'q/other'];
    await Promise.all(names.map(n => file(n).save(n, {resumable: false})));

    const seen: string[] = [];
    let query: Record<string, unknown> | null = {prefix: 'p/', maxResults: 3, autoPaginate: false};
    let pages = 0;
    while (query) {
      const [files, nextQuery]: GetFilesResponse = await storage.bucket(BUCKET).getFiles(query);
      pages += 1;
      expect(files.length).toBeLessThanOrEqual(3);
      seen.push(...files.map(f => f.name));
      query = nextQuery ? {...(nextQuery as Record<string, unknown>)} : null;
      expect(query === null || typeof query.pageToken === 'string').toBe(true);
    }
    expect(pages).toBe(3);
    expect(seen).toEqual(['p/a', 'p/b', 'p/c', 'p/d', 'p/e', 'p/f', 'p/g']);

    // With autoPaginate the client's paginator treats maxResults as a total cap, not a page size.
    const [capped] = await storage.bucket(BUCKET).getFiles({prefix: 'p/', maxResults: 2});
    expect(capped.map(f => f.name)).toEqual(['p/a', 'p/b']);
    const [all] = await storage.bucket(BUCKET).getFiles({prefix: 'p/'});
    expect(all.map(f => f.name)).toEqual(seen);
    expect(server.listObjectNames(BUCKET, 'p/')).toEqual(seen);
  });

  test('delimiter rolls names up into prefixes', async () => {
    const names = ['d/top.txt', 'd/x/1', 'd/x/2', 'd/y/1', 'd/z.txt', 'e/1'];
    await Promise.all(names.map(n => file(n).save(n, {resumable: false})));
    const [files, , response] = await storage
      .bucket(BUCKET)
      .getFiles({prefix: 'd/', delimiter: '/', autoPaginate: false});
    expect(files.map(f => f.name)).toEqual(['d/top.txt', 'd/z.txt']);
    expect((response as {prefixes?: string[]}).prefixes).toEqual(['d/x/', 'd/y/']);

    // Prefixes count towards maxResults and survive pagination.
    const res1 = (await (
      await raw(`/storage/v1/b/${BUCKET}/o?prefix=d/&delimiter=/&maxResults=2`)
    ).json()) as Record<string, unknown>;
    expect(res1).toMatchObject({prefixes: ['d/x/']});
    expect((res1.items as Array<{name: string}>).map(i => i.name)).toEqual(['d/top.txt']);
    const res2 = (await (
      await raw(
        `/storage/v1/b/${BUCKET}/o?prefix=d/&delimiter=/&maxResults=2&pageToken=${res1.nextPageToken as string}`,
      )
    ).json()) as Record<string, unknown>;
    expect(res2.prefixes).toEqual(['d/y/']);
    expect((res2.items as Array<{name: string}>).map(i => i.name)).toEqual(['d/z.txt']);
    expect(res2.nextPageToken).toBeUndefined();
  });
});

describe('fault injection', () => {
  test('an injected status surfaces as ApiError with that status, once by default', async () => {
    await file('f.txt').save('x', {resumable: false});
    server.injectFault({op: 'download', status: 503});
    const err = await apiErrorOf(file('f.txt').download());
    expect(err.code).toBe(503);
    const [data] = await file('f.txt').download();
    expect(data.toString()).toBe('x');
  });

  test('faults apply by operation and object name, `times` and probability', async () => {
    await file('keep/a').save('a', {resumable: false});
    await file('hit/b').save('b', {resumable: false});
    server.injectFault({op: 'metadata', status: 429, objectNameMatches: /^hit\//}, {times: 2});
    await expect(file('keep/a').getMetadata()).resolves.toBeDefined();
    expect((await apiErrorOf(file('hit/b').getMetadata())).code).toBe(429);
    expect((await apiErrorOf(file('hit/b').getMetadata())).code).toBe(429);
    await expect(file('hit/b').getMetadata()).resolves.toBeDefined();

    server.injectFault({op: 'upload', status: 500}, {probability: 1});
    for (let i = 0; i < 3; i++) {
      expect((await apiErrorOf(file(`u${i}`).save('x', {resumable: false}))).code).toBe(500);
    }
    server.clearFaults();
    await file('u0').save('x', {resumable: false});
    expect(server.listObjectNames(BUCKET, 'u')).toEqual(['u0']);
  });

  test('faults on list, patch, delete and any', async () => {
    await file('o').save('x', {resumable: false});
    server.injectFault({op: 'list', status: 502});
    expect((await apiErrorOf(storage.bucket(BUCKET).getFiles())).code).toBe(502);
    server.injectFault({op: 'patch', status: 403});
    expect((await apiErrorOf(file('o').setMetadata({metadata: {a: 'b'}}))).code).toBe(403);
    server.injectFault({op: 'delete', status: 500});
    expect((await apiErrorOf(file('o').delete())).code).toBe(500);
    server.injectFault({op: 'any'});
    expect((await apiErrorOf(storage.bucket(BUCKET).getMetadata())).code).toBe(503);
    expect(server.getObject(BUCKET, 'o')).toBeDefined();
  });

  test('a failing resumable chunk is reported (not as ApiError: the client wraps it)', async () => {
    server.injectFault({op: 'upload', status: 503, objectNameMatches: /^res$/}, {times: 2});
    const err = await rejectionOf(file('res').save(randomBytes(10), {resumable: true}));
    // The session POST fails with 503 → GaxiosError with .status
    expect((err as {status?: number}).status).toBe(503);
    expect(server.getObject(BUCKET, 'res')).toBeUndefined();
  });

  test('delayMs delays and then answers normally', async () => {
    await file('slow').save('x', {resumable: false});
    server.injectFault({op: 'metadata', delayMs: 150});
    const started = Date.now();
    const [md] = await file('slow').getMetadata();
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(md.name).toBe('slow');
  });

  test('resetConnection surfaces as a network error', async () => {
    await file('r').save('x', {resumable: false});
    server.injectFault({op: 'download', resetConnection: true});
    const err = (await rejectionOf(file('r').download())) as NodeJS.ErrnoException;
    expect(err).not.toBeInstanceOf(ApiError);
    expect(String(err.code ?? err.message)).toMatch(/ECONNRESET|socket hang up/i);
    server.injectFault({op: 'metadata', resetConnection: true});
    await expect(file('r').getMetadata()).rejects.toThrow(/ECONNRESET|socket hang up/i);
    await expect(file('r').getMetadata()).resolves.toBeDefined();
  });

  test('with retries enabled the client recovers from a single injected 503', async () => {
    const retrying = storageClientFor(server, {retryOptions: FAST_RETRY_OPTIONS});
    await file('retry.txt').save('payload', {resumable: false});

    // Not a download: on Node 24 a *streamed* GET that gets a retryable status makes teeny-request
    // call stream.pipeline() into the stream retry-request already destroyed, which now throws
    // ("Cannot pipe to a closed or destroyed stream") as an unhandled rejection.
    server.injectFault({op: 'metadata', status: 503});
    const before = server.requestCount;
    const [md] = await retrying.bucket(BUCKET).file('retry.txt').getMetadata();
    expect(md.size).toBe('7');
    expect(server.requestCount - before).toBe(2);

    // Uploads are retried only when idempotent (a generation precondition is set).
    server.injectFault({op: 'upload', status: 503});
    await retrying
      .bucket(BUCKET)
      .file('retry-up.txt')
      .save('up', {resumable: true, preconditionOpts: {ifGenerationMatch: 0}});
    expect(server.getObject(BUCKET, 'retry-up.txt')?.data.toString()).toBe('up');
  });
});

describe('server behaviour', () => {
  test('50 parallel saves', async () => {
    const payloads = Array.from({length: 50}, (_, i) => randomBytes(1000 + i));
    await Promise.all(
      payloads.map((data, i) =>
        file(`par/${String(i).padStart(2, '0')}`).save(data, {resumable: i % 2 === 0}),
      ),
    );
    const names = server.listObjectNames(BUCKET, 'par/');
    expect(names).toHaveLength(50);
    payloads.forEach((data, i) => {
      expect(server.getObject(BUCKET, `par/${String(i).padStart(2, '0')}`)?.data.equals(data)).toBe(true);
    });
  });

  test('unsupported routes answer 501 with a JSON error', async () => {
    const batch = await raw('/batch/storage/v1', {method: 'POST', body: 'x'});
    expect(batch.status).toBe(501);
    expect(await batch.json()).toMatchObject({error: {code: 501, errors: [{reason: 'notImplemented'}]}});

    await file('c').save('x', {resumable: false});
    const copyErr = await apiErrorOf(file('c').copy('c2'));
    expect(copyErr.code).toBe(501);
  });

  test('reset() deletes objects but keeps buckets; requestCount counts requests', async () => {
    await file('x').save('x', {resumable: false});
    expect(server.requestCount).toBeGreaterThan(0);
    server.reset();
    expect(server.requestCount).toBe(0);
    expect(server.getObject(BUCKET, 'x')).toBeUndefined();
    expect((await storage.bucket(BUCKET).exists())[0]).toBe(true);
    expect(server.requestCount).toBe(1);
  });

  test('STORAGE_EMULATOR_HOST pointing at the server also works', async () => {
    const previous = process.env.STORAGE_EMULATOR_HOST;
    process.env.STORAGE_EMULATOR_HOST = server.url;
    try {
      const viaEnv = storageClientFor(server);
      await viaEnv.bucket(BUCKET).file('env.txt').save('env', {resumable: false});
      const [data] = await viaEnv.bucket(BUCKET).file('env.txt').download();
      expect(data.toString()).toBe('env');
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
    expect(response.headers.get('etag')).toBe(`"${createHash('md5').update(data).digest('hex')}"`);
    expect(Buffer.from(await response.arrayBuffer()).equals(data)).toBe(true);

    const ranged = await fetch(url, {headers: {range: 'bytes=10-19'}});
    expect(ranged.status).toBe(206);
    expect(Buffer.from(await ranged.arrayBuffer()).equals(data.subarray(10, 20))).toBe(true);
  });

  test('GcsImageStore.signedReadUrl (the production adapter) mints a working URL', async () => {
    const store = new GcsImageStore(signing.bucket(BUCKET));
    await store.put('jobs/j1/0.webp', Buffer.from('webp bytes'), {
      contentType: 'image/webp',
      metadata: {jobId: 'j1'},
    });
    const {url, expiresAt} = await store.signedReadUrl('jobs/j1/0.webp', 600);
    expect(expiresAt.getTime()).toBeGreaterThan(Date.now());
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('image/webp');
    expect(await response.text()).toBe('webp bytes');
  });

  test('object names that need encoding verify (the canonical URI is rebuilt as the client encodes it)', async () => {
    const name = "dir/ü ñ+(1)*!'~ [x]&y=z?.png";
    await signedFile(name).save('odd name', {resumable: false, contentType: 'text/plain'});
    const url = await signRead(name, {responseDisposition: 'attachment; filename="x y.png"'});
    expect(new URL(url).pathname).toBe(
      `/${BUCKET}/dir/%C3%BC%20%C3%B1%2B%281%29%2A%21%27~%20%5Bx%5D%26y%3Dz%3F.png`,
    );
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('odd name');
    expect(response.headers.get('content-disposition')).toBe('attachment; filename="x y.png"');
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

    // Any signed part changed: the expiry (longer), or the method (a GET URL does not allow HEAD).
    expect(await xmlErrorOf(await fetch(withParam(url, 'X-Goog-Expires', '3600')))).toMatchObject({
      status: 403,
      code: 'SignatureDoesNotMatch',
    });
    const head = await fetch(url, {method: 'HEAD'});
    expect(head.status).toBe(403);
    // The untouched URL still works.
    expect((await fetch(url)).status).toBe(200);
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

  test('HEAD needs a URL signed for HEAD', async () => {
    const data = Buffer.from('head me');
    await signedFile('head.txt').save(data, {resumable: false, contentType: 'text/plain'});
    const f = signedFile('head.txt');
    await f.getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000}); // creates f.signer, the client's URLSigner
    const signer = f.signer;
    if (!signer) throw new Error('expected file.signer after getSignedUrl()');
    // The client has no 'head' action; its signer takes any method.
    const headUrl = await signer.getSignedUrl({
      method: 'HEAD' as 'GET',
      version: 'v4',
      expires: Date.now() + 60_000,
    });
    const response = await fetch(headUrl, {method: 'HEAD'});
    expect(response.status).toBe(200);
    expect(response.headers.get('content-length')).toBe(String(data.length));
    expect(response.headers.get('content-type')).toBe('text/plain');
    expect((await fetch(headUrl)).status).toBe(403); // and that URL does not allow GET
  });

  test('malformed authentication parameters are 400 MalformedSecurityHeader; signed writes are not served', async () => {
    await signedFile('m.txt').save('m', {resumable: false});
    const url = await signRead('m.txt');
    for (const [name, value] of [
      ['X-Goog-Expires', 'soon'],
      ['X-Goog-Expires', '604801'],
      ['X-Goog-Date', '2024-01-01'],
      ['X-Goog-Credential', 'someone@example.com'],
      ['X-Goog-Signature', 'not-hex'],
      ['X-Goog-Algorithm', 'GOOG4-RSA-SHA1'],
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

  test('faults injected for downloads hit signed reads too, as XML errors', async () => {
    await signedFile('f.txt').save('f', {resumable: false});
    const url = await signRead('f.txt');
    server.injectFault({op: 'download', status: 503});
    expect(await xmlErrorOf(await fetch(url))).toMatchObject({status: 503, code: 'ServiceUnavailable'});
    expect((await fetch(url)).status).toBe(200);
  });
});

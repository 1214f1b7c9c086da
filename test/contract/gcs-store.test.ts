import {GcsObjectStore} from '../../src/adapters/gcs/object-store';
import {startGcsTestServer, storageClientFor, type GcsTestServer} from '../support/gcs-server';
import {objectStoreContract} from './store-contract';

describe('Cloud Storage (GCS JSON-API test server)', () => {
  let server: GcsTestServer;
  beforeAll(async () => {
    server = await startGcsTestServer({buckets: ['contract-bucket']});
  });
  afterAll(() => server.close());

  objectStoreContract(
    'Cloud Storage',
    () => new GcsObjectStore(storageClientFor(server).bucket('contract-bucket')),
  );

  test('objects carry an immutable Cache-Control', async () => {
    const store = new GcsObjectStore(storageClientFor(server).bucket('contract-bucket'));
    await store.put('images/cache/000-a.png', Buffer.from('x'), {contentType: 'image/png', metadata: {}});
    expect(server.getObject('contract-bucket', 'images/cache/000-a.png')?.cacheControl).toBe(
      'public, max-age=31536000, immutable',
    );
  });
  test('an SVG is stored to be downloaded, never shown as a page; other images are not', async () => {
    const store = new GcsObjectStore(storageClientFor(server).bucket('contract-bucket'));
    await store.put('images/svg/000-a.svg', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"/>'), {
      contentType: 'image/svg+xml',
      metadata: {},
    });
    await store.put('images/svg/001-b.png', Buffer.from('x'), {contentType: 'image/png', metadata: {}});
    expect(server.getObject('contract-bucket', 'images/svg/000-a.svg')?.contentDisposition).toBe(
      'attachment',
    );
    expect(server.getObject('contract-bucket', 'images/svg/001-b.png')?.contentDisposition).toBeUndefined();
  });
});

describe('Cloud Storage reads under faults', () => {
  let server: GcsTestServer;
  beforeAll(async () => {
    server = await startGcsTestServer({buckets: ['read-faults']});
  });
  afterAll(() => server.close());

  function store(): GcsObjectStore {
    const bucket = storageClientFor(server).bucket('read-faults');
    return new GcsObjectStore(bucket, {readBucket: bucket});
  }

  test('a transient download failure is retried before any byte is served', async () => {
    const s = store();
    await s.put('images/r/000-a.png', Buffer.from('payload'), {contentType: 'image/png', metadata: {}});
    server.injectFault({op: 'download', status: 503}, {times: 2});
    const stream = await s.read('images/r/000-a.png');
    const chunks: Buffer[] = [];
    for await (const chunk of stream!) chunks.push(Buffer.from(chunk as Buffer));
    expect(Buffer.concat(chunks).toString()).toBe('payload');
  });

  test('a download that keeps failing rejects instead of crashing the process', async () => {
    const s = store();
    await s.put('images/r/001-b.png', Buffer.from('payload'), {contentType: 'image/png', metadata: {}});
    server.injectFault({op: 'download', status: 503}, {times: 3});
    await expect(s.read('images/r/001-b.png')).rejects.toMatchObject({code: 503});
  });
});

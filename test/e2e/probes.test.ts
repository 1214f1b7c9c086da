import {randomUUID} from 'node:crypto';
import {mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {getJson, postJson, startFunction, type RunningFunction} from '../support/function-server';
import {firestoreForTests} from '../support/firestore';
import {startGcsTestServer} from '../support/gcs-server';
import {OpenApiValidator} from '../support/openapi-validator';
import {makeReadOnly} from '../support/read-only';

describe('readiness says which component is not ready, and why; liveness stays up', () => {
  const validator = new OpenApiValidator();
  const dirs: string[] = [];
  const running: RunningFunction[] = [];
  afterAll(async () => {
    await Promise.all(running.map(fn => fn.close()));
    for (const dir of dirs) rmSync(dir, {recursive: true, force: true});
  });
  const tempDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'imagegen-probes-'));
    dirs.push(dir);
    return dir;
  };
  const start = async (env: Record<string, string>) => {
    const fn = await startFunction(env);
    running.push(fn);
    return fn;
  };
  const probe = async (fn: RunningFunction, path: '/health' | '/ready') => {
    const response = await getJson(`${fn.url}${path}`);
    validator.check('GET', `${fn.url}${path}`, response.status, response.body);
    return response;
  };

  test('a missing OpenAI key makes ready 503 with a reason; health is 200', async () => {
    const fn = await start({DATA_DIR: tempDir()});
    const ready = await probe(fn, '/ready');
    expect(ready.status).toBe(503);
    expect(ready.body).toMatchObject({
      status: 'unavailable',
      api_key_configured: false,
      openai: {ok: false, reason: 'OPENAI_API_KEY is not set'},
      storage: {kind: 'local', ok: true},
      metadata: {kind: 'local', ok: true},
    });
    expect((await probe(fn, '/health')).body).toMatchObject({status: 'healthy', api_key_configured: false});
  });

  test('a read-only DATA_DIR makes ready 503 naming each store that cannot be written', async () => {
    const dataDir = tempDir();
    const undo = makeReadOnly(dataDir);
    if (!undo) {
      console.warn('No way to make a directory read-only here; the read-only DATA_DIR case is not checked');
      return;
    }
    try {
      const fn = await start({DATA_DIR: dataDir, OPENAI_API_KEY: 'sk-test-key'});
      const ready = await probe(fn, '/ready');
      expect(ready.status).toBe(503);
      expect(ready.body).toMatchObject({
        status: 'unavailable',
        openai: {ok: true},
        storage: {
          kind: 'local',
          ok: false,
          reason: expect.stringMatching(/^is not writable \((EACCES|EPERM|EROFS)\)$/),
        },
        metadata: {
          kind: 'local',
          ok: false,
          reason: expect.stringMatching(/^(does not answer|is not writable)/),
        },
      });
      expect(JSON.stringify(ready.body)).not.toContain(dataDir);
      expect((await probe(fn, '/health')).status).toBe(200);
    } finally {
      undo();
    }
  });

  test('a bucket the runtime account may not write to makes ready 503; Firestore takes its probe write', async () => {
    const gcs = await startGcsTestServer({buckets: ['ready-bucket']});
    const projectId = `probes-${randomUUID().slice(0, 8)}`;
    const db = firestoreForTests(projectId);
    try {
      const fn = await start({
        OPENAI_API_KEY: 'sk-test-key',
        GCS_BUCKET: 'ready-bucket',
        STORAGE_EMULATOR_HOST: gcs.url,
        GOOGLE_CLOUD_PROJECT: projectId,
      });
      const ready = await probe(fn, '/ready');
      expect([ready.status, ready.body.storage, ready.body.metadata]).toEqual([
        200,
        {kind: 'gcs', ok: true},
        {kind: 'firestore', ok: true},
      ]);
      gcs.denyPermissions('ready-bucket', ['storage.objects.create']);
      const denied = await probe(fn, '/ready');
      expect([denied.status, denied.body.storage]).toEqual([
        503,
        {kind: 'gcs', ok: false, reason: 'is not writable (missing storage.objects.create)'},
      ]);
      expect(denied.body.metadata).toEqual({kind: 'firestore', ok: true});
      // Neither check leaves anything behind.
      expect(gcs.listObjectNames('ready-bucket')).toEqual([]);
      expect((await db.collection('readiness').get()).size).toBe(0);
    } finally {
      await db.terminate();
      await gcs.close();
    }
  });
});

describe('a configuration error: health lists it, ready fails on it, every other route names it', () => {
  const validator = new OpenApiValidator();
  let fn: RunningFunction;
  beforeAll(async () => {
    fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      API_KEYS: 'alice:short-key,bob:bob-key-0123456789abcdef',
      DATA_DIR: '/tmp/unused-imagegen',
    });
  });
  afterAll(() => fn.close());
  const problem = /^API_KEYS: entry 1 must be name:key.*16\+ printable characters/;

  test('GET /health is 200 with config_errors', async () => {
    const {status, body} = await getJson(`${fn.url}/health`);
    validator.check('GET', `${fn.url}/health`, status, body);
    expect(status).toBe(200);
    expect(body).toMatchObject({status: 'healthy', api_key_configured: true, storage: {kind: 'local'}});
    expect(body.config_errors).toEqual([expect.stringMatching(problem)]);
    expect(JSON.stringify(body)).not.toContain('short-key');
  });

  test('GET /ready is 503 naming them', async () => {
    const {status, body} = await getJson(`${fn.url}/ready`);
    validator.check('GET', `${fn.url}/ready`, status, body);
    expect(status).toBe(503);
    expect(body).toMatchObject({status: 'unavailable', config_errors: [expect.stringMatching(problem)]});
  });

  test.each([
    ['GET', '/jobs'],
    ['POST', '/generate'],
    ['GET', '/nope'],
  ])('%s %s is 500 SERVICE_ERROR naming the variable', async (method, path) => {
    const response =
      method === 'POST'
        ? await postJson(`${fn.url}${path}`, {prompt: 'x'})
        : await getJson(`${fn.url}${path}`, {method});
    expect([response.status, response.body.code]).toEqual([500, 'SERVICE_ERROR']);
    expect(response.body.error).toMatch(/^Invalid configuration: API_KEYS: entry 1 must be name:key/);
    expect(response.body.details.config_errors).toEqual([expect.stringMatching(problem)]);
    expect(JSON.stringify(response.body)).not.toContain('short-key');
  });
});

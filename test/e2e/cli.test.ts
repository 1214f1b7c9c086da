import {mkdtempSync, rmSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {buildFunction, freePort, startFunctionProcess} from '../support/function-process';

/** The compiled function run by the Functions Framework's own CLI, each in its own process. */
describe('the compiled function under the Functions Framework CLI', () => {
  const outDir = join(__dirname, '../../.test-results', `dist-${process.pid}`);
  const dataDir = mkdtempSync(join(tmpdir(), 'imagegen-cli-'));
  let openai: FakeOpenAI;
  let gcs: GcsTestServer;

  beforeAll(async () => {
    buildFunction(outDir);
    openai = await startFakeOpenAI();
    gcs = await startGcsTestServer({buckets: ['cli-bucket']});
  }, 60_000);
  afterAll(async () => {
    await openai.close();
    await gcs.close();
    rmSync(outDir, {recursive: true, force: true});
    rmSync(dataDir, {recursive: true, force: true});
  });

  test('serves health and the legacy payload, and stops on SIGTERM', async () => {
    const fn = await startFunctionProcess(outDir, {
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir,
    });
    try {
      const health = await fetch(`${fn.url}/health`);
      expect(health.status).toBe(200);
      const response = await fetch(`${fn.url}/`, {
        method: 'POST',
        headers: {'content-type': 'application/json'},
        body: JSON.stringify({input: {body: {prompt_image: 'Image of a sunset over mountains'}}}),
      });
      const body = (await response.json()) as {image_url: string; images: {bytes: number}[]};
      expect(response.status).toBe(200);
      const image = await fetch(body.image_url);
      expect(Buffer.from(await image.arrayBuffer()).length).toBe(body.images[0]!.bytes);
      // One JSON line per request, in the shape Cloud Logging reads. The image's line is
      // written once its bytes are out, which may be just after the client has them all.
      const {pathname, search} = new URL(body.image_url);
      const imagePath = `${pathname}${search}`;
      for (let i = 0; i < 100 && !fn.output().includes(`"requestUrl":"${imagePath}"`); i++) {
        await new Promise(resolve => setTimeout(resolve, 20));
      }
      const access = fn
        .output()
        .split('\n')
        .filter(line => line.startsWith('{'))
        .map(
          line => JSON.parse(line) as {severity?: string; httpRequest?: {status: number; requestUrl: string}},
        )
        .filter(line => line.httpRequest);
      // The start-up poll may have asked /health more than once.
      const lines = access.map(line => [
        line.severity,
        line.httpRequest!.status,
        line.httpRequest!.requestUrl,
      ]);
      expect(lines.filter(line => line[2] !== '/health')).toEqual([
        ['INFO', 200, '/'],
        ['INFO', 200, imagePath],
      ]);
      expect(lines.filter(line => line[2] === '/health').length).toBeGreaterThanOrEqual(1);
    } finally {
      await fn.stop();
    }
  });

  test('with Firestore unreachable, generation ends in STORAGE_ERROR and leaves no object', async () => {
    const deadFirestore = `127.0.0.1:${await freePort()}`;
    const fn = await startFunctionProcess(outDir, {
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      GCS_BUCKET: 'cli-bucket',
      STORAGE_EMULATOR_HOST: gcs.url,
      GOOGLE_CLOUD_PROJECT: 'cli-project',
      FIRESTORE_EMULATOR_HOST: deadFirestore,
      FIRESTORE_TIMEOUT_SECONDS: '2',
      URL_MODE: 'proxy',
    });
    try {
      const response = await fetch(`${fn.url}/generate`, {
        method: 'POST',
        headers: {'content-type': 'application/json'},
        body: JSON.stringify({prompt: 'nowhere to record', count: 2}),
      });
      expect(response.status).toBe(503);
      expect(((await response.json()) as {code: string}).code).toBe('STORAGE_ERROR');
      expect(gcs.listObjectNames('cli-bucket')).toEqual([]);
      const ready = await fetch(`${fn.url}/ready`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({
        storage: {ok: true},
        metadata: {kind: 'firestore', ok: false},
      });
    } finally {
      await fn.stop();
    }
  }, 30_000);
});

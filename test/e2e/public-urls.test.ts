import {createServer, type Server} from 'node:http';
import type {AddressInfo} from 'node:net';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startFunction, type RunningFunction} from '../support/function-server';
import {freePort} from '../support/function-process';
import {errorOf, rawRequest} from '../support/raw-http';
import {useTempDir} from '../support/temp-dir';

/** A metadata server as Cloud Run has one: the instance's region (with the project number) and project. */
async function startMetadataServer(): Promise<{host: string; close(): Promise<void>}> {
  const server: Server = createServer((req, res) => {
    if (req.headers['metadata-flavor'] !== 'Google') return void res.writeHead(403).end();
    const answers: Record<string, string> = {
      '/computeMetadata/v1/instance/region': 'projects/123456789012/regions/europe-west1',
      '/computeMetadata/v1/project/project-id': 'my-project',
    };
    const answer = answers[req.url ?? ''];
    res.writeHead(answer ? 200 : 404, {'content-type': 'application/text'}).end(answer ?? '');
  });
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise(resolve => server.close(() => resolve())),
  };
}

describe('image URLs never point where a caller says', () => {
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let metadataServer: Awaited<ReturnType<typeof startMetadataServer>>;
  const running: RunningFunction[] = [];

  beforeAll(async () => {
    openai = await startFakeOpenAI();
    metadataServer = await startMetadataServer();
  });
  afterAll(async () => {
    await Promise.all(running.map(fn => fn.close()));
    await openai.close();
    await metadataServer.close();
  });

  async function start(env: Record<string, string>): Promise<RunningFunction> {
    const fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir(),
      ...env,
    });
    running.push(fn);
    return fn;
  }

  /** Generates with these headers (Host included, as sent) and gives the answer. */
  async function generate(fn: RunningFunction, headers: Record<string, string>) {
    const body = JSON.stringify({prompt: 'where do I live'});
    const response = await rawRequest(fn.url, {
      head: [
        'POST /generate HTTP/1.1',
        ...Object.entries({'Content-Type': 'application/json', ...headers}).map(([k, v]) => `${k}: ${v}`),
        `Content-Length: ${body.length}`,
      ].join('\r\n'),
      body,
    });
    return {status: response.status, body: JSON.parse(response.body)};
  }

  const evil = {
    Host: 'evil.example.com',
    'X-Forwarded-Host': 'evil.example.com',
    'X-Forwarded-Proto': 'https',
  };

  describe('off Cloud Run', () => {
    test('a foreign Host or X-Forwarded-Host gives localhost on the port the request came in on', async () => {
      const fn = await start({});
      const port = new URL(fn.url).port;
      const {status, body} = await generate(fn, evil);
      expect(status).toBe(200);
      expect(body.image_url).toBe(`http://localhost:${port}/images/${body.images[0].id}?job=${body.job_id}`);
    });

    test('a loopback Host is kept as the caller used it', async () => {
      const fn = await start({});
      const {body} = await generate(fn, {Host: 'localhost:4321'});
      expect(body.image_url).toBe(`http://localhost:4321/images/${body.images[0].id}?job=${body.job_id}`);
    });

    test("with TRUST_PROXY the nearest proxy's proto and host count, and must still be the function's", async () => {
      const fn = await start({TRUST_PROXY: 'true'});
      const port = new URL(fn.url).port;
      const nearest = await generate(fn, {
        Host: `127.0.0.1:${port}`,
        'X-Forwarded-Proto': 'http, https',
        'X-Forwarded-Host': 'evil.example.com, localhost:8443',
      });
      expect(nearest.body.image_url).toBe(
        `https://localhost:8443/images/${nearest.body.images[0].id}?job=${nearest.body.job_id}`,
      );
      const foreign = await generate(fn, evil);
      expect(foreign.body.image_url).toBe(
        `https://localhost:${port}/images/${foreign.body.images[0].id}?job=${foreign.body.job_id}`,
      );
    });

    test('PUBLIC_BASE_URL wins over everything', async () => {
      const fn = await start({PUBLIC_BASE_URL: 'https://img.example.org/base/', TRUST_PROXY: 'true'});
      const {body} = await generate(fn, evil);
      expect(body.image_url).toBe(
        `https://img.example.org/base/images/${body.images[0].id}?job=${body.job_id}`,
      );
    });
  });

  describe('on Cloud Run', () => {
    const cloudRun = () => ({
      K_SERVICE: 'imagegen',
      K_REVISION: 'imagegen-00001-abc',
      FUNCTION_TARGET: 'imageGen',
      GCE_METADATA_HOST: metadataServer.host,
    });
    const RUN_APP = 'https://imagegen-123456789012.europe-west1.run.app';

    test.each([
      ['a foreign host', evil],
      ['the cloudfunctions.net host of another region', {Host: 'us-central1-my-project.cloudfunctions.net'}],
      ['the cloudfunctions.net host of another project', {Host: 'europe-west1-other.cloudfunctions.net'}],
      ['a run.app host of another project', {Host: 'imagegen-999999999999.europe-west1.run.app'}],
      ['the service run.app host', {Host: 'imagegen-123456789012.europe-west1.run.app'}],
    ])('%s gives the service run.app URL from the metadata server', async (_case, headers) => {
      const fn = await start(cloudRun());
      const {body} = await generate(fn, headers);
      expect(body.image_url).toBe(`${RUN_APP}/images/${body.images[0].id}?job=${body.job_id}`);
    });

    test("the function's own cloudfunctions.net host is kept, with the function's name", async () => {
      const fn = await start({...cloudRun(), TRUST_PROXY: 'true'});
      const {body} = await generate(fn, {
        Host: 'imagegen-123456789012.europe-west1.run.app',
        'X-Forwarded-Host': 'europe-west1-my-project.cloudfunctions.net',
      });
      expect(body.image_url).toBe(
        `https://europe-west1-my-project.cloudfunctions.net/imageGen/images/${body.images[0].id}?job=${body.job_id}`,
      );
    });

    test('without the metadata server only the configured project cloudfunctions.net host is taken', async () => {
      const fn = await start({
        ...cloudRun(),
        GCE_METADATA_HOST: `127.0.0.1:${await freePort()}`,
        GOOGLE_CLOUD_PROJECT: 'my-project',
      });
      const own = await generate(fn, {Host: 'asia-east1-my-project.cloudfunctions.net'});
      expect(own.body.image_url).toBe(
        `https://asia-east1-my-project.cloudfunctions.net/imageGen/images/${own.body.images[0].id}?job=${own.body.job_id}`,
      );
      const response = await rawRequest(fn.url, {
        head: `GET /jobs/${own.body.job_id} HTTP/1.1\r\nHost: evil.example.com`,
      });
      expect(errorOf(response)).toMatchObject({status: 500, code: 'SERVICE_ERROR'});
      expect(errorOf(response).error).toMatch(/PUBLIC_BASE_URL/);
    });
  });
});

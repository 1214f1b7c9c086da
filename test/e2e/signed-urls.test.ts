import {createHash, generateKeyPairSync, randomUUID} from 'node:crypto';
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs';
import {tmpdir} from 'node:os';
import {join} from 'node:path';
import {GcsObjectStore} from '../../src/adapters/gcs/object-store';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {startGcsTestServer, type GcsTestServer} from '../support/gcs-server';
import {keylessStorageFor, startIamSigner} from '../support/iam-signer';
import {describeWithFirestore} from '../support/firestore';
import {getJson, postJson, startFunction, type RunningFunction} from '../support/function-server';

const BUCKET = 'signed-urls';

async function sha256Of(url: string): Promise<{status: number; sha256: string}> {
  const response = await fetch(url);
  const bytes = Buffer.from(await response.arrayBuffer());
  return {status: response.status, sha256: createHash('sha256').update(bytes).digest('hex')};
}

describeWithFirestore('signed URLs', () => {
  let gcs: GcsTestServer;
  beforeAll(async () => {
    gcs = await startGcsTestServer({buckets: [BUCKET]});
  });
  afterAll(() => gcs.close());

  describe('with a service account key (GOOGLE_APPLICATION_CREDENTIALS)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'imagegen-key-'));
    const previous = process.env.GOOGLE_APPLICATION_CREDENTIALS;
    let openai: FakeOpenAI;
    let fn: RunningFunction;

    beforeAll(async () => {
      const {publicKey, privateKey} = generateKeyPairSync('rsa', {modulusLength: 2048});
      const email = `imagegen-test@${BUCKET}.iam.gserviceaccount.com`;
      const keyFile = join(dir, 'key.json');
      writeFileSync(
        keyFile,
        JSON.stringify({
          type: 'service_account',
          project_id: 'signed-test',
          client_email: email,
          private_key: privateKey.export({type: 'pkcs8', format: 'pem'}),
        }),
      );
      process.env.GOOGLE_APPLICATION_CREDENTIALS = keyFile;
      gcs.trustSigner(email, publicKey.export({type: 'spki', format: 'pem'}).toString());
      openai = await startFakeOpenAI();
      fn = await startFunction({
        OPENAI_API_KEY: 'sk-test-key',
        OPENAI_BASE_URL: openai.url,
        GCS_BUCKET: BUCKET,
        STORAGE_EMULATOR_HOST: gcs.url,
        GOOGLE_CLOUD_PROJECT: `signed-${randomUUID().slice(0, 8)}`,
        SIGNED_URL_TTL_SECONDS: '600',
      });
    });
    afterAll(async () => {
      await fn.close();
      await openai.close();
      gcs.setClock(undefined);
      if (previous === undefined) delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
      else process.env.GOOGLE_APPLICATION_CREDENTIALS = previous;
      rmSync(dir, {recursive: true, force: true});
    });

    test('generate answers with V4 signed URLs that serve the image until they expire', async () => {
      const before = Date.now();
      const {status, body} = await postJson(`${fn.url}/generate`, {
        prompt: 'signed',
      });
      expect(status).toBe(200);
      const image = body.images[0];
      const url = new URL(image.url);
      expect(url.searchParams.get('X-Goog-Algorithm')).toBe('GOOG4-RSA-SHA256');
      expect(url.searchParams.get('X-Goog-Expires')).toBe('600');
      expect(Date.parse(image.url_expires_at) - before).toBeGreaterThanOrEqual(599_000);
      expect(image.gcs_uri).toBe(`gs://${BUCKET}/images/${body.job_id}/000-${image.id}.png`);
      expect(await sha256Of(image.url)).toEqual({status: 200, sha256: image.sha256});

      gcs.setClock(() => Date.now() + 601_000);
      expect((await fetch(image.url)).status).toBe(400);
      gcs.setClock(undefined);

      const tampered = image.url.replace(
        /X-Goog-Signature=([0-9a-f])/,
        (_: string, c: string) => `X-Goog-Signature=${c === '0' ? '1' : '0'}`,
      );
      expect((await fetch(tampered)).status).toBe(403);
    });

    test('GET /images/:id/url and GET /jobs/:id mint fresh URLs', async () => {
      const {body} = await postJson(`${fn.url}/generate`, {
        prompt: 'renew',
      });
      const image = body.images[0];
      await new Promise(resolve => setTimeout(resolve, 1100)); // a new second, so a new X-Goog-Date
      const renewed = await getJson(`${fn.url}/images/${image.id}/url`);
      expect(renewed.body.url).not.toBe(image.url);
      expect(await sha256Of(renewed.body.url)).toEqual({status: 200, sha256: image.sha256});
      const job = await getJson(`${fn.url}/jobs/${body.job_id}`);
      expect(await sha256Of(job.body.images[0].url)).toEqual({status: 200, sha256: image.sha256});
    });
  });

  test('without a key, URLs are signed through IAM signBlob, as on Cloud Run', async () => {
    const signer = await startIamSigner();
    try {
      gcs.trustSigner(signer.email, signer.publicKeyPem);
      const storage = keylessStorageFor(gcs, signer);
      const store = new GcsObjectStore(storage.bucket(BUCKET), {signingEndpoint: signer.url});
      await store.put('images/keyless/000-a.png', Buffer.from('keyless bytes'), {
        contentType: 'image/png',
        metadata: {},
      });
      const {url} = await store.signedReadUrl('images/keyless/000-a.png', 300);
      expect(signer.calls).toBe(1);
      const response = await fetch(url);
      expect([response.status, await response.text()]).toEqual([200, 'keyless bytes']);
    } finally {
      await signer.close();
    }
  });
});

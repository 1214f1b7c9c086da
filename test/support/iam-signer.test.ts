import {verify as cryptoVerify} from 'node:crypto';
import type {Storage} from '@google-cloud/storage';
import {OAuth2Client} from 'google-auth-library';
import {GcsObjectStore} from '../../src/adapters/gcs/object-store';
import {startGcsTestServer, type GcsTestServer} from './gcs-server';
import {keylessStorageFor, startIamSigner, type IamSigner} from './iam-signer';

const BUCKET = 'signed-bucket';

let server: GcsTestServer;
let signer: IamSigner;
let storage: Storage;

beforeAll(async () => {
  [server, signer] = await Promise.all([startGcsTestServer({buckets: [BUCKET]}), startIamSigner()]);
  server.trustSigner(signer.email, signer.publicKeyPem);
  storage = keylessStorageFor(server, signer);
});

afterEach(() => {
  server.reset();
  signer.clearFaults();
});

afterAll(async () => {
  await Promise.all([server.close(), signer.close()]);
});

async function signBlob(
  email: string,
  payload: string,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${signer.url}${email}:signBlob`, {
    method: 'POST',
    headers: {'content-type': 'application/json', authorization: `Bearer ${signer.accessToken}`, ...headers},
    body: JSON.stringify({payload}),
  });
}

const signRead = (name: string) =>
  storage
    .bucket(BUCKET)
    .file(name)
    .getSignedUrl({
      version: 'v4',
      action: 'read',
      expires: Date.now() + 15 * 60_000,
      signingEndpoint: signer.url,
    });

describe('the signBlob fake', () => {
  test('signs the decoded payload with RSA-SHA256 under its key', async () => {
    const data = Buffer.from('GOOG4-RSA-SHA256\n20240101T000000Z\n...');
    const response = await signBlob(signer.email, data.toString('base64'));
    expect(response.status).toBe(200);
    const body = (await response.json()) as {keyId: string; signedBlob: string};
    expect(body.keyId).toBe(signer.keyId);
    expect(cryptoVerify('sha256', data, signer.publicKeyPem, Buffer.from(body.signedBlob, 'base64'))).toBe(
      true,
    );
    expect(
      cryptoVerify(
        'sha256',
        Buffer.from('other'),
        signer.publicKeyPem,
        Buffer.from(body.signedBlob, 'base64'),
      ),
    ).toBe(false);
    expect(signer.calls).toBe(1);
  });

  test('refuses missing or wrong tokens (401), other accounts (403) and bad payloads (400)', async () => {
    const payload = Buffer.from('x').toString('base64');
    const noAuth = await fetch(`${signer.url}${signer.email}:signBlob`, {
      method: 'POST',
      body: JSON.stringify({payload}),
    });
    expect(noAuth.status).toBe(401);
    expect((await signBlob(signer.email, payload, {authorization: 'Bearer wrong'})).status).toBe(401);

    const other = await signBlob('someone-else@test-project.iam.gserviceaccount.com', payload);
    expect(other.status).toBe(403);
    expect(await other.json()).toMatchObject({error: {code: 403, status: 'PERMISSION_DENIED'}});

    expect((await signBlob(signer.email, 'not base64!')).status).toBe(400);
    expect((await fetch(`${signer.url}${signer.email}:signBlob`)).status).toBe(405);
  });
});

describe('V4 signed URLs without a key (IAM signBlob, as on Cloud Run)', () => {
  test('getSignedUrl signs through signBlob and the URL serves the bytes', async () => {
    const data = Buffer.from('image bytes');
    const headers = jest.spyOn(OAuth2Client.prototype, 'getRequestHeaders');
    const requests = jest.spyOn(OAuth2Client.prototype, 'request');
    let url: string;
    try {
      // JSON API calls to a custom endpoint go out without auth: the token client is not consulted.
      await storage
        .bucket(BUCKET)
        .file('jobs/j/0.png')
        .save(data, {resumable: false, contentType: 'image/png'});
      expect(headers).not.toHaveBeenCalled();
      expect(requests).not.toHaveBeenCalled();

      // The URL signer uses the same auth object: one signBlob request through the token client.
      const before = signer.calls;
      [url] = await signRead('jobs/j/0.png');
      expect(signer.calls).toBe(before + 1);
      expect(requests).toHaveBeenCalledTimes(1);
    } finally {
      headers.mockRestore();
      requests.mockRestore();
    }
    const params = new URL(url).searchParams;
    expect(params.get('X-Goog-Credential')).toMatch(new RegExp(`^${signer.email.replace(/[.]/g, '\\.')}/`));
    expect(new URL(url).origin).toBe(server.url);

    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('image/png');
    expect(Buffer.from(await response.arrayBuffer()).equals(data)).toBe(true);
  });

  test('GcsObjectStore.signedReadUrl with signingEndpoint (the production adapter) mints a working URL', async () => {
    const store = new GcsObjectStore(storage.bucket(BUCKET), {signingEndpoint: signer.url});
    await store.put('jobs/k/1.webp', Buffer.from('webp'), {contentType: 'image/webp', metadata: {}});
    const before = signer.calls;
    const {url} = await store.signedReadUrl('jobs/k/1.webp', 300);
    expect(signer.calls).toBe(before + 1);
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe('webp');
  });

  test('a GCS server that does not trust the account refuses the URL', async () => {
    const other = await startGcsTestServer({buckets: [BUCKET]});
    try {
      const otherStorage = keylessStorageFor(other, signer);
      await otherStorage.bucket(BUCKET).file('x.txt').save('x', {resumable: false});
      const [url] = await otherStorage
        .bucket(BUCKET)
        .file('x.txt')
        .getSignedUrl({
          version: 'v4',
          action: 'read',
          expires: Date.now() + 60_000,
          signingEndpoint: signer.url,
        });
      const response = await fetch(url);
      expect(response.status).toBe(403);
      expect(await response.text()).toContain('<Code>AccessDenied</Code>');
      other.trustSigner(signer.email, signer.publicKeyPem);
      expect((await fetch(url)).status).toBe(200);
    } finally {
      await other.close();
    }
  });

  test('a single 5xx from signBlob is retried by the client (gaxios) and signing succeeds', async () => {
    await storage.bucket(BUCKET).file('r.txt').save('r', {resumable: false});
    signer.injectFault(503, 1);
    const before = signer.calls;
    const [url] = await signRead('r.txt');
    expect(signer.calls).toBe(before + 2);
    expect((await fetch(url)).status).toBe(200);
  });

  test('signBlob failing with 500 makes getSignedUrl reject (after the client retries 3 times)', async () => {
    // Same client setup, minus the ~2 s of back-off between the retries.
    const fast = keylessStorageFor(server, signer, {fastRetries: true});
    signer.injectFault(500);
    const before = signer.calls;
    const err = await fast
      .bucket(BUCKET)
      .file('any.txt')
      .getSignedUrl({
        version: 'v4',
        action: 'read',
        expires: Date.now() + 60_000,
        signingEndpoint: signer.url,
      })
      .then(
        () => {
          throw new Error('expected getSignedUrl to reject');
        },
        (e: unknown) => e as Error,
      );
    expect(err.name).toBe('SigningError');
    expect(err.message).toMatch(/Injected fault: HTTP 500/);
    expect(signer.calls).toBe(before + 4);
  });

  test('signBlob denied (403, e.g. no iam.serviceAccountTokenCreator) rejects at once', async () => {
    signer.injectFault(403);
    const before = signer.calls;
    await expect(signRead('any.txt')).rejects.toMatchObject({name: 'SigningError'});
    expect(signer.calls).toBe(before + 1);
  });

  test('without signingEndpoint the keyless client refuses to call the real IAM API', async () => {
    const before = signer.calls;
    await expect(
      storage
        .bucket(BUCKET)
        .file('x')
        .getSignedUrl({version: 'v4', action: 'read', expires: Date.now() + 60_000}),
    ).rejects.toThrow(/signingEndpoint/);
    expect(signer.calls).toBe(before);
  });
});

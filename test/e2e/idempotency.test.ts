import {createHash, randomUUID} from 'node:crypto';
import {join} from 'node:path';
import {DatabaseSync} from 'node:sqlite';
import {LocalObjectStore} from '../../src/adapters/local/object-store';
import {DATABASE_FILE, SqliteMetadataStore} from '../../src/adapters/local/sqlite-metadata-store';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {postJson, startFunction, type RunningFunction} from '../support/function-server';
import {finishedJob, runningJob} from '../support/records';
import {useTempDir} from '../support/temp-dir';
import {OpenApiValidator} from '../support/openapi-validator';

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

const generations = (openai: FakeOpenAI) =>
  openai.requests.filter(r => r.path === '/v1/images/generations').length;

describe('idempotent generation', () => {
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let fn: RunningFunction;
  let other: RunningFunction;
  // The Functions Framework reports a rejection nobody handled here, and ends the instance for it in production.
  const consoleError = jest.spyOn(console, 'error');

  beforeAll(async () => {
    openai = await startFakeOpenAI();
    const env = {
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir(),
      UPSTREAM_MAX_RETRIES: '0',
    };
    fn = await startFunction(env);
    // A second instance over the same data, as Cloud Run would run side by side.
    other = await startFunction(env);
  });
  afterAll(async () => {
    await fn.close();
    await other.close();
    await openai.close();
    consoleError.mockRestore();
  });
  beforeEach(() => openai.reset());

  const body = (prompt: string) => ({prompt});

  test('a retried request gets the stored job and OpenAI is called once', async () => {
    const key = randomUUID();
    const first = await postJson(`${fn.url}/generate`, body('once'), {'idempotency-key': key});
    const second = await postJson(`${fn.url}/generate`, body('once'), {'idempotency-key': key});
    expect([first.status, second.status]).toEqual([200, 200]);
    expect(second.body.job_id).toBe(first.body.job_id);
    expect(second.body.images[0].sha256).toBe(first.body.images[0].sha256);
    expect(first.headers.get('idempotent-replayed')).toBeNull();
    expect(second.headers.get('idempotent-replayed')).toBe('true');
    expect(generations(openai)).toBe(1);
  });

  test('concurrent duplicates in one instance wait for the same run', async () => {
    openai.setLatency(300);
    const key = randomUUID();
    const results = await Promise.all(
      Array.from({length: 8}, () =>
        postJson(`${fn.url}/generate`, body('together'), {'idempotency-key': key}),
      ),
    );
    expect(results.map(r => r.status)).toEqual(Array(8).fill(200));
    expect(new Set(results.map(r => r.body.job_id)).size).toBe(1);
    expect(generations(openai)).toBe(1);
  });

  test('a duplicate at another instance while the first runs is 409 REQUEST_IN_PROGRESS', async () => {
    openai.setLatency(800);
    const key = randomUUID();
    const first = postJson(`${fn.url}/generate`, body('elsewhere'), {'idempotency-key': key});
    while (generations(openai) === 0) await new Promise(resolve => setTimeout(resolve, 20));
    const duplicate = await postJson(`${other.url}/generate`, body('elsewhere'), {'idempotency-key': key});
    expect(duplicate.status).toBe(409);
    expect(duplicate.body.code).toBe('REQUEST_IN_PROGRESS');
    new OpenApiValidator().check('POST', `${other.url}/generate`, duplicate.status, duplicate.body);
    expect(Number(duplicate.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const done = await first;
    expect(done.status).toBe(200);
    const replay = await postJson(`${other.url}/generate`, body('elsewhere'), {'idempotency-key': key});
    expect(replay.body.job_id).toBe(done.body.job_id);
    expect(generations(openai)).toBe(1);
  });

  test('the key may come in the body, for Pub/Sub and Cloud Tasks callers', async () => {
    const key = randomUUID();
    const first = await postJson(`${fn.url}/generate`, {...body('in body'), idempotency_key: key});
    const second = await postJson(`${fn.url}/`, {
      input: {body: {prompt_image: 'in body', idempotency_key: key}},
    });
    expect(second.body.job_id).toBe(first.body.job_id);
    expect(generations(openai)).toBe(1);
  });

  test('a key reused with other parameters is 422 IDEMPOTENCY_KEY_REUSED', async () => {
    const key = randomUUID();
    await postJson(`${fn.url}/generate`, body('first'), {'idempotency-key': key});
    const reused = await postJson(`${fn.url}/generate`, body('second'), {'idempotency-key': key});
    expect([reused.status, reused.body.code]).toEqual([422, 'IDEMPOTENCY_KEY_REUSED']);
    new OpenApiValidator().check('POST', `${fn.url}/generate`, reused.status, reused.body);
  });

  test('header and body keys that disagree, or a malformed key, are refused', async () => {
    const mismatch = await postJson(
      `${fn.url}/generate`,
      {...body('x'), idempotency_key: 'a'},
      {'idempotency-key': 'b'},
    );
    expect([mismatch.status, mismatch.body.code]).toEqual([400, 'VALIDATION_ERROR']);
    const long = await postJson(`${fn.url}/generate`, body('x'), {'idempotency-key': 'k'.repeat(256)});
    expect(long.body.error).toMatch(/^Idempotency-Key: /);
    expect(generations(openai)).toBe(0);
  });

  test('a failed run frees its key, so the retry generates', async () => {
    const key = randomUUID();
    openai.injectFault({kind: 'server_error'});
    const failed = await postJson(`${fn.url}/generate`, body('retry me'), {'idempotency-key': key});
    expect(failed.status).toBe(502);
    const retried = await postJson(`${fn.url}/generate`, body('retry me'), {'idempotency-key': key});
    expect(retried.status).toBe(200);
    expect(retried.headers.get('idempotent-replayed')).toBeNull();
    expect(generations(openai)).toBe(2);
  });

  test('a run left behind by a crashed instance is settled by the retry after its lease, then run anew', async () => {
    const key = randomUUID();
    // Keys are kept per caller: behind IAM with no identity, the owner part is empty.
    const keyHash = sha256(`\n${key}`);
    const jobId = randomUUID();
    const store = new SqliteMetadataStore(dataDir());
    const images = new LocalObjectStore(dataDir());
    const fingerprintProbe = await postJson(`${fn.url}/generate`, body('probe'), {
      'idempotency-key': `${key}-probe`,
    });
    expect(fingerprintProbe.status).toBe(200);
    // The same parameters under another key give the fingerprint the crashed run would have stored.
    const db = new DatabaseSync(join(dataDir(), DATABASE_FILE), {readOnly: true});
    const probe = db
      .prepare('SELECT fingerprint FROM idempotency_keys WHERE key_hash = ?')
      .get(sha256(`\n${key}-probe`)) as {fingerprint: string};
    db.close();
    // What a crashed run leaves: a claim and a running job whose leases ran out, and one stored image.
    const past = new Date(Date.now() - 3600_000);
    const leaseEnded = new Date(past.getTime() + 60_000);
    await store.claimIdempotencyKey(
      keyHash,
      {
        fingerprint: probe.fingerprint,
        jobId,
        leaseUntil: leaseEnded,
        expiresAt: new Date(Date.now() + 3600_000),
        completed: false,
      },
      past,
    );
    await store.createJob(
      runningJob(finishedJob({id: jobId, created_at: past.toISOString()}, 1), leaseEnded.toISOString()),
    );
    await store.close();
    const leftover = `images/${jobId}/000-${randomUUID()}.png`;
    await images.put(leftover, Buffer.from('partial'), {contentType: 'image/png', metadata: {}});
    openai.reset();

    const recovered = await postJson(`${fn.url}/generate`, body('probe'), {'idempotency-key': key});
    expect(recovered.status).toBe(200);
    expect(recovered.body.job_id).not.toBe(jobId);
    expect(generations(openai)).toBe(1);
    const replay = await postJson(`${fn.url}/generate`, body('probe'), {'idempotency-key': key});
    expect(replay.body.job_id).toBe(recovered.body.job_id);
    expect(generations(openai)).toBe(1);

    // The retry settled the stopped run before running again: its image was missing, so it failed,
    // and what it wrote is gone; the reconciler has nothing left to do for it.
    const old = await fetch(`${fn.url}/jobs/${jobId}`).then(answer => answer.json());
    expect(old).toMatchObject({status: 'failed', error: {code: 'STORAGE_ERROR'}});
    expect(await images.list(`images/${jobId}/`)).toEqual([]);
    const repaired = await postJson(`${fn.url}/tasks/reconcile`, '');
    expect(repaired.status).toBe(200);
    expect(repaired.body.jobs_failed).not.toContain(jobId);
    expect(repaired.body.objects_removed).not.toContain(leftover);
  });

  test('replaying a key whose job was deleted says so', async () => {
    const key = randomUUID();
    const made = await postJson(`${fn.url}/generate`, body('gone'), {'idempotency-key': key});
    await fetch(`${fn.url}/jobs/${made.body.job_id}`, {method: 'DELETE'});
    const replay = await postJson(`${fn.url}/generate`, body('gone'), {'idempotency-key': key});
    expect([replay.status, replay.body.code]).toEqual([404, 'JOB_NOT_FOUND']);
    expect(generations(openai)).toBe(1);
  });

  test('no request left a rejection unhandled', () => {
    expect(consoleError.mock.calls.flat().join('\n')).not.toMatch(
      /Exception from a finished function|Unhandled/,
    );
  });
});

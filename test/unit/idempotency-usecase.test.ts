import {createHash, randomUUID} from 'node:crypto';
import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {AppError} from '../../src/core/errors';
import type {GenerateCommand} from '../../src/core/generation';
import type {KeyJobState} from '../../src/core/ports';
import {commandFor} from '../support/commands';
import {ScriptedProvider, tinyPng} from '../support/scripted-provider';
import {ModelCatalogue} from '../../src/core/catalogue';
import {parseEditBody, planGeneration} from '../../src/core/generation';
import type {Requester} from '../../src/core/requester';
import {
  IdempotentGenerator,
  decideClaim,
  fingerprintOf,
  keyJobState,
} from '../../src/core/usecases/idempotency';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';

const MINUTE = 60_000;
const IAM: Requester = {kind: 'iam', email: null};

function command(
  body: Record<string, unknown> = {},
  overrides: Partial<GenerateCommand> = {},
): GenerateCommand {
  return {...commandFor(body), ...overrides};
}

function setUp(now = () => new Date()) {
  const provider = new ScriptedProvider();
  const objects = new MemoryObjectStore();
  const metadata = new MemoryMetadataStore();
  /** Another instance of the function, on the same stores. */
  const instance = () =>
    new IdempotentGenerator(
      {provider, objects, metadata, codec: new HeaderImageCodec(), ownBucket: null, sourceBuckets: [], now},
      {leaseMs: 5 * MINUTE, claimWindowMs: 2 * MINUTE, ttlMs: 60 * MINUTE},
    );
  return {provider, objects, metadata, generator: instance(), instance};
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
/** How the generator stores a key: per owner (none behind IAM without an email). */
const keyHashOf = (key: string, owner = '') => sha256(`${owner}\n${key}`);

describe('IdempotentGenerator', () => {
  test('the same key twice: one upstream call, the second answer is the stored job', async () => {
    const {provider, generator} = setUp();
    const first = await generator.generate(command({idempotency_key: 'k1'}), IAM);
    const second = await generator.generate(command({idempotency_key: 'k1'}, {source: 'legacy'}), IAM);
    expect(first.replayed).toBe(false);
    expect(second).toEqual({job: first.job, replayed: true});
    expect(provider.calls).toHaveLength(1);
  });

  test('duplicates arriving while the first runs join it', async () => {
    const {provider, generator} = setUp();
    provider.script.push({delayMs: 50});
    const outcomes = await Promise.all(
      Array.from({length: 4}, () => generator.generate(command({idempotency_key: 'k2'}), IAM)),
    );
    expect(new Set(outcomes.map(o => o.job.id)).size).toBe(1);
    expect(outcomes.filter(o => o.replayed)).toHaveLength(3);
    expect(provider.calls).toHaveLength(1);
  });

  test('the same key with other parameters is refused, running or done', async () => {
    const {provider, generator} = setUp();
    provider.script.push({delayMs: 50});
    const running = generator.generate(command({idempotency_key: 'k3'}), IAM);
    await expect(generator.generate(command({idempotency_key: 'k3', count: 2}), IAM)).rejects.toMatchObject({
      code: 'IDEMPOTENCY_KEY_REUSED',
    });
    await running;
    await expect(
      generator.generate(command({idempotency_key: 'k3', metadata: {a: 'b'}}), IAM),
    ).rejects.toMatchObject({code: 'IDEMPOTENCY_KEY_REUSED'});
  });

  test('a run held by another instance answers REQUEST_IN_PROGRESS with a Retry-After', async () => {
    const {metadata, generator} = setUp();
    const now = new Date();
    await metadata.claimIdempotencyKey(
      keyHashOf('k4'),
      {
        fingerprint: fingerprintOf(command()),
        jobId: randomUUID(),
        leaseUntil: new Date(now.getTime() + 10_000),
        expiresAt: new Date(now.getTime() + MINUTE),
        completed: false,
      },
      now,
    );
    const error = await generator.generate(command({idempotency_key: 'k4'}), IAM).catch((e: unknown) => e);
    expect(error).toMatchObject({code: 'REQUEST_IN_PROGRESS'});
    expect((error as AppError).retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect((error as AppError).retryAfterSeconds).toBeLessThanOrEqual(10);
  });

  test('a failed run frees its key: the retry generates again', async () => {
    const {provider, generator} = setUp();
    provider.script.push({error: new AppError('UPSTREAM_ERROR', 'boom')});
    await expect(generator.generate(command({idempotency_key: 'k5'}), IAM)).rejects.toThrow('boom');
    const retried = await generator.generate(command({idempotency_key: 'k5'}), IAM);
    expect(retried.replayed).toBe(false);
    expect(provider.calls).toHaveLength(2);
  });

  test('a run left by a crashed instance is taken over after its lease, as a new job', async () => {
    const {objects, metadata, generator} = setUp();
    const jobId = randomUUID();
    const past = new Date(Date.now() - 2 * MINUTE);
    await metadata.claimIdempotencyKey(
      keyHashOf('k6'),
      {
        fingerprint: fingerprintOf(command()),
        jobId,
        leaseUntil: new Date(past.getTime() + MINUTE),
        expiresAt: new Date(past.getTime() + 60 * MINUTE),
        completed: false,
      },
      past,
    );
    const outcome = await generator.generate(command({idempotency_key: 'k6'}), IAM);
    expect(outcome.replayed).toBe(false);
    expect(outcome.job.id).not.toBe(jobId);
    // The key now replays the new job.
    expect((await generator.generate(command({idempotency_key: 'k6'}), IAM)).job.id).toBe(outcome.job.id);
    expect(objects.objects.size).toBe(1);
  });

  test('a claim whose job never got recorded holds its key for the claim window, not the whole lease', async () => {
    let clock = Date.now();
    const {provider, metadata, generator, instance} = setUp(() => new Date(clock));
    // The claimant stops (or its caller gave up on a claim that landed later) before its job is written.
    let stopped = false;
    metadata.createJob = () => {
      stopped = true;
      return new Promise<void>(() => {});
    };
    void instance().generate(command({idempotency_key: 'k6e'}), IAM);
    while (!stopped) await new Promise(resolve => setTimeout(resolve, 5));
    delete (metadata as Partial<MemoryMetadataStore>).createJob;
    clock += 2 * MINUTE - 1000;
    await expect(generator.generate(command({idempotency_key: 'k6e'}), IAM)).rejects.toMatchObject({
      code: 'REQUEST_IN_PROGRESS',
    });
    clock += 1000;
    const retried = await generator.generate(command({idempotency_key: 'k6e'}), IAM);
    expect(retried).toMatchObject({replayed: false, job: {status: 'completed'}});
    expect(provider.calls).toHaveLength(1);
  });

  test('a recorded job keeps its key past the claim window for as long as it runs', async () => {
    let clock = Date.now();
    const {objects, metadata, generator, instance} = setUp(() => new Date(clock));
    metadata.completeJob = () => new Promise<boolean>(() => {});
    void instance().generate(command({idempotency_key: 'k6f'}), IAM);
    while (objects.objects.size === 0) await new Promise(resolve => setTimeout(resolve, 5));
    clock += 4 * MINUTE;
    const error = await generator.generate(command({idempotency_key: 'k6f'}), IAM).catch((e: unknown) => e);
    expect(error).toMatchObject({code: 'REQUEST_IN_PROGRESS', retryAfterSeconds: 10});
  });

  /** A run that stores its objects, then stops (its instance died) before completing its job; retried on another instance. */
  async function stoppedRun(idempotencyKey: string, count = 2) {
    let clock = Date.now();
    const parts = setUp(() => new Date(clock));
    const {objects, metadata, instance} = parts;
    metadata.completeJob = () => new Promise<boolean>(() => {});
    void instance().generate(command({idempotency_key: idempotencyKey, count}), IAM);
    while (objects.objects.size < count) await new Promise(resolve => setTimeout(resolve, 5));
    const stopped = (await metadata.listJobs({limit: 10})).jobs[0]!;
    expect(stopped.status).toBe('running');
    delete (metadata as Partial<MemoryMetadataStore>).completeJob;
    clock += 6 * MINUTE;
    return {...parts, stopped};
  }

  test('a run that stopped after storing everything is completed from its objects, not paid again', async () => {
    const {provider, metadata, generator, stopped} = await stoppedRun('k6b');
    const retried = await generator.generate(command({idempotency_key: 'k6b', count: 2}), IAM);
    expect(retried.replayed).toBe(true);
    expect(retried.job).toMatchObject({id: stopped.id, status: 'completed'});
    expect(retried.job.images).toHaveLength(2);
    expect((await metadata.getJob(stopped.id))?.status).toBe('completed');
    expect(provider.calls).toHaveLength(1);
  });

  test('a run that stopped with an object missing is failed and cleaned, and the retry runs anew', async () => {
    const {provider, objects, metadata, generator, stopped} = await stoppedRun('k6c');
    objects.objects.delete([...objects.objects.keys()][0]!);
    const retried = await generator.generate(command({idempotency_key: 'k6c', count: 2}), IAM);
    expect(retried.replayed).toBe(false);
    expect(retried.job.id).not.toBe(stopped.id);
    expect((await metadata.getJob(stopped.id))?.status).toBe('failed');
    expect([...objects.objects.keys()].filter(path => path.includes(stopped.id))).toEqual([]);
    expect(provider.calls).toHaveLength(2);
  });

  test('a run still inside its lease is not settled by a retry', async () => {
    const {provider, objects, metadata, generator, instance} = setUp();
    metadata.completeJob = () => new Promise<boolean>(() => {});
    void instance().generate(command({idempotency_key: 'k6d'}), IAM);
    while (objects.objects.size < 1) await new Promise(resolve => setTimeout(resolve, 5));
    await expect(generator.generate(command({idempotency_key: 'k6d'}), IAM)).rejects.toMatchObject({
      code: 'REQUEST_IN_PROGRESS',
    });
    expect((await metadata.listJobs({limit: 10})).jobs[0]?.status).toBe('running');
    expect(provider.calls).toHaveLength(1);
  });

  test('a replayed key whose job was deleted says so', async () => {
    const {metadata, generator} = setUp();
    const made = await generator.generate(command({idempotency_key: 'k7'}), IAM);
    await metadata.deleteJob(made.job.id);
    await expect(generator.generate(command({idempotency_key: 'k7'}), IAM)).rejects.toMatchObject({
      code: 'JOB_NOT_FOUND',
    });
  });

  test('without an OpenAI key nothing is claimed or reserved', async () => {
    const {provider, metadata, generator} = setUp();
    provider.configured = false;
    const requester: Requester = {kind: 'api-key', name: 'carol', admin: false, dailyQuota: 5};
    await expect(generator.generate(command({idempotency_key: 'k8'}), requester)).rejects.toMatchObject({
      code: 'SERVICE_ERROR',
    });
    expect(metadata.keys.size).toBe(0);
    expect(metadata.quotas.size).toBe(0);
  });
});

describe('daily quotas', () => {
  test('a key with a quota is counted per UTC day; a failed generation gives its images back', async () => {
    const {provider, metadata, generator} = setUp(() => new Date('2030-05-01T23:00:00Z'));
    const carol: Requester = {kind: 'api-key', name: 'carol', admin: false, dailyQuota: 3};
    await generator.generate(command({count: 2}), carol);
    provider.script.push({error: new AppError('UPSTREAM_ERROR', 'boom')});
    await expect(generator.generate(command({count: 1}), carol)).rejects.toThrow('boom');
    expect(metadata.quotas.get('carol/2030-05-01')).toBe(2);
    const refused = await generator.generate(command({count: 2}), carol).catch((e: unknown) => e);
    expect(refused).toMatchObject({code: 'QUOTA_EXCEEDED', details: {limit: 3, used: 2}});
    // An hour to midnight UTC.
    expect((refused as AppError).retryAfterSeconds).toBe(3600);
    expect(provider.calls).toHaveLength(2);
  });

  test('callers without a quota, and IAM callers, are not counted', async () => {
    const {metadata, generator} = setUp();
    await generator.generate(command(), {kind: 'api-key', name: 'dave', admin: false, dailyQuota: null});
    await generator.generate(command(), IAM);
    expect(metadata.quotas.size).toBe(0);
  });
});

describe('fingerprintOf', () => {
  const edit = (b64: string) =>
    planGeneration(parseEditBody({prompt: 'x', images: [{b64_json: b64}]}), {
      catalogue: new ModelCatalogue(),
      defaultModel: 'gpt-image-2.6-sunburst',
      retiredModels: 'replace',
      day: '2026-12-02',
    });

  test("an edit's inputs are part of what makes two requests the same", () => {
    const png = tinyPng(4, 4, 1).toString('base64');
    const other = tinyPng(4, 4, 2).toString('base64');
    expect(fingerprintOf(edit(png))).toBe(fingerprintOf(edit(png)));
    expect(fingerprintOf(edit(png))).not.toBe(fingerprintOf(edit(other)));
  });

  test('how a request is sent is not part of it: streaming, the legacy shape', () => {
    expect(fingerprintOf(commandFor({stream: true}))).toBe(fingerprintOf(commandFor({})));
  });
});

describe('keyJobState', () => {
  const now = new Date('2030-01-01T00:00:00Z');
  const at = (ms: number) => new Date(now.getTime() + ms).toISOString();
  test.each<[string, Parameters<typeof keyJobState>[0], KeyJobState]>([
    ['no job', null, 'none'],
    ['running inside its lease', {status: 'running', lease_until: at(1)}, 'running'],
    ['running at the end of its lease', {status: 'running', lease_until: at(0)}, 'stopped'],
    ['running past its lease', {status: 'running', lease_until: at(-1)}, 'stopped'],
    ['running with no lease', {status: 'running', lease_until: null}, 'running'],
    ['failed', {status: 'failed', lease_until: null}, 'failed'],
    ['completed', {status: 'completed', lease_until: null}, 'finished'],
    ['partial', {status: 'partial', lease_until: null}, 'finished'],
  ])('%s', (_name, job, state) => {
    expect(keyJobState(job, now)).toBe(state);
  });
});

describe('decideClaim', () => {
  const now = new Date('2030-01-01T00:00:00Z');
  const record = (overrides = {}) => ({
    fingerprint: 'f',
    jobId: 'job-1',
    leaseUntil: new Date(now.getTime() + MINUTE),
    expiresAt: new Date(now.getTime() + 60 * MINUTE),
    completed: false,
    ...overrides,
  });

  test.each([
    ['a new key', null, 'none', {}, {outcome: 'claimed', jobId: 'job-2', recovered: false}],
    [
      'an expired key',
      record({expiresAt: now}),
      'finished',
      {},
      {outcome: 'claimed', jobId: 'job-2', recovered: false},
    ],
    ['another fingerprint', record(), 'none', {fingerprint: 'g'}, {outcome: 'mismatch'}],
    ['a completed key', record({completed: true}), 'none', {}, {outcome: 'completed', jobId: 'job-1'}],
    ['a key whose job finished', record(), 'finished', {}, {outcome: 'completed', jobId: 'job-1'}],
    ['a claim not run yet', record(), 'none', {}, {outcome: 'in_progress', leaseUntil: record().leaseUntil}],
    ['a running job', record(), 'running', {}, {outcome: 'in_progress', leaseUntil: record().leaseUntil}],
    [
      'a failed job, in its lease',
      record(),
      'failed',
      {},
      {outcome: 'claimed', jobId: 'job-2', recovered: true},
    ],
    [
      'a lapsed claim whose job was never recorded',
      record({leaseUntil: now}),
      'none',
      {},
      {outcome: 'claimed', jobId: 'job-2', recovered: true},
    ],
    [
      'a lapsed claim whose job still runs (its own lease is what counts)',
      record({leaseUntil: now}),
      'running',
      {},
      {outcome: 'in_progress', leaseUntil: now},
    ],
    ['a job whose run stopped', record(), 'stopped', {}, {outcome: 'stopped', jobId: 'job-1'}],
    [
      'a job whose run stopped, its claim lapsed',
      record({leaseUntil: now}),
      'stopped',
      {},
      {outcome: 'stopped', jobId: 'job-1'},
    ],
    [
      'its own claim, written again',
      record({jobId: 'job-2'}),
      'none',
      {},
      {outcome: 'claimed', jobId: 'job-2', recovered: false},
    ],
  ])('%s', (_name, existing, job, claimOverrides, expected) => {
    const {result} = decideClaim(
      existing,
      job as KeyJobState,
      record({jobId: 'job-2', ...claimOverrides}),
      now,
    );
    expect(result).toEqual(expected);
  });
});

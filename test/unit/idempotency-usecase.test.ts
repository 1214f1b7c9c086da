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
import {IdempotentGenerator, decideClaim, fingerprintOf} from '../../src/core/usecases/idempotency';
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
  const generator = new IdempotentGenerator(
    {provider, objects, metadata, codec: new HeaderImageCodec(), ownBucket: null, sourceBuckets: [], now},
    {leaseMs: 5 * MINUTE, ttlMs: 60 * MINUTE},
  );
  return {provider, objects, metadata, generator};
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
      'a lapsed claim',
      record({leaseUntil: now}),
      'running',
      {},
      {outcome: 'claimed', jobId: 'job-2', recovered: true},
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

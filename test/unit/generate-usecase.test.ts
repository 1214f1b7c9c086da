import {randomUUID} from 'node:crypto';
import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {AppError, OutcomeUnknownError} from '../../src/core/errors';
import type {GenerateCommand} from '../../src/core/generation';
import {commandFor} from '../support/commands';
import {generateImages, sumUsage, type GenerateDeps} from '../../src/core/usecases/generate';
import type {MemoryMetadataStore} from '../support/memory-stores';
import {ScriptedProvider, tinyPng} from '../support/scripted-provider';
import {generateDeps} from '../support/generate-deps';
import {storedParameters} from '../support/records';
import type {JobParameters} from '../../src/core/records';

/** The command for `body`; with `imagesPerCall`, split into calls of that many images. */
function command(body: Record<string, unknown> = {}, imagesPerCall?: number): GenerateCommand {
  const made = commandFor(body);
  if (imagesPerCall !== undefined) made.plan.imagesPerCall = imagesPerCall;
  return made;
}

function setUp() {
  return generateDeps(new ScriptedProvider());
}

const LEASE_MS = 6 * 60_000;

const failedJobs = (metadata: MemoryMetadataStore) =>
  [...metadata.jobs.values()].filter(job => job.status === 'failed');

/** Runs the use case as the idempotent generator does: a fresh job id, no owner. */
function generate(deps: GenerateDeps, command: GenerateCommand, owner: string | null = null) {
  return generateImages(deps, command, {jobId: randomUUID(), owner, leaseMs: LEASE_MS});
}

const upstreamFailure = (code: 'UPSTREAM_ERROR' | 'CONTENT_POLICY_VIOLATION' = 'UPSTREAM_ERROR') => ({
  error: new AppError(code, `failed with ${code}`),
});

describe('generateImages', () => {
  test('splits the count by the model per-call limit and records every image in order', async () => {
    const {provider, objects, metadata, deps} = setUp();
    const job = await generate(deps, command({count: 3}, 1));
    expect(provider.calls.map(call => call.n)).toEqual([1, 1, 1]);
    expect(job.status).toBe('completed');
    expect(job.images.map(image => image.index)).toEqual([0, 1, 2]);
    expect(await metadata.getJob(job.id)).toEqual(job);
    for (const image of job.images) {
      expect(image.object_path).toMatch(new RegExp(`^images/${job.id}/00${image.index}-${image.id}\\.png$`));
      expect(objects.objects.get(image.object_path)?.info.contentType).toBe('image/png');
      expect(await metadata.getImage(image.id)).toEqual(image);
    }
    expect(job.usage).toEqual({input_tokens: 3, output_tokens: 6, total_tokens: 9});
  });

  test('passes the command parameters upstream as they are, and keeps each of them with the job', async () => {
    const {provider, deps} = setUp();
    const parameters = {size: '1536x1024', quality: 'high', output_format: 'webp', output_compression: 70};
    const job = await generate(deps, command(parameters));
    expect(provider.calls[0]).toEqual({
      model: 'gpt-image-2.6-sunburst',
      prompt: 'a lighthouse',
      n: 1,
      parameters,
    });
    expect(job.parameters).toEqual(storedParameters(parameters as Partial<JobParameters>));
  });

  test('one failed call fails the job: no object is left, and the job is recorded failed with the error', async () => {
    const {provider, objects, metadata, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    await expect(generate(deps, command({count: 3}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(objects.objects.size).toBe(0);
    expect(failedJobs(metadata)).toEqual([
      expect.objectContaining({
        status: 'failed',
        images: [],
        lease_until: null,
        error: {code: 'UPSTREAM_ERROR', message: 'failed with UPSTREAM_ERROR'},
      }),
    ]);
    expect(metadata.imageJobs.size).toBe(0);
  });

  test('the first failure cancels the calls still waiting upstream', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push(upstreamFailure(), {delayMs: 60_000}, {delayMs: 60_000});
    await expect(generate(deps, command({count: 3}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(provider.cancelled).toHaveLength(2);
    expect(objects.objects.size).toBe(0);
  });

  test('with allowPartial, the images that were made are kept and the failed calls reported', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    const job = await generate(deps, command({count: 3, allow_partial: true}, 1));
    expect(job.status).toBe('partial');
    expect(job.images.map(image => image.index)).toEqual([0, 2]);
    expect(job.failures).toEqual([
      {first_index: 1, count: 1, code: 'UPSTREAM_ERROR', error: 'failed with UPSTREAM_ERROR'},
    ]);
    expect([...objects.objects.keys()].sort()).toEqual(job.images.map(image => image.object_path).sort());
  });

  test('with allowPartial and no image made, the job fails', async () => {
    const {provider, metadata, deps} = setUp();
    provider.script.push(upstreamFailure(), upstreamFailure());
    await expect(generate(deps, command({count: 2, allow_partial: true}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(failedJobs(metadata)).toHaveLength(1);
  });

  test("the caller's fault is reported before an outage", async () => {
    const {provider, deps} = setUp();
    provider.script.push(upstreamFailure('UPSTREAM_ERROR'), upstreamFailure('CONTENT_POLICY_VIOLATION'));
    await expect(generate(deps, command({count: 2, allow_partial: true}, 1))).rejects.toMatchObject({
      code: 'CONTENT_POLICY_VIOLATION',
    });
  });

  test('an object that cannot be stored fails the job; the other objects of its call are removed', async () => {
    const {provider, objects, metadata, deps} = setUp();
    provider.script.push({images: [tinyPng(8, 8, 1), tinyPng(8, 8, 2), tinyPng(8, 8, 3)]});
    const put = objects.put.bind(objects);
    let puts = 0;
    objects.put = async (path, data, info) => {
      if (++puts === 2) throw new Error('bucket unavailable');
      return put(path, data, info);
    };
    await expect(generate(deps, command({count: 3}))).rejects.toMatchObject({
      code: 'STORAGE_ERROR',
      message: 'Could not store a generated image',
    });
    expect(objects.objects.size).toBe(0);
    expect(failedJobs(metadata)).toHaveLength(1);
  });

  test('bytes that are not an image are an upstream error, and nothing is kept', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push({images: [Buffer.from('<html>not an image</html>')]});
    await expect(generate(deps, command())).rejects.toMatchObject({code: 'UPSTREAM_ERROR'});
    expect(objects.objects.size).toBe(0);
  });

  test('the job is recorded running, with its lease, before any upstream call', async () => {
    const {provider, metadata, deps} = setUp();
    const seen: (string | null)[] = [];
    const call = provider.generate.bind(provider);
    provider.generate = (request, store, signal) => {
      const [job] = [...metadata.jobs.values()];
      seen.push(job ? `${job.status} until ${job.lease_until}` : null);
      return call(request, store, signal);
    };
    const started = new Date('2030-01-01T00:00:00Z');
    const job = await generate({...deps, now: () => started}, command());
    expect(seen).toEqual([`running until ${new Date(started.getTime() + LEASE_MS).toISOString()}`]);
    expect((await metadata.getJob(job.id))?.status).toBe('completed');
  });

  test('a running record that cannot be written stops the job before anything is paid', async () => {
    const {provider, deps, metadata} = setUp();
    metadata.createJob = async () => {
      throw new Error('metadata store down');
    };
    await expect(generate(deps, command())).rejects.toMatchObject({
      code: 'STORAGE_ERROR',
      message: 'Could not record the job',
    });
    expect(provider.calls).toHaveLength(0);
  });

  test('a running record whose write outcome is unknown is read back, and the run goes on if it landed', async () => {
    const {provider, deps, metadata} = setUp();
    const create = metadata.createJob.bind(metadata);
    metadata.createJob = async job => {
      await create(job);
      throw new OutcomeUnknownError('deadline');
    };
    const job = await generate(deps, command());
    expect(job.status).toBe('completed');
    expect(provider.calls).toHaveLength(1);
  });

  test('a final record that fails for certain removes the stored objects and fails the job', async () => {
    const {objects, metadata, deps} = setUp();
    metadata.completeJob = async () => {
      throw new Error('metadata store refused the write');
    };
    await expect(generate(deps, command({count: 2}))).rejects.toMatchObject({
      code: 'STORAGE_ERROR',
      message: 'Could not record the job',
    });
    expect(objects.objects.size).toBe(0);
    expect(failedJobs(metadata)).toHaveLength(1);
  });

  test('a final record whose outcome is unknown, read back as landed, is a success', async () => {
    const {objects, metadata, deps} = setUp();
    const complete = metadata.completeJob.bind(metadata);
    metadata.completeJob = async job => {
      await complete(job);
      throw new OutcomeUnknownError('deadline');
    };
    const job = await generate(deps, command({count: 2}));
    expect(job.status).toBe('completed');
    expect(objects.objects.size).toBe(2);
    expect((await metadata.getJob(job.id))?.images).toEqual(job.images);
  });

  test('a final record whose outcome cannot be known keeps every object and says the job may complete', async () => {
    const {objects, metadata, deps} = setUp();
    metadata.completeJob = async () => {
      throw new OutcomeUnknownError('deadline');
    };
    const error = await generate(deps, command({count: 2})).catch((e: unknown) => e as AppError);
    expect(error).toMatchObject({code: 'JOB_OUTCOME_UNKNOWN', details: {job_id: expect.any(String)}});
    const jobId = (error as AppError).details!.job_id as string;
    expect((error as AppError).message).toContain(jobId);
    expect((error as AppError).message).toMatch(/may still complete/);
    // Nothing a landing record could point at is removed; the job stays running for the reconciler.
    expect(objects.objects.size).toBe(2);
    expect((await metadata.getJob(jobId))?.status).toBe('running');
  });

  test('a job the reconciler failed meanwhile is not completed, and its objects go', async () => {
    const {objects, metadata, deps} = setUp();
    const complete = metadata.completeJob.bind(metadata);
    metadata.completeJob = async job => {
      await metadata.failJob(job.id, {code: 'STORAGE_ERROR', message: 'stopped'}, new Date().toISOString());
      return complete(job);
    };
    await expect(generate(deps, command({count: 2}))).rejects.toMatchObject({code: 'STORAGE_ERROR'});
    expect(objects.objects.size).toBe(0);
    expect(failedJobs(metadata)).toHaveLength(1);
  });

  test('a watcher is told of the job, each partial image and each stored image, in order', async () => {
    const {deps} = setUp();
    const events: string[] = [];
    const job = await generateImages(deps, command({count: 2, stream: true, partial_images: 2}), {
      jobId: randomUUID(),
      owner: null,
      leaseMs: LEASE_MS,
      onEvent: event => {
        if (event.type === 'job.created') events.push(`created ${event.job.status}`);
        if (event.type === 'image.partial') events.push(`partial ${event.index}.${event.partialImageIndex}`);
        if (event.type === 'image.completed') events.push(`completed ${event.index} ${event.image.id}`);
      },
    });
    expect(events[0]).toBe('created running');
    for (const index of [0, 1]) {
      const mine = events.filter(e => e.startsWith('partial ' + index) || e.startsWith('completed ' + index));
      expect(mine).toEqual([
        `partial ${index}.0`,
        `partial ${index}.1`,
        `completed ${index} ${job.images[index]!.id}`,
      ]);
    }
  });

  test('the job belongs to its owner', async () => {
    const {deps} = setUp();
    expect((await generate(deps, command(), 'carol')).owner).toBe('carol');
  });
});

describe('model lifecycle at run time', () => {
  test('a model OpenAI says is gone runs once more on its replacement, with a warning', async () => {
    const {provider, metadata, deps} = setUp();
    provider.script.push({error: new AppError('MODEL_UNAVAILABLE', 'gone early')});
    const job = await generate(deps, commandFor({model: 'gpt-image-1.5'}, '2026-11-23'));
    expect(provider.calls.map(call => call.model)).toEqual(['gpt-image-1.5', 'gpt-image-2.6-sunburst']);
    expect(job.parameters).toMatchObject({requested_model: 'gpt-image-1.5', model: 'gpt-image-2.6-sunburst'});
    expect(job.images[0]?.model).toBe('gpt-image-2.6-sunburst');
    expect(job.warnings.map(w => w.code)).toEqual(['MODEL_REPLACED']);
    expect((await metadata.getJob(job.id))?.warnings).toEqual(job.warnings);
  });

  test('without a replacement, the model being gone is the answer', async () => {
    const {provider, deps} = setUp();
    provider.script.push({error: new AppError('MODEL_UNAVAILABLE', 'gone')});
    await expect(generate(deps, command({model: 'gpt-image-2'}))).rejects.toMatchObject({
      code: 'MODEL_UNAVAILABLE',
    });
    expect(provider.calls).toHaveLength(1);
  });

  test('a size the replacement cannot make is made larger and stored at the size asked for', async () => {
    const {provider, objects, deps} = setUp();
    const job = await generate(deps, command({model: 'dall-e-2', size: '256x256', count: 2}));
    expect(provider.calls[0]?.parameters.size).toBe('1024x1024');
    for (const image of job.images) {
      expect([image.width, image.height, image.size]).toEqual([256, 256, '256x256']);
      const stored = objects.objects.get(image.object_path)!;
      expect(new HeaderImageCodec().inspect(stored.data)).toMatchObject({
        width: 256,
        height: 256,
        sha256: image.sha256,
      });
    }
    expect(job.warnings.map(w => w.code)).toEqual(['MODEL_REPLACED', 'IMAGE_RESIZED']);
  });
});

describe('sumUsage', () => {
  test('adds counts field by field, nested ones too; null when nothing was reported', () => {
    expect(
      sumUsage([
        {input_tokens: 1, input_tokens_details: {text_tokens: 1}},
        null,
        {input_tokens: 2, input_tokens_details: {text_tokens: 2, image_tokens: 5}, output_tokens: 7},
      ]),
    ).toEqual({input_tokens: 3, input_tokens_details: {text_tokens: 3, image_tokens: 5}, output_tokens: 7});
    expect(sumUsage([null, null])).toBeNull();
  });
});

import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {AppError} from '../../src/core/errors';
import type {GenerateCommand} from '../../src/core/generation';
import {generateImages, sumUsage, type GenerateDeps} from '../../src/core/usecases/generate';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {ScriptedProvider, tinyPng} from '../support/scripted-provider';

function command(overrides: Partial<GenerateCommand> = {}): GenerateCommand {
  return {
    source: 'generate',
    prompt: 'a lighthouse',
    count: 1,
    model: 'gpt-image-1.5',
    parameters: {size: '1024x1024'},
    metadata: {},
    allowPartial: false,
    ...overrides,
  };
}

function setUp() {
  const provider = new ScriptedProvider();
  const objects = new MemoryObjectStore();
  const metadata = new MemoryMetadataStore();
  const deps: GenerateDeps = {provider, objects, metadata, codec: new HeaderImageCodec()};
  return {provider, objects, metadata, deps};
}

const upstreamFailure = (code: 'UPSTREAM_ERROR' | 'CONTENT_POLICY_VIOLATION' = 'UPSTREAM_ERROR') => ({
  error: new AppError(code, `failed with ${code}`),
});

describe('generateImages', () => {
  test('splits the count by the model per-call limit and records every image in order', async () => {
    const {provider, objects, metadata, deps} = setUp();
    const job = await generateImages(deps, command({model: 'dall-e-3', count: 3}));
    expect(provider.calls.map(call => call.n)).toEqual([1, 1, 1]);
    expect(job.status).toBe('completed');
    expect(job.images.map(image => image.index)).toEqual([0, 1, 2]);
    expect(await metadata.getJob(job.id)).toEqual(job);
    for (const image of job.images) {
      expect(image.object_path).toMatch(new RegExp(`^images/${job.id}/00${image.index}-${image.id}\\.png$`));
      expect(objects.objects.get(image.object_path)?.contentType).toBe('image/png');
      expect(await metadata.getImage(image.id)).toEqual(image);
    }
    expect(job.usage).toEqual({input_tokens: 3, output_tokens: 6, total_tokens: 9});
  });

  test('passes the command parameters upstream as they are, and keeps each of them with the job', async () => {
    const {provider, deps} = setUp();
    const parameters = {
      size: '1536x1024',
      quality: 'high',
      output_format: 'webp',
      output_compression: 70,
    } as const;
    const job = await generateImages(deps, command({parameters}));
    expect(provider.calls[0]).toEqual({model: 'gpt-image-1.5', prompt: 'a lighthouse', n: 1, parameters});
    expect(job.parameters).toMatchObject({
      ...parameters,
      background: null,
      moderation: null,
      allow_partial: false,
    });
  });

  test('one failed call fails the job and leaves no object and no record', async () => {
    const {provider, objects, metadata, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    await expect(generateImages(deps, command({model: 'dall-e-3', count: 3}))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(objects.objects.size).toBe(0);
    expect(metadata.jobs.size).toBe(0);
  });

  test('the first failure cancels the calls still waiting upstream', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push(upstreamFailure(), {delayMs: 60_000}, {delayMs: 60_000});
    await expect(generateImages(deps, command({model: 'dall-e-3', count: 3}))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(provider.cancelled).toHaveLength(2);
    expect(objects.objects.size).toBe(0);
  });

  test('with allowPartial, the images that were made are kept and the failed calls reported', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    const job = await generateImages(deps, command({model: 'dall-e-3', count: 3, allowPartial: true}));
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
    await expect(
      generateImages(deps, command({model: 'dall-e-3', count: 2, allowPartial: true})),
    ).rejects.toMatchObject({code: 'UPSTREAM_ERROR'});
    expect(metadata.jobs.size).toBe(0);
  });

  test("the caller's fault is reported before an outage", async () => {
    const {provider, deps} = setUp();
    provider.script.push(upstreamFailure('UPSTREAM_ERROR'), upstreamFailure('CONTENT_POLICY_VIOLATION'));
    await expect(
      generateImages(deps, command({model: 'dall-e-3', count: 2, allowPartial: true})),
    ).rejects.toMatchObject({code: 'CONTENT_POLICY_VIOLATION'});
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
    await expect(generateImages(deps, command({count: 3}))).rejects.toMatchObject({
      code: 'STORAGE_ERROR',
      message: 'Could not store a generated image',
    });
    expect(objects.objects.size).toBe(0);
    expect(metadata.jobs.size).toBe(0);
  });

  test('bytes that are not an image are an upstream error, and nothing is kept', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push({images: [Buffer.from('<html>not an image</html>')]});
    await expect(generateImages(deps, command())).rejects.toMatchObject({code: 'UPSTREAM_ERROR'});
    expect(objects.objects.size).toBe(0);
  });

  test('a record that cannot be written removes the stored objects', async () => {
    const {objects, metadata, deps} = setUp();
    metadata.saveJob = async () => {
      throw new Error('metadata store down');
    };
    await expect(generateImages(deps, command({count: 2}))).rejects.toMatchObject({
      code: 'STORAGE_ERROR',
      message: 'Could not record the job',
    });
    expect(objects.objects.size).toBe(0);
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

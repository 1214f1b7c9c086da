import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {AppError} from '../../src/core/errors';
import type {GenerateCommand} from '../../src/core/generation';
import {commandFor} from '../support/commands';
import {generateImages, sumUsage, type GenerateDeps} from '../../src/core/usecases/generate';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {ScriptedProvider, tinyPng} from '../support/scripted-provider';

/** The command for `body`; with `imagesPerCall`, split into calls of that many images. */
function command(body: Record<string, unknown> = {}, imagesPerCall?: number): GenerateCommand {
  const made = commandFor(body);
  if (imagesPerCall !== undefined) made.plan.imagesPerCall = imagesPerCall;
  return made;
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
    const job = await generateImages(deps, command({count: 3}, 1));
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
    const parameters = {size: '1536x1024', quality: 'high', output_format: 'webp', output_compression: 70};
    const job = await generateImages(deps, command(parameters));
    expect(provider.calls[0]).toEqual({
      model: 'gpt-image-2.6-sunburst',
      prompt: 'a lighthouse',
      n: 1,
      parameters,
    });
    expect(job.parameters).toEqual({
      count: 1,
      requested_model: 'gpt-image-2.6-sunburst',
      model: 'gpt-image-2.6-sunburst',
      ...parameters,
      style: null,
      background: null,
      moderation: null,
      complexity: null,
      safety_identifier: null,
      frame_count: null,
      frame_duration_ms: null,
      svg: null,
      allow_partial: false,
    });
  });

  test('one failed call fails the job and leaves no object and no record', async () => {
    const {provider, objects, metadata, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    await expect(generateImages(deps, command({count: 3}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(objects.objects.size).toBe(0);
    expect(metadata.jobs.size).toBe(0);
  });

  test('the first failure cancels the calls still waiting upstream', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push(upstreamFailure(), {delayMs: 60_000}, {delayMs: 60_000});
    await expect(generateImages(deps, command({count: 3}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(provider.cancelled).toHaveLength(2);
    expect(objects.objects.size).toBe(0);
  });

  test('with allowPartial, the images that were made are kept and the failed calls reported', async () => {
    const {provider, objects, deps} = setUp();
    provider.script.push({}, upstreamFailure(), {});
    const job = await generateImages(deps, command({count: 3, allow_partial: true}, 1));
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
    await expect(generateImages(deps, command({count: 2, allow_partial: true}, 1))).rejects.toMatchObject({
      code: 'UPSTREAM_ERROR',
    });
    expect(metadata.jobs.size).toBe(0);
  });

  test("the caller's fault is reported before an outage", async () => {
    const {provider, deps} = setUp();
    provider.script.push(upstreamFailure('UPSTREAM_ERROR'), upstreamFailure('CONTENT_POLICY_VIOLATION'));
    await expect(generateImages(deps, command({count: 2, allow_partial: true}, 1))).rejects.toMatchObject({
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

describe('model lifecycle at run time', () => {
  test('a model OpenAI says is gone runs once more on its replacement, with a warning', async () => {
    const {provider, metadata, deps} = setUp();
    provider.script.push({error: new AppError('MODEL_UNAVAILABLE', 'gone early')});
    const job = await generateImages(deps, commandFor({model: 'gpt-image-1.5'}, '2026-11-23'));
    expect(provider.calls.map(call => call.model)).toEqual(['gpt-image-1.5', 'gpt-image-2.6-sunburst']);
    expect(job.parameters).toMatchObject({requested_model: 'gpt-image-1.5', model: 'gpt-image-2.6-sunburst'});
    expect(job.images[0]?.model).toBe('gpt-image-2.6-sunburst');
    expect(job.warnings.map(w => w.code)).toEqual(['MODEL_REPLACED']);
    expect((await metadata.getJob(job.id))?.warnings).toEqual(job.warnings);
  });

  test('without a replacement, the model being gone is the answer', async () => {
    const {provider, deps} = setUp();
    provider.script.push({error: new AppError('MODEL_UNAVAILABLE', 'gone')});
    await expect(generateImages(deps, command({model: 'gpt-image-2'}))).rejects.toMatchObject({
      code: 'MODEL_UNAVAILABLE',
    });
    expect(provider.calls).toHaveLength(1);
  });

  test('a size the replacement cannot make is made larger and stored at the size asked for', async () => {
    const {provider, objects, deps} = setUp();
    const job = await generateImages(deps, command({model: 'dall-e-2', size: '256x256', count: 2}));
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

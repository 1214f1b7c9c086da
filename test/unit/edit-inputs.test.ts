import {createHash, randomBytes} from 'node:crypto';
import {Readable} from 'node:stream';
import sharp from 'sharp';
import {HeaderImageCodec} from '../../src/adapters/imaging/image-codec';
import {ModelCatalogue} from '../../src/core/catalogue';
import {AppError, validationError, type FieldProblem} from '../../src/core/errors';
import {
  parseEditBody,
  planGeneration,
  type EditInputs,
  type GenerateCommand,
  type ImageReference,
} from '../../src/core/generation';
import type {ForeignObjects} from '../../src/core/ports';
import type {Requester} from '../../src/core/requester';
import {EDIT_LIMITS, resolveEditInputs, type EditSourceDeps} from '../../src/core/usecases/edit-inputs';
import {fingerprintOf} from '../../src/core/usecases/idempotency';
import {
  HEAD_BYTES,
  ImageBytesCollector,
  imageBytesFromBase64,
  imageBytesFromStream,
  imageBytesOf,
} from '../../src/core/image-bytes';
import {solidImage} from '../support/images';
import {MemoryMetadataStore, MemoryObjectStore} from '../support/memory-stores';
import {finishedJob, runningJob} from '../support/records';

const BEFORE_SHUTDOWN = '2026-11-20';
const AFTER_SHUTDOWN = '2026-12-02';

function planEdit(body: Record<string, unknown>, day = AFTER_SHUTDOWN): GenerateCommand {
  return planGeneration(parseEditBody({prompt: 'add a hat', images: [{image_id: 'x'}], ...body}), {
    catalogue: new ModelCatalogue(),
    defaultModel: 'gpt-image-2.6-sunburst',
    retiredModels: 'replace',
    day,
  });
}

function problemsOf(run: () => unknown): string[] {
  try {
    run();
  } catch (error) {
    if (!(error instanceof AppError) || error.code !== 'VALIDATION_ERROR') throw error;
    return (error.details as {fields: FieldProblem[]}).fields.map(p => `${p.field}: ${p.message}`);
  }
  throw new Error('expected a validation failure');
}

describe('the model rules of an edit', () => {
  const png = {b64_json: Buffer.from('not checked here').toString('base64')};

  test('the model must edit', () => {
    expect(problemsOf(() => planEdit({model: 'dall-e-2'}, '2026-05-01'))).toEqual([
      'model: dall-e-2 does not edit images',
    ]);
  });

  test('markup only on models that take it, and never with a mask', () => {
    expect(planEdit({model: 'gpt-image-2.5-flare', markup: png}).edit?.markup).toMatchObject({kind: 'bytes'});
    expect(problemsOf(() => planEdit({markup: png}))).toEqual([
      'markup: gpt-image-2.6-sunburst does not take markup',
    ]);
    expect(problemsOf(() => planEdit({model: 'gpt-image-2.5-sunburst', markup: png, mask: png}))).toEqual([
      'markup: cannot be combined with mask; send one of them',
    ]);
  });

  test('input_fidelity per model: high or low on gpt-image-1.5, low on gpt-image-1-mini, none on gpt-image-2', () => {
    for (const value of ['high', 'low']) {
      const command = planEdit({model: 'gpt-image-1.5', input_fidelity: value}, BEFORE_SHUTDOWN);
      expect(command.plan.parameters.input_fidelity).toBe(value);
    }
    expect(
      planEdit({model: 'gpt-image-1-mini', input_fidelity: 'low'}, BEFORE_SHUTDOWN).plan.parameters,
    ).toMatchObject({input_fidelity: 'low'});
    expect(
      problemsOf(() => planEdit({model: 'gpt-image-1-mini', input_fidelity: 'high'}, BEFORE_SHUTDOWN)),
    ).toEqual(["input_fidelity: 'high' is invalid for gpt-image-1-mini; allowed: low"]);
    expect(problemsOf(() => planEdit({model: 'gpt-image-2', input_fidelity: 'low'}))).toEqual([
      'input_fidelity: gpt-image-2 does not take input_fidelity',
    ]);
  });

  test('after gpt-image-1.5 shuts down, input_fidelity is dropped on its replacement, with a warning', () => {
    const command = planEdit({model: 'gpt-image-1.5', input_fidelity: 'high'}, AFTER_SHUTDOWN);
    expect(command.plan.model).toBe('gpt-image-2.6-sunburst');
    expect(command.plan.parameters).not.toHaveProperty('input_fidelity');
    expect(command.plan.warnings.map(w => [w.code, w.field])).toContainEqual([
      'PARAMETER_DROPPED',
      'input_fidelity',
    ]);
  });

  test('an edit takes no moderation, style or hd, and no mask with GIF output', () => {
    expect(problemsOf(() => planEdit({moderation: 'low', style: 'vivid', quality: 'hd'})).sort()).toEqual([
      'moderation: unknown field',
      'quality: must be one of: low, medium, high, xhigh, max, auto, standard',
      'style: unknown field',
    ]);
    expect(problemsOf(() => planEdit({output_format: 'gif', mask: png}))).toEqual([
      'mask: GIF output takes no mask',
    ]);
  });

  test('1-16 images, each exactly one kind of reference', () => {
    expect(problemsOf(() => planEdit({images: []}))).toEqual(['images: give at least one image']);
    expect(problemsOf(() => planEdit({images: Array.from({length: 17}, () => png)}))).toEqual([
      'images: at most 16 images',
    ]);
    expect(problemsOf(() => planEdit({images: [{image_id: 'a', gcs_uri: 'gs://bucket/c'}]}))).toEqual([
      'images.0: give exactly one of image_id, gcs_uri, b64_json',
    ]);
    expect(problemsOf(() => planEdit({images: [{gcs_uri: 'https://example.com/x.png'}]}))).toEqual([
      'images.0.gcs_uri: must be gs://bucket/path',
    ]);
  });
});

describe('resolveEditInputs', () => {
  const alice: Requester = {kind: 'api-key', name: 'alice', admin: false, dailyQuota: null};
  const bob: Requester = {kind: 'api-key', name: 'bob', admin: false, dailyQuota: null};

  class MapForeignObjects implements ForeignObjects {
    readonly objects = new Map<string, Buffer>();
    async read(bucket: string, path: string, maxBytes: number): Promise<Buffer | null> {
      const data = this.objects.get(`${bucket}/${path}`);
      if (data && data.length > maxBytes) throw validationError([{field: path, message: 'too large'}]);
      return data ?? null;
    }
  }

  function setUp(ownBucket: string | null = 'own-bucket') {
    const objects = new MemoryObjectStore();
    const metadata = new MemoryMetadataStore();
    const foreign = new MapForeignObjects();
    const deps: EditSourceDeps = {
      objects,
      metadata,
      codec: new HeaderImageCodec(),
      ownBucket,
      sourceBuckets: ['shared-sources'],
      ...(ownBucket ? {foreign} : {}),
    };
    return {deps, objects, metadata, foreign};
  }

  const bytes = (data: Buffer, filename = 'upload'): ImageReference => ({
    kind: 'bytes',
    data: imageBytesOf(data),
    filename,
  });

  async function failure(promise: Promise<unknown>): Promise<{code: string; problems: string[]}> {
    try {
      await promise;
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      const fields = ((error.details?.fields ?? []) as FieldProblem[]).map(p => `${p.field}: ${p.message}`);
      return {code: error.code, problems: fields};
    }
    throw new Error('expected a failure');
  }

  test('images are judged by their bytes: PNG, WebP and JPEG pass whatever they are called', async () => {
    const {deps} = setUp();
    const inputs: EditInputs = {
      images: [
        bytes(await solidImage('png'), 'photo.jpg'),
        bytes(await solidImage('webp'), 'photo.png'),
        bytes(await solidImage('jpeg'), 'notes.txt'),
      ],
    };
    const resolved = await resolveEditInputs(deps, alice, inputs);
    expect(resolved.upstream.images.map(image => [image.filename, image.contentType])).toEqual([
      ['images-0.png', 'image/png'],
      ['images-1.webp', 'image/webp'],
      ['images-2.jpg', 'image/jpeg'],
    ]);
    expect(resolved.sources.map(source => source.role)).toEqual(['image', 'image', 'image']);
  });

  test('anything else fails, named as the body called it; every problem at once', async () => {
    const {deps} = setUp();
    const gif = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64');
    const result = await failure(
      resolveEditInputs(deps, alice, {
        images: [bytes(Buffer.from('just text'), 'a.png'), bytes(gif, 'b.png')],
        imagesField: 'image',
      }),
    );
    expect(result).toEqual({
      code: 'VALIDATION_ERROR',
      problems: [
        'image[0]: must be a PNG, WebP or JPEG image (judged by its bytes)',
        'image[1]: must be a PNG, WebP or JPEG image (judged by its bytes)',
      ],
    });
  });

  test('an image of 50 MB, and a mask of 4 MB, are refused: OpenAI takes less', async () => {
    const {deps} = setUp();
    const png = await solidImage('png', 64, 64, {alpha: true});
    const oversized = Buffer.concat([png, Buffer.alloc(EDIT_LIMITS.imageBytes - png.length)]);
    const bigMask = Buffer.concat([png, Buffer.alloc(EDIT_LIMITS.maskBytes - png.length)]);
    expect(await failure(resolveEditInputs(deps, alice, {images: [bytes(oversized)]}))).toEqual({
      code: 'VALIDATION_ERROR',
      problems: [`images[0]: is ${EDIT_LIMITS.imageBytes} bytes; it must be under ${EDIT_LIMITS.imageBytes}`],
    });
    expect(
      await failure(resolveEditInputs(deps, alice, {images: [bytes(png)], mask: bytes(bigMask)})),
    ).toEqual({
      code: 'VALIDATION_ERROR',
      problems: [`mask: is ${EDIT_LIMITS.maskBytes} bytes; it must be under ${EDIT_LIMITS.maskBytes}`],
    });
  });

  /** An image a finished job of `owner` stored, as a run stores it. */
  async function storedImageOf(objects: MemoryObjectStore, metadata: MemoryMetadataStore, owner: string) {
    const data = await solidImage('png');
    const job = finishedJob({owner}, 1);
    const image = {...job.images[0]!, bytes: data.length};
    await objects.put(image.object_path, data, {contentType: 'image/png', metadata: {}});
    await metadata.createJob(runningJob({...job, images: [image]}));
    await metadata.completeJob({...job, images: [image]});
    return {data, job, image};
  }

  test('a mask or markup is a PNG with alpha, the size of the first image', async () => {
    const {deps} = setUp();
    const image = bytes(await solidImage('jpeg', 64, 48));
    const ok = await resolveEditInputs(deps, alice, {
      images: [image],
      mask: bytes(await solidImage('png', 64, 48, {alpha: true})),
    });
    expect(ok.upstream.mask?.contentType).toBe('image/png');
    expect(ok.sources.map(source => source.role)).toEqual(['image', 'mask']);
    const result = await failure(
      resolveEditInputs(deps, alice, {
        images: [image],
        mask: bytes(await solidImage('png', 64, 48)),
        markup: bytes(await solidImage('png', 32, 32, {alpha: true})),
      }),
    );
    expect(result.problems).toEqual([
      'mask: must be a PNG with an alpha channel',
      'markup: is 32x32; it must be the size of the first image, 64x48',
    ]);
    const webpMask = await failure(
      resolveEditInputs(deps, alice, {
        images: [image],
        mask: bytes(await solidImage('webp', 64, 48, {alpha: true})),
      }),
    );
    expect(webpMask.problems).toEqual(['mask: must be a PNG with an alpha channel']);
  });

  test('a markup with no transparent pixel is refused: laid over the image, it would hide it', async () => {
    const {deps} = setUp();
    const image = bytes(await solidImage('png', 64, 48));
    const opaque = await sharp({
      create: {width: 64, height: 48, channels: 4, background: {r: 1, g: 2, b: 3, alpha: 1}},
    })
      .png()
      .toBuffer();
    const refused = await failure(resolveEditInputs(deps, alice, {images: [image], markup: bytes(opaque)}));
    expect(refused.problems).toEqual(['markup: must have transparent pixels (it is laid over the image)']);
    const drawn = await resolveEditInputs(deps, alice, {
      images: [image],
      markup: bytes(await solidImage('png', 64, 48, {alpha: true})),
    });
    expect(drawn.upstream.markup?.contentType).toBe('image/png');
  });

  test("image ids resolve to the requester's own images only", async () => {
    const {deps, objects, metadata} = setUp();
    const {data, image} = await storedImageOf(objects, metadata, 'alice');
    const resolved = await resolveEditInputs(deps, alice, {images: [{kind: 'image_id', id: image.id}]});
    const sent = Buffer.from(await resolved.upstream.images[0]!.data.arrayBuffer());
    expect(sent.equals(data)).toBe(true);
    expect(resolved.sources).toEqual([
      {role: 'image', image_id: image.id, gcs_uri: null, sha256: expect.stringMatching(/^[0-9a-f]{64}$/)},
    ]);
    expect(await failure(resolveEditInputs(deps, bob, {images: [{kind: 'image_id', id: image.id}]}))).toEqual(
      {
        code: 'IMAGE_NOT_FOUND',
        problems: ['images[0]: no such image'],
      },
    );
  });

  test("a gs:// URI of one of the function's own images is read through its record: its owner's only", async () => {
    const {deps, objects, metadata} = setUp();
    const {data, job, image} = await storedImageOf(objects, metadata, 'alice');
    const uri = (path: string) => ({kind: 'gcs_uri' as const, bucket: 'own-bucket', path});
    const resolved = await resolveEditInputs(deps, alice, {images: [uri(image.object_path)]});
    expect(resolved.sources[0]).toMatchObject({gcs_uri: `gs://own-bucket/${image.object_path}`});
    const notFound = {code: 'IMAGE_NOT_FOUND', problems: ['images[0]: no such image']};
    expect(await failure(resolveEditInputs(deps, bob, {images: [uri(image.object_path)]}))).toEqual(notFound);
    // Its id under another job's prefix, and paths under images/ that are not an image's, are not found either.
    const elsewhere = image.object_path.replace(job.id, finishedJob({}, 1).id);
    await objects.put(elsewhere, data, {contentType: 'image/png', metadata: {}});
    await objects.put(`images/${job.id}/copy.png`, data, {contentType: 'image/png', metadata: {}});
    for (const path of [elsewhere, `images/${job.id}/copy.png`]) {
      expect(await failure(resolveEditInputs(deps, alice, {images: [uri(path)]}))).toEqual(notFound);
    }
  });

  test('an EXIF-turned JPEG is measured as shown: its mask has the turned size', async () => {
    const {deps} = setUp();
    const turned = await sharp(await solidImage('jpeg', 64, 48))
      .withMetadata({orientation: 6})
      .toBuffer();
    const resolved = await resolveEditInputs(deps, alice, {
      images: [bytes(turned)],
      mask: bytes(await solidImage('png', 48, 64, {alpha: true})),
    });
    expect(resolved.upstream.mask?.contentType).toBe('image/png');
    const refused = await failure(
      resolveEditInputs(deps, alice, {
        images: [bytes(turned)],
        mask: bytes(await solidImage('png', 64, 48, {alpha: true})),
      }),
    );
    expect(refused.problems).toEqual(['mask: is 64x48; it must be the size of the first image, 48x64']);
  });

  test('gs:// sources: the own bucket and EDIT_SOURCE_BUCKETS; any other bucket is refused', async () => {
    const {deps, objects, foreign} = setUp();
    const data = await solidImage('png');
    await objects.put('uploads/a.png', data, {contentType: 'image/png', metadata: {}});
    foreign.objects.set('shared-sources/b.png', data);
    const resolved = await resolveEditInputs(deps, alice, {
      images: [
        {kind: 'gcs_uri', bucket: 'own-bucket', path: 'uploads/a.png'},
        {kind: 'gcs_uri', bucket: 'shared-sources', path: 'b.png'},
      ],
    });
    expect(resolved.sources.map(source => source.gcs_uri)).toEqual([
      'gs://own-bucket/uploads/a.png',
      'gs://shared-sources/b.png',
    ]);
    expect(
      await failure(
        resolveEditInputs(deps, alice, {images: [{kind: 'gcs_uri', bucket: 'elsewhere', path: 'c.png'}]}),
      ),
    ).toEqual({
      code: 'VALIDATION_ERROR',
      problems: [
        "images[0]: bucket 'elsewhere' is not one this function may read (its own, or EDIT_SOURCE_BUCKETS)",
      ],
    });
    expect(
      await failure(
        resolveEditInputs(deps, alice, {images: [{kind: 'gcs_uri', bucket: 'own-bucket', path: 'none.png'}]}),
      ),
    ).toEqual({code: 'IMAGE_NOT_FOUND', problems: ['images[0]: no such image']});
  });

  test('objects of 50 MB are refused in either bucket, before they are kept', async () => {
    const {deps, objects, foreign} = setUp();
    const big = Buffer.alloc(EDIT_LIMITS.imageBytes);
    await objects.put('big.png', big, {contentType: 'image/png', metadata: {}});
    foreign.objects.set('shared-sources/big.png', big);
    const result = await failure(
      resolveEditInputs(deps, alice, {
        images: [
          {kind: 'gcs_uri', bucket: 'own-bucket', path: 'big.png'},
          {kind: 'gcs_uri', bucket: 'shared-sources', path: 'big.png'},
        ],
      }),
    );
    expect(result.problems).toEqual([
      `images[0]: is not under the limit of ${EDIT_LIMITS.imageBytes} bytes`,
      `images[1]: is not under the limit of ${EDIT_LIMITS.imageBytes} bytes`,
    ]);
  });

  test('gs:// sources need Cloud Storage mode', async () => {
    const {deps} = setUp(null);
    expect(
      await failure(
        resolveEditInputs(deps, alice, {images: [{kind: 'gcs_uri', bucket: 'any-bucket', path: 'a.png'}]}),
      ),
    ).toEqual({
      code: 'VALIDATION_ERROR',
      problems: ['images[0]: gs:// sources need Cloud Storage mode (GCS_BUCKET)'],
    });
  });
});

describe('the fingerprint of an edit', () => {
  const upload = (text: string) => ({b64_json: Buffer.from(text).toString('base64')});

  test('is its images as well as its parameters', () => {
    const same = fingerprintOf(planEdit({images: [upload('one')]}));
    expect(fingerprintOf(planEdit({images: [upload('one')]}))).toBe(same);
    expect(fingerprintOf(planEdit({images: [upload('two')]}))).not.toBe(same);
    expect(fingerprintOf(planEdit({images: [upload('one')], mask: upload('m')}))).not.toBe(same);
    expect(fingerprintOf(planEdit({images: [{image_id: 'a'}]}))).not.toBe(
      fingerprintOf(planEdit({images: [{image_id: 'b'}]})),
    );
    expect(fingerprintOf(planEdit({images: [{gcs_uri: 'gs://bucket-a/x.png'}]}))).not.toBe(
      fingerprintOf(planEdit({images: [{gcs_uri: 'gs://bucket-b/x.png'}]})),
    );
  });
});

describe('image bytes', () => {
  const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

  test('however the bytes come, they are held once, hashed, with their head', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const collector = new ImageBytesCollector();
    for (let offset = 0; offset < data.length; offset += 65_536)
      collector.add(data.subarray(offset, offset + 65_536));
    for (const bytes of [
      collector.finish(),
      imageBytesOf(data),
      imageBytesFromBase64(data.toString('base64')),
      (await imageBytesFromStream(Readable.from([data.subarray(0, 100), data.subarray(100)]), data.length))!,
    ]) {
      expect([bytes.size, bytes.sha256, bytes.blob.size]).toEqual([data.length, sha256(data), data.length]);
      expect(bytes.head.equals(data.subarray(0, HEAD_BYTES))).toBe(true);
      expect(Buffer.from(await bytes.blob.arrayBuffer()).equals(data)).toBe(true);
    }
    expect(await imageBytesFromStream(Readable.from([data]), data.length - 1)).toBeNull();
  });

  test('a JPEG whose header lies past the first bytes is still judged right', async () => {
    const jpeg = await solidImage('jpeg', 40, 30);
    // Comment segments (the most one segment holds) before the frame header.
    const comment = Buffer.concat([Buffer.from([0xff, 0xfe, 0xff, 0xff]), Buffer.alloc(65_533, 0x20)]);
    const padded = Buffer.concat([
      jpeg.subarray(0, 2),
      ...Array.from({length: 5}, () => comment),
      jpeg.subarray(2),
    ]);
    expect(padded.length).toBeGreaterThan(HEAD_BYTES);
    const deps: EditSourceDeps = {
      objects: new MemoryObjectStore(),
      metadata: new MemoryMetadataStore(),
      codec: new HeaderImageCodec(),
      ownBucket: null,
      sourceBuckets: [],
    };
    const resolved = await resolveEditInputs(
      deps,
      {kind: 'iam', email: null},
      {
        images: [{kind: 'bytes', data: imageBytesOf(padded), filename: 'x.jpg'}],
      },
    );
    expect(resolved.upstream.images[0]).toMatchObject({contentType: 'image/jpeg'});
    expect(resolved.sources[0]?.sha256).toBe(sha256(padded));
  });
});

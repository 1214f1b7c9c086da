import {createHash} from 'node:crypto';
import {existsSync, readdirSync} from 'node:fs';
import {request} from 'node:http';
import {join} from 'node:path';
import OpenAI, {toFile} from 'openai';
import {startFakeOpenAI, type FakeOpenAI, type RecordedMultipartBody} from '../support/fake-openai';
import {
  getJson,
  startFunction,
  useFunctionWithFakeOpenAI,
  type RunningFunction,
} from '../support/function-server';
import {noiseImage, solidImage} from '../support/images';
import {OpenApiValidator} from '../support/openapi-validator';
import {names, postStream} from '../support/sse-client';
import {useTempDir} from '../support/temp-dir';

const ALICE = 'alice-key-0123456789abcdef';
const BOB = 'bob-key-0123456789abcdef00';
/** Room for every test's inputs, small enough to pass quickly. */
const MAX_UPLOAD_BYTES = 6 * 1024 * 1024;

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, {recursive: true, withFileTypes: true})
    .filter(entry => entry.isFile())
    .map(entry => join(entry.parentPath, entry.name));
}

/** A form as curl -F makes it: files with a name and a declared type, and text fields. */
function formOf(
  files: {field?: string; data: Buffer; name?: string; type?: string}[],
  fields: Record<string, string> = {},
): FormData {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, value);
  for (const {field = 'image', data, name = 'photo.png', type = 'image/png'} of files) {
    form.append(field, new Blob([data], {type}), name);
  }
  return form;
}

describe('POST /edits, local store', () => {
  const validator = new OpenApiValidator();
  const dataDir = useTempDir();
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '0',
    API_KEYS: `alice:${ALICE},bob:${BOB}`,
    MAX_UPLOAD_BYTES: String(MAX_UPLOAD_BYTES),
  }));
  const as = (key: string) => ({'x-api-key': key});

  /** Posts and checks the answer against the OpenAPI document. */
  async function send(
    path: string,
    body: FormData | object,
    key = ALICE,
    headers: Record<string, string> = {},
  ) {
    const url = `${ctx.fn.url}${path}`;
    const response =
      body instanceof FormData
        ? await fetch(url, {method: 'POST', body, headers: {...as(key), ...headers}})
        : await fetch(url, {
            method: 'POST',
            body: JSON.stringify(body),
            headers: {'content-type': 'application/json', ...as(key), ...headers},
          });
    const json = (await response.json()) as any;
    validator.check('POST', url, response.status, json);
    return {status: response.status, headers: response.headers, body: json};
  }

  const editCalls = () => ctx.openai.requests.filter(r => r.path === '/v1/images/edits');
  const sentFiles = (call = 0) => (editCalls()[call]!.body as RecordedMultipartBody).files;
  const sentFields = (call = 0) => (editCalls()[call]!.body as RecordedMultipartBody).fields;

  /** A refusal made before OpenAI was asked anything: the status, code and every problem. */
  async function refused(path: string, body: FormData | object, key = ALICE) {
    const before = editCalls().length;
    const answer = await send(path, body, key);
    expect(editCalls()).toHaveLength(before);
    const fields = (answer.body.details?.fields ?? []) as {field: string; message: string}[];
    return {
      status: answer.status,
      code: answer.body.code,
      problems: fields.map(p => `${p.field}: ${p.message}`),
    };
  }

  async function servedBytes(url: string, key = ALICE): Promise<Buffer> {
    const response = await fetch(url, {headers: as(key)});
    expect(response.status).toBe(200);
    return Buffer.from(await response.arrayBuffer());
  }

  describe('the acceptance case', () => {
    test('an image the function made, edited by its id, is a new stored job served by GET /images/:id', async () => {
      const made = await send('/generate', {prompt: 'a lighthouse', metadata: {case: 'acceptance'}});
      expect(made.status).toBe(200);
      const original = made.body.images[0];

      const edited = await send('/edits', {
        prompt: 'add a red boat',
        images: [{image_id: original.id}],
        metadata: {case: 'acceptance'},
      });
      expect(edited.status).toBe(200);
      expect(edited.body).toMatchObject({
        status: 'completed',
        source: 'edit',
        prompt: 'add a red boat',
        source_images: [{role: 'image', image_id: original.id, gcs_uri: null, sha256: original.sha256}],
      });
      expect(edited.body.job_id).not.toBe(made.body.job_id);
      // OpenAI was sent the stored image itself.
      expect(sentFiles().map(file => [file.field, file.sha256])).toEqual([['image[]', original.sha256]]);

      const image = edited.body.images[0];
      const bytes = await servedBytes(`${ctx.fn.url}/images/${image.id}`);
      expect(sha256(bytes)).toBe(image.sha256);
      expect(image.sha256).not.toBe(original.sha256);
      const job = await getJson(`${ctx.fn.url}/jobs/${edited.body.job_id}`, {headers: as(ALICE)});
      expect(job.body).toMatchObject({status: 'completed', source: 'edit'});
    });

    test('the same from an upload', async () => {
      const photo = await solidImage('jpeg', 96, 64);
      const edited = await send(
        '/edits',
        formOf([{data: photo, name: 'holiday.jpg', type: 'image/jpeg'}], {prompt: 'make it snow'}),
      );
      expect(edited.status).toBe(200);
      expect(edited.body.source_images).toEqual([
        {role: 'image', image_id: null, gcs_uri: null, sha256: sha256(photo)},
      ]);
      expect(sentFiles()).toEqual([
        expect.objectContaining({field: 'image[]', contentType: 'image/jpeg', sha256: sha256(photo)}),
      ]);
      const image = edited.body.images[0];
      expect(sha256(await servedBytes(image.url))).toBe(image.sha256);
    });

    test('the same from base64 in JSON, at /images/edits too', async () => {
      const photo = await solidImage('webp', 64, 64);
      const edited = await send('/images/edits', {
        prompt: 'make it night',
        images: [{b64_json: photo.toString('base64')}],
      });
      expect(edited.status).toBe(200);
      expect(edited.body.source_images[0].sha256).toBe(sha256(photo));
      expect(sentFiles()[0]).toMatchObject({contentType: 'image/webp', sha256: sha256(photo)});
    });
  });

  describe("OpenAI's SDK pointed at the function", () => {
    test('client.images.edit posts multipart to /images/edits and gets the job', async () => {
      const client = new OpenAI({apiKey: ALICE, baseURL: ctx.fn.url, maxRetries: 0});
      const photo = await solidImage('png', 64, 64);
      const result = await client.images.edit({
        image: await toFile(photo, 'photo.png', {type: 'image/png'}),
        prompt: 'add a hat',
        model: 'gpt-image-2.5-flare',
        n: 2,
        quality: 'low',
      });
      // The SDK types the answer as ImagesResponse; what comes back is the job.
      const job = result as unknown as {
        job_id: string;
        status: string;
        images: {url: string}[];
        parameters: object;
      };
      expect(job).toMatchObject({
        status: 'completed',
        source: 'edit',
        parameters: {requested_model: 'gpt-image-2.5-flare', count: 2, quality: 'low'},
      });
      expect(job.images).toHaveLength(2);
      // And what the SDK's types say it is: data[].url serves each stored image.
      expect(result.created).toBe(Math.floor(Date.parse((job as {created_at?: string}).created_at!) / 1000));
      expect(result.data?.map(image => image.url)).toEqual(job.images.map(image => image.url));
      for (const image of result.data ?? []) {
        const served = await fetch(image.url!, {headers: {'X-API-Key': ALICE}});
        expect([served.status, served.headers.get('content-type')]).toEqual([200, 'image/png']);
      }
      expect(sentFields()).toMatchObject({model: 'gpt-image-2.5-flare', n: '2', quality: 'low'});
      expect(sentFiles().map(file => file.sha256)).toEqual([sha256(photo)]);

      const several = await client.images.edit({
        image: [
          await toFile(photo, 'a.png', {type: 'image/png'}),
          await toFile(await solidImage('jpeg'), 'b.jpg', {type: 'image/jpeg'}),
        ],
        prompt: 'put them together',
        model: 'gpt-image-2',
      });
      expect((several as unknown as {source_images: unknown[]}).source_images).toHaveLength(2);

      // response_format: url is what it answers anyway; b64_json cannot be, and says why.
      const asUrl = await client.images.edit({
        image: await toFile(photo, 'photo.png', {type: 'image/png'}),
        prompt: 'add a hat',
        response_format: 'url',
      });
      expect(asUrl.data).toHaveLength(1);
      const asBase64 = await client.images
        .edit({
          image: await toFile(photo, 'photo.png', {type: 'image/png'}),
          prompt: 'x',
          response_format: 'b64_json',
        })
        .catch((error: unknown) => error);
      expect(asBase64).toBeInstanceOf(OpenAI.BadRequestError);
      expect((asBase64 as Error).message).toContain('response_format');
    });

    test('a refused edit is the SDK error of its status, with our message', async () => {
      const client = new OpenAI({apiKey: ALICE, baseURL: ctx.fn.url, maxRetries: 0});
      const refusal = client.images.edit({
        image: await toFile(Buffer.from('not an image'), 'photo.png', {type: 'image/png'}),
        prompt: 'add a hat',
        model: 'gpt-image-2',
      });
      await expect(refusal).rejects.toBeInstanceOf(OpenAI.BadRequestError);
      await expect(refusal).rejects.toMatchObject({
        status: 400,
        message: expect.stringContaining('image[0]: must be a PNG, WebP or JPEG image'),
      });
      expect(editCalls()).toHaveLength(0);
    });

    test('a wrong key is refused as the SDK expects: an AuthenticationError', async () => {
      const client = new OpenAI({apiKey: 'not-a-key', baseURL: ctx.fn.url, maxRetries: 0});
      await expect(
        client.images.edit({
          image: await toFile(await solidImage('png'), 'a.png'),
          prompt: 'x',
          model: 'gpt-image-2',
        }),
      ).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      expect(editCalls()).toHaveLength(0);
    });
  });

  describe('multipart fields', () => {
    test('numbers and booleans from text, metadata as JSON text or metadata[key], options reach OpenAI', async () => {
      const photo = await solidImage('png', 64, 64);
      const edited = await send(
        '/edits',
        formOf([{data: photo}], {
          prompt: 'sharper',
          model: 'gpt-image-2.5-sunburst',
          n: '3',
          output_format: 'jpeg',
          output_compression: '55',
          allow_partial: 'true',
          complexity: 'null',
          'metadata[team]': 'blue',
          'metadata[order]': '7',
          safety_identifier: 'user-1234',
        }),
      );
      expect(edited.status).toBe(200);
      expect(edited.body.images).toHaveLength(3);
      expect(edited.body.metadata).toEqual({team: 'blue', order: '7'});
      expect(edited.body.parameters).toMatchObject({
        count: 3,
        output_format: 'jpeg',
        output_compression: 55,
        allow_partial: true,
        complexity: null,
      });
      expect(sentFields()).toMatchObject({
        n: '3',
        output_format: 'jpeg',
        output_compression: '55',
        safety_identifier: 'user-1234',
      });
      expect(sentFields()).not.toHaveProperty('complexity');

      const json = await send('/edits', formOf([{data: photo}], {prompt: 'x', metadata: '{"team":"green"}'}));
      expect(json.body.metadata).toEqual({team: 'green'});
      const listed = await getJson(`${ctx.fn.url}/jobs?metadata.team=blue`, {headers: as(ALICE)});
      expect(listed.body.jobs.map((job: {job_id: string}) => job.job_id)).toEqual([edited.body.job_id]);
    });

    test('a field sent wrong is named as it was sent, and nothing is paid', async () => {
      const photo = await solidImage('png');
      const form = formOf([{data: photo}, {field: 'photo', data: photo}], {
        prompt: 'x',
        n: 'two',
        'metadata[__name__]': 'x',
        colour: 'red',
      });
      expect(await refused('/edits', form)).toEqual({
        status: 400,
        code: 'VALIDATION_ERROR',
        problems: [
          'photo: unknown field',
          'n: Invalid input: expected number, received string',
          'metadata[__name__]: keys are 1-64 characters of letters, digits, _ . - (not __name__)',
          'colour: unknown field',
        ],
      });
    });

    test('Idempotency-Key and idempotency_key must agree', async () => {
      const form = formOf([{data: await solidImage('png')}], {prompt: 'x', idempotency_key: 'one'});
      const answer = await send('/edits', form, ALICE, {'Idempotency-Key': 'two'});
      expect([answer.status, answer.body.details.fields]).toEqual([
        400,
        [{field: 'idempotency_key', message: 'differs from the Idempotency-Key header'}],
      ]);
    });

    test('other media types are 415, naming both that are taken', async () => {
      const response = await fetch(`${ctx.fn.url}/edits`, {
        method: 'POST',
        body: 'prompt=x',
        headers: {'content-type': 'application/x-www-form-urlencoded', ...as(ALICE)},
      });
      const body = (await response.json()) as {code: string; error: string};
      expect([response.status, body.code]).toEqual([415, 'UNSUPPORTED_MEDIA_TYPE']);
      expect(body.error).toMatch(/application\/json or multipart\/form-data/);
    });

    test('/generate takes no multipart body: 415', async () => {
      const form = formOf([{data: await solidImage('png')}], {prompt: 'x'});
      const answer = await send('/generate', form);
      expect([answer.status, answer.body.code]).toEqual([415, 'UNSUPPORTED_MEDIA_TYPE']);
    });
  });

  describe('input rules, each refused before OpenAI is called', () => {
    test('1-16 images', async () => {
      const png = await solidImage('png', 32, 32);
      expect((await refused('/edits', formOf([], {prompt: 'x'}))).problems).toEqual([
        'image: give at least one image',
      ]);
      expect((await refused('/edits', {prompt: 'x', images: []})).problems).toEqual([
        'images: give at least one image',
      ]);
      const seventeen = Array.from({length: 17}, () => ({field: 'image[]', data: png}));
      expect((await refused('/edits', formOf(seventeen, {prompt: 'x'}))).problems).toEqual([
        'image: at most 16 images',
      ]);
      const sixteen = await send('/edits', formOf(seventeen.slice(1), {prompt: 'sixteen'}));
      expect(sixteen.status).toBe(200);
      expect(sentFiles()).toHaveLength(16);
    });

    test('judged by bytes: a PNG named .jpg passes; a text file named .png fails', async () => {
      const png = await solidImage('png', 32, 32);
      const passed = await send(
        '/edits',
        formOf([{data: png, name: 'really.jpg', type: 'image/jpeg'}], {prompt: 'x'}),
      );
      expect(passed.status).toBe(200);
      expect(sentFiles()[0]).toMatchObject({contentType: 'image/png', filename: 'image-0.png'});

      const text = Buffer.from('this is not an image at all');
      expect(
        await refused(
          '/edits',
          formOf([{data: png}, {data: text, name: 'notes.png', type: 'image/png'}], {prompt: 'x'}),
        ),
      ).toEqual({
        status: 400,
        code: 'VALIDATION_ERROR',
        problems: ['image[1]: must be a PNG, WebP or JPEG image (judged by its bytes)'],
      });
      expect(
        (await refused('/edits', {prompt: 'x', images: [{b64_json: text.toString('base64')}]})).problems,
      ).toEqual(['images[0]: must be a PNG, WebP or JPEG image (judged by its bytes)']);
    });

    test('a mask is a PNG with alpha, the size of the first image, at most 4 MB', async () => {
      const image = await solidImage('png', 64, 64);
      const mask = await solidImage('png', 64, 64, {alpha: true});
      const masked = await send(
        '/edits',
        formOf([{data: image}, {field: 'mask', data: mask}], {prompt: 'x'}),
      );
      expect(masked.status).toBe(200);
      expect(
        sentFiles()
          .map(file => file.field)
          .sort(),
      ).toEqual(['image[]', 'mask']);

      const cases: [Buffer, string][] = [
        [await solidImage('png', 64, 64), 'mask: must be a PNG with an alpha channel'],
        [await solidImage('webp', 64, 64, {alpha: true}), 'mask: must be a PNG with an alpha channel'],
        [
          await solidImage('png', 32, 64, {alpha: true}),
          'mask: is 32x64; it must be the size of the first image, 64x64',
        ],
      ];
      for (const [bad, problem] of cases) {
        expect(
          (await refused('/edits', formOf([{data: image}, {field: 'mask', data: bad}], {prompt: 'x'})))
            .problems,
        ).toEqual([problem]);
      }
      const big = Buffer.concat([mask, Buffer.alloc(4 * 1024 * 1024)]);
      expect(
        (await refused('/edits', formOf([{data: image}, {field: 'mask', data: big}], {prompt: 'x'})))
          .problems,
      ).toEqual([`mask: is ${big.length} bytes; it must be under ${4 * 1024 * 1024}`]);
    });

    test('markup only on models that take it, and never with a mask', async () => {
      const image = await solidImage('png', 64, 64);
      const markup = await solidImage('png', 64, 64, {alpha: true});
      const taken = await send(
        '/edits',
        formOf([{data: image}, {field: 'markup', data: markup}], {prompt: 'x', model: 'gpt-image-2.5-flare'}),
      );
      expect(taken.status).toBe(200);
      expect(taken.body.source_images.map((source: {role: string}) => source.role)).toEqual([
        'image',
        'markup',
      ]);
      expect(
        sentFiles()
          .map(file => file.field)
          .sort(),
      ).toEqual(['image[]', 'markup']);

      expect(
        (
          await refused(
            '/edits',
            formOf([{data: image}, {field: 'markup', data: markup}], {prompt: 'x', model: 'gpt-image-2'}),
          )
        ).problems,
      ).toEqual(['markup: gpt-image-2 does not take markup']);
      expect(
        (
          await refused(
            '/edits',
            formOf([{data: image}, {field: 'markup', data: markup}, {field: 'mask', data: markup}], {
              prompt: 'x',
              model: 'gpt-image-2.5-sunburst',
            }),
          )
        ).problems,
      ).toEqual(['markup: cannot be combined with mask; send one of them']);
    });

    test('input_fidelity: none on gpt-image-2', async () => {
      const form = formOf([{data: await solidImage('png')}], {
        prompt: 'x',
        model: 'gpt-image-2',
        input_fidelity: 'low',
      });
      expect((await refused('/edits', form)).problems).toEqual([
        'input_fidelity: gpt-image-2 does not take input_fidelity',
      ]);
    });

    test(`a body over MAX_UPLOAD_BYTES is 413, multipart (declared or chunked) or JSON`, async () => {
      const big = await noiseImage('png', MAX_UPLOAD_BYTES + 1024);
      const declared = await send('/edits', formOf([{data: big.data}], {prompt: 'x'}));
      expect([declared.status, declared.body.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
      expect(declared.body.error).toMatch(/^The request body is \d+ bytes; the limit is 6291456$/);

      // Chunked: no Content-Length to judge by; the read stops at the limit.
      const form = formOf([{data: big.data}], {prompt: 'x'});
      const encoded = new Response(form);
      const answer = await new Promise<{status: number; connection: string | undefined; body: string}>(
        (resolve, reject) => {
          const req = request(`${ctx.fn.url}/edits`, {
            method: 'POST',
            headers: {
              'content-type': encoded.headers.get('content-type')!,
              'transfer-encoding': 'chunked',
              ...as(ALICE),
            },
          });
          req.on('response', res => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', chunk => (body += chunk));
            res.on('end', () => resolve({status: res.statusCode!, connection: res.headers.connection, body}));
          });
          // The server answers before all of it is sent, and discards the rest.
          req.on('error', reject);
          void encoded.arrayBuffer().then(bytes => {
            const data = Buffer.from(bytes);
            let offset = 0;
            const pump = () => {
              while (offset < data.length && !req.destroyed) {
                const chunk = data.subarray(offset, offset + 64 * 1024);
                offset += chunk.length;
                if (!req.write(chunk)) return req.once('drain', pump);
              }
              if (!req.destroyed) req.end();
            };
            pump();
          });
        },
      );
      expect(answer.status).toBe(413);
      // What was left of the body was read and thrown away: the connection could carry another request.
      expect(answer.connection).toBe('keep-alive');
      expect(JSON.parse(answer.body).code).toBe('PAYLOAD_TOO_LARGE');

      const json = await refused('/edits', {prompt: 'x', images: [{b64_json: big.data.toString('base64')}]});
      expect([json.status, json.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
      expect(editCalls()).toHaveLength(0);
    });

    test('JSON edit bodies may be larger than MAX_BODY_BYTES, up to MAX_UPLOAD_BYTES', async () => {
      const photo = await noiseImage('jpeg', 2 * 1024 * 1024);
      const edited = await send('/edits', {prompt: 'x', images: [{b64_json: photo.data.toString('base64')}]});
      expect(edited.status).toBe(200);
      expect(sentFiles()[0]!.bytes).toBe(photo.data.length);
    });
  });

  describe('references', () => {
    test("another caller's image_id is 404, as a missing one is", async () => {
      const made = await send('/generate', {prompt: 'mine'});
      const image = made.body.images[0];
      const other = await refused('/edits', {prompt: 'x', images: [{image_id: image.id}]}, BOB);
      expect(other).toEqual({status: 404, code: 'IMAGE_NOT_FOUND', problems: ['images[0]: no such image']});
      const missing = await refused('/edits', {
        prompt: 'x',
        images: [{image_id: '6f1c7d1e-2a3b-4c5d-8e9f-0a1b2c3d4e5f'}],
      });
      expect([missing.status, missing.code]).toEqual([404, 'IMAGE_NOT_FOUND']);
    });

    test('gs:// sources need Cloud Storage mode', async () => {
      expect(await refused('/edits', {prompt: 'x', images: [{gcs_uri: 'gs://some-bucket/a.png'}]})).toEqual({
        status: 400,
        code: 'VALIDATION_ERROR',
        problems: ['images[0]: gs:// sources need Cloud Storage mode (GCS_BUCKET)'],
      });
    });
  });

  describe('faults half-way', () => {
    test('an upstream fault leaves nothing behind and the job is recorded failed', async () => {
      const before = filesUnder(join(dataDir(), 'objects'));
      ctx.openai.injectFault({kind: 'server_error', status: 500});
      const failed = await send(
        '/edits',
        formOf([{data: await solidImage('png')}], {prompt: 'x', 'metadata[case]': 'upstream-fault'}),
      );
      expect([failed.status, failed.body.code]).toEqual([502, 'UPSTREAM_ERROR']);
      expect(editCalls()).toHaveLength(1);
      expect(filesUnder(join(dataDir(), 'objects'))).toEqual(before);
      const jobs = await getJson(`${ctx.fn.url}/jobs?metadata.case=upstream-fault`, {headers: as(ALICE)});
      expect(jobs.body.jobs).toEqual([
        expect.objectContaining({
          status: 'failed',
          source: 'edit',
          images: [],
          error: {code: 'UPSTREAM_ERROR', message: failed.body.error},
        }),
      ]);
    });

    test('with count > 1, a failed call removes what the other stored', async () => {
      const before = filesUnder(join(dataDir(), 'objects'));
      ctx.openai.injectFault({kind: 'content_policy'});
      const url = `${ctx.fn.url}/edits`;
      const failed = await postStream(
        url,
        {
          prompt: 'two streams',
          images: [{b64_json: (await solidImage('png')).toString('base64')}],
          count: 2,
          stream: true,
          metadata: {case: 'half-way'},
        },
        {headers: as(ALICE)},
      );
      for (const {id, event, data} of failed.events) validator.checkEvent('POST', url, {id, event, data});
      // The stream began with the job, so the failure is its last event.
      expect(failed.status).toBe(200);
      expect(names(failed)[0]).toBe('job.created');
      expect(failed.events.at(-1)).toMatchObject({event: 'error', data: {code: 'CONTENT_POLICY_VIOLATION'}});
      expect(filesUnder(join(dataDir(), 'objects'))).toEqual(before);
      const jobs = await getJson(`${ctx.fn.url}/jobs?metadata.case=half-way`, {headers: as(ALICE)});
      expect(jobs.body.jobs.map((job: {status: string}) => job.status)).toEqual(['failed']);
    });
  });

  describe('idempotency', () => {
    test('the same key and inputs replay the job; the same key with other inputs is 422', async () => {
      const photo = await solidImage('png', 48, 48);
      const form = () => formOf([{data: photo}], {prompt: 'replay me'});
      const first = await send('/edits', form(), ALICE, {'Idempotency-Key': 'edit-key-1'});
      expect(first.status).toBe(200);
      const again = await send('/edits', form(), ALICE, {'Idempotency-Key': 'edit-key-1'});
      expect([again.status, again.body.job_id]).toEqual([200, first.body.job_id]);
      expect(again.headers.get('idempotent-replayed')).toBe('true');
      // The same bytes as base64 JSON are the same inputs.
      const asJson = await send(
        '/edits',
        {prompt: 'replay me', images: [{b64_json: photo.toString('base64')}]},
        ALICE,
        {'Idempotency-Key': 'edit-key-1'},
      );
      expect(asJson.body.job_id).toBe(first.body.job_id);
      expect(editCalls()).toHaveLength(1);

      const other = await send(
        '/edits',
        formOf([{data: await solidImage('png', 48, 40)}], {prompt: 'replay me'}),
        ALICE,
        {
          'Idempotency-Key': 'edit-key-1',
        },
      );
      expect([other.status, other.body.code]).toEqual([422, 'IDEMPOTENCY_KEY_REUSED']);
      expect(editCalls()).toHaveLength(1);
    });
  });

  describe('streaming', () => {
    test('stream: true answers with the job as it is made, one upstream stream per image', async () => {
      const url = `${ctx.fn.url}/edits`;
      const edited = await postStream(
        url,
        formOf([{data: await solidImage('png')}], {prompt: 'x', stream: 'true', partial_images: '1', n: '2'}),
        {headers: as(ALICE)},
      );
      for (const {id, event, data} of edited.events) validator.checkEvent('POST', url, {id, event, data});
      expect(edited.status).toBe(200);
      expect(edited.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const events = names(edited);
      expect([events[0], events.at(-1)]).toEqual(['job.created', 'job.completed']);
      expect(events.filter(name => name === 'image.partial')).toHaveLength(2);
      expect(events.filter(name => name === 'image.completed')).toHaveLength(2);
      const job = edited.events.at(-1)!.data;
      expect([job.source, job.images.length]).toEqual(['edit', 2]);
      // The stored job is the one the stream ended with (its signed links aside, which are made per answer).
      const stored = (await getJson(`${ctx.fn.url}/jobs/${job.job_id}`, {headers: as(ALICE)})).body;
      const unsigned = (view: any) => ({
        ...view,
        image_url: null,
        images: view.images.map((image: any) => ({...image, url: null, url_expires_at: null})),
      });
      expect(unsigned(stored)).toEqual(unsigned(job));
      expect(editCalls().map(call => (call.body as RecordedMultipartBody).fields)).toEqual([
        expect.objectContaining({stream: 'true', partial_images: '1', n: '1'}),
        expect.objectContaining({stream: 'true', partial_images: '1', n: '1'}),
      ]);
    });
  });

  test('GET /jobs?source=edit lists only edits', async () => {
    const generated = await send('/generate', {prompt: 'plain', metadata: {case: 'source-filter'}});
    const edited = await send(
      '/edits',
      formOf([{data: await solidImage('png')}], {prompt: 'edit', 'metadata[case]': 'source-filter'}),
    );
    const url = `${ctx.fn.url}/jobs?source=edit&metadata.case=source-filter`;
    const listed = await getJson(url, {headers: as(ALICE)});
    validator.check('GET', url, listed.status, listed.body);
    expect(listed.body.jobs.map((job: {job_id: string}) => job.job_id)).toEqual([edited.body.job_id]);
    const generatedOnly = await getJson(`${ctx.fn.url}/jobs?source=generate&metadata.case=source-filter`, {
      headers: as(ALICE),
    });
    expect(generatedOnly.body.jobs.map((job: {job_id: string}) => job.job_id)).toEqual([
      generated.body.job_id,
    ]);
  });

  test('the OpenAPI document shows both body kinds', async () => {
    const {body} = await getJson(`${ctx.fn.url}/openapi.json`);
    for (const path of ['/edits', '/images/edits']) {
      const content = body.paths[path].post.requestBody.content;
      expect(Object.keys(content).sort()).toEqual(['application/json', 'multipart/form-data']);
      const upload = content['multipart/form-data'].schema;
      const schema = upload.$ref ? body.components.schemas[upload.$ref.split('/').at(-1)] : upload;
      expect(schema.properties.image).toMatchObject({
        type: 'array',
        items: {type: 'string', format: 'binary'},
      });
      expect(schema.properties.mask).toMatchObject({type: 'string', format: 'binary'});
      expect(schema.properties).toHaveProperty('input_fidelity');
    }
  });
});

describe('POST /edits before the 2026-12-01 shutdowns', () => {
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let fn: RunningFunction;
  const day = '2026-11-20';
  beforeAll(async () => {
    openai = await startFakeOpenAI({today: day});
    fn = await startFunction(
      {
        OPENAI_API_KEY: 'sk-test-key',
        OPENAI_BASE_URL: openai.url,
        DATA_DIR: dataDir(),
        UPSTREAM_MAX_RETRIES: '0',
      },
      {now: () => new Date(`${day}T12:00:00Z`)},
    );
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
  });
  beforeEach(() => openai.reset());

  const edit = async (fields: Record<string, string>) => {
    const response = await fetch(`${fn.url}/edits`, {
      method: 'POST',
      body: formOf([{data: await solidImage('png')}], {prompt: 'x', ...fields}),
    });
    return {status: response.status, body: (await response.json()) as any};
  };
  const sent = () =>
    (openai.requests.find(r => r.path === '/v1/images/edits')?.body as RecordedMultipartBody | undefined)
      ?.fields;

  test('input_fidelity high or low on gpt-image-1.5, only low on gpt-image-1-mini', async () => {
    for (const value of ['high', 'low']) {
      openai.reset();
      const answer = await edit({model: 'gpt-image-1.5', input_fidelity: value});
      expect(answer.status).toBe(200);
      expect(answer.body.parameters).toMatchObject({model: 'gpt-image-1.5', input_fidelity: value});
      expect(sent()).toMatchObject({model: 'gpt-image-1.5', input_fidelity: value});
    }
    openai.reset();
    expect((await edit({model: 'gpt-image-1-mini', input_fidelity: 'low'})).status).toBe(200);
    expect(sent()).toMatchObject({model: 'gpt-image-1-mini', input_fidelity: 'low'});
    openai.reset();
    const high = await edit({model: 'gpt-image-1-mini', input_fidelity: 'high'});
    expect([high.status, high.body.details.fields]).toEqual([
      400,
      [{field: 'input_fidelity', message: "'high' is invalid for gpt-image-1-mini; allowed: low"}],
    ]);
    expect(sent()).toBeUndefined();
  });

  test('a model that does not edit is refused', async () => {
    const answer = await edit({model: 'dall-e-2'});
    // dall-e-2 is past its own shutdown here: refused for what it is, not run on its replacement.
    expect([answer.status, answer.body.details.fields]).toEqual([
      400,
      [{field: 'model', message: 'dall-e-2 does not edit images'}],
    ]);
    expect(sent()).toBeUndefined();
  });
});

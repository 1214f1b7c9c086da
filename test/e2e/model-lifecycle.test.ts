import sharp from 'sharp';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';
import {describeWithFirestore, useGcpStores} from '../support/firestore';
import {getJson, postJson, startFunction, type RunningFunction} from '../support/function-server';
import {useTempDir} from '../support/temp-dir';

/** A week before the 2026-12-01 shutdowns, and the day after them. */
const BEFORE = '2026-11-23';
const AFTER = '2026-12-02';

/** What existing callers send: built for models that are gone. */
const LEGACY = {input: {body: {prompt_image: 'Image of a sunset over mountains'}}};
const DALL_E_3 = {
  prompt: 'a lighthouse',
  model: 'dall-e-3',
  size: '1024x1792',
  quality: 'hd',
  style: 'natural',
  count: 2,
};
const DALL_E_2 = {prompt: 'a red panda', model: 'dall-e-2', size: '256x256', count: 4};

async function dimensionsOf(url: string): Promise<[number, number]> {
  const meta = await sharp(Buffer.from(await (await fetch(url)).arrayBuffer())).metadata();
  return [meta.width!, meta.height!];
}

/**
 * Existing callers keep working through OpenAI's retirements: the same
 * requests, on the day before and the day after the shutdowns, with the fake
 * OpenAI following the same calendar, in one storage mode.
 */
function lifecycleSuite(mode: string, env: () => Record<string, string>) {
  describe(`existing callers across the 2026-12-01 shutdowns: ${mode}`, () => {
    let openai: FakeOpenAI;
    let today = BEFORE;
    let fn: RunningFunction;

    beforeAll(async () => {
      openai = await startFakeOpenAI();
      fn = await startFunction(
        {OPENAI_API_KEY: 'sk-test-key', OPENAI_BASE_URL: openai.url, UPSTREAM_MAX_RETRIES: '0', ...env()},
        {now: () => new Date(`${today}T12:00:00Z`)},
      );
    });
    afterAll(async () => {
      await fn.close();
      await openai.close();
    });

    const on = (day: string) => {
      today = day;
      openai.reset();
      openai.setToday(day);
    };

    test.each([BEFORE, AFTER])('the legacy payload works on %s, on an active model', async day => {
      on(day);
      const {status, body, headers} = await postJson(`${fn.url}/`, LEGACY);
      expect(status).toBe(200);
      expect(body.parameters).toMatchObject({
        requested_model: 'gpt-image-2.6-sunburst',
        model: 'gpt-image-2.6-sunburst',
      });
      expect(body.warnings).toEqual([]);
      expect(headers.get('deprecation')).toBeNull();
      expect(await dimensionsOf(body.image_url)).toEqual([1024, 1024]);
    });

    test.each([BEFORE, AFTER])(
      "dall-e-3's tall hd request works on %s, on gpt-image-2.5-sunburst",
      async day => {
        on(day);
        const {status, body, headers} = await postJson(`${fn.url}/generate`, DALL_E_3);
        expect(status).toBe(200);
        expect(body.images).toHaveLength(2);
        expect(body.parameters).toMatchObject({
          requested_model: 'dall-e-3',
          model: 'gpt-image-2.5-sunburst',
          size: '1024x1792',
          quality: 'high',
          style: null,
        });
        expect(body.warnings.map((w: {code: string}) => w.code)).toEqual([
          'MODEL_REPLACED',
          'PARAMETER_TRANSLATED',
          'PARAMETER_DROPPED',
        ]);
        expect(body.warnings[0]).toMatchObject({
          requested_model: 'dall-e-3',
          shutdown_date: '2026-05-12',
          model: 'gpt-image-2.5-sunburst',
        });
        expect(headers.get('deprecation')).toBe(`@${Date.parse('2026-05-12T00:00:00Z') / 1000}`);
        expect(headers.get('link')).toBe(
          '<https://developers.openai.com/api/docs/models/gpt-image-2.5-sunburst>; rel="successor-version"',
        );
        // One upstream call for both images, with what the replacement takes.
        expect(openai.requests).toHaveLength(1);
        expect(openai.requests[0]!.body).toEqual({
          model: 'gpt-image-2.5-sunburst',
          prompt: 'a lighthouse',
          n: 2,
          size: '1024x1792',
          quality: 'high',
        });
        for (const image of body.images) expect(await dimensionsOf(image.url)).toEqual([1024, 1792]);
      },
    );

    test.each([BEFORE, AFTER])(
      "dall-e-2's 256x256 request works on %s: made larger, stored at 256x256",
      async day => {
        on(day);
        const {status, body} = await postJson(`${fn.url}/generate`, DALL_E_2);
        expect(status).toBe(200);
        expect(body.images).toHaveLength(4);
        expect(body.parameters).toMatchObject({
          requested_model: 'dall-e-2',
          model: 'gpt-image-2.5-flare',
          size: '1024x1024',
        });
        expect(openai.requests[0]!.body).toMatchObject({
          model: 'gpt-image-2.5-flare',
          n: 4,
          size: '1024x1024',
          quality: 'low',
        });
        for (const image of body.images) {
          expect([image.width, image.height, image.size, image.content_type]).toEqual([
            256,
            256,
            '256x256',
            'image/png',
          ]);
          expect(await dimensionsOf(image.url)).toEqual([256, 256]);
        }
        expect(body.warnings.map((w: {code: string}) => w.code)).toEqual(['MODEL_REPLACED', 'IMAGE_RESIZED']);
      },
    );

    test('gpt-image-1.5 runs as asked before its shutdown, with a Sunset header; on its replacement after', async () => {
      on(BEFORE);
      const before = await postJson(`${fn.url}/generate`, {prompt: 'x', model: 'gpt-image-1.5'});
      expect(before.status).toBe(200);
      expect(before.body.parameters.model).toBe('gpt-image-1.5');
      expect(before.body.warnings.map((w: {code: string}) => w.code)).toEqual(['MODEL_DEPRECATED']);
      expect(before.headers.get('sunset')).toBe('Tue, 01 Dec 2026 00:00:00 GMT');
      expect(before.headers.get('deprecation')).toBeNull();
      on(AFTER);
      const after = await postJson(`${fn.url}/generate`, {prompt: 'x', model: 'gpt-image-1.5'});
      expect(after.status).toBe(200);
      expect(after.body.parameters.model).toBe('gpt-image-2.6-sunburst');
      expect(openai.requests.map(r => (r.body as {model: string}).model)).toEqual(['gpt-image-2.6-sunburst']);
    });

    test('a model OpenAI shuts down early is retried once on its replacement', async () => {
      on(BEFORE);
      openai.retireModel('gpt-image-1-mini', '2026-11-01');
      const {status, body} = await postJson(`${fn.url}/generate`, {
        prompt: 'x',
        model: 'gpt-image-1-mini',
        count: 2,
      });
      expect(status).toBe(200);
      expect(openai.requests.map(r => [r.status, (r.body as {model: string}).model])).toEqual([
        [404, 'gpt-image-1-mini'],
        [200, 'gpt-image-2.6-flare'],
      ]);
      expect(body.parameters).toMatchObject({
        requested_model: 'gpt-image-1-mini',
        model: 'gpt-image-2.6-flare',
      });
      expect(body.warnings.map((w: {code: string}) => w.code)).toContain('MODEL_REPLACED');
    });

    test.each([BEFORE, AFTER])('GET /models on %s', async day => {
      on(day);
      const {status, body} = await getJson(`${fn.url}/models`);
      expect(status).toBe(200);
      expect(body.date).toBe(day);
      const status15 = body.models.find((m: {id: string}) => m.id === 'gpt-image-1.5');
      expect(status15).toMatchObject({
        status: day === BEFORE ? 'deprecated' : 'retired',
        shutdown_date: '2026-12-01',
        replacement: 'gpt-image-2.6-sunburst',
      });
      const statuses = Object.fromEntries(
        body.models.map((m: {id: string; status: string}) => [m.id, m.status]),
      );
      expect(statuses['dall-e-3']).toBe('retired');
      expect(statuses['gpt-image-2.6-flare']).toBe('active');
    });
  });
}

describe('model lifecycle, local store', () => {
  const dataDir = useTempDir();
  lifecycleSuite('local store', () => ({DATA_DIR: dataDir()}));
});

describeWithFirestore('model lifecycle, Cloud Storage + Firestore', () => {
  const stores = useGcpStores('lifecycle', ['lifecycle-e2e']);
  lifecycleSuite('Cloud Storage + Firestore', stores.env);
});

describe('what OpenAI refuses is a clear 4xx, never a 502', () => {
  const dataDir = useTempDir();
  let openai: FakeOpenAI;
  let fn: RunningFunction;
  beforeAll(async () => {
    openai = await startFakeOpenAI({previews: {gif: false, svg: false}});
    fn = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      UPSTREAM_MAX_RETRIES: '0',
      DATA_DIR: dataDir(),
      EXTRA_MODELS: 'gpt-image-3:gpt-image-2.6-flare',
    });
  });
  afterAll(async () => {
    await fn.close();
    await openai.close();
  });
  beforeEach(() => openai.reset());

  test.each([
    ['gif', 'GIF output'],
    ['svg', 'SVG output'],
  ])('a project without the %s preview gets 403 FEATURE_NOT_AVAILABLE naming it', async (format, feature) => {
    const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'x', output_format: format});
    expect(status).toBe(403);
    expect(body.code).toBe('FEATURE_NOT_AVAILABLE');
    expect(body.error).toContain(feature);
    expect(body.details).toMatchObject({feature, field: 'output_format', upstream_status: 403});
  });

  test('a model OpenAI does not know, with no replacement, is 400 MODEL_UNAVAILABLE with its message', async () => {
    const {status, body} = await postJson(`${fn.url}/generate`, {prompt: 'x', model: 'gpt-image-3'});
    expect([status, body.code]).toEqual([400, 'MODEL_UNAVAILABLE']);
    expect(body.error).toMatch(/^OpenAI does not serve gpt-image-3: /);
    expect(openai.requests).toHaveLength(1);
  });

  test('RETIRED_MODELS=reject refuses a retired model before any upstream call', async () => {
    const strict = await startFunction({
      OPENAI_API_KEY: 'sk-test-key',
      OPENAI_BASE_URL: openai.url,
      DATA_DIR: dataDir(),
      RETIRED_MODELS: 'reject',
    });
    try {
      const {status, body} = await postJson(`${strict.url}/generate`, {prompt: 'x', model: 'dall-e-3'});
      expect([status, body.code]).toEqual([400, 'MODEL_RETIRED']);
      expect(body.error).toBe('dall-e-3 was shut down on 2026-05-12; use gpt-image-2.5-sunburst');
      expect(body.details).toMatchObject({replacement: 'gpt-image-2.5-sunburst'});
      expect(openai.requests).toHaveLength(0);
    } finally {
      await strict.close();
    }
  });
});

import fc from 'fast-check';
import {ERROR_CODES} from '../../src/core/errors';
import {MODEL_CATALOGUE} from '../../src/core/models';

const MODEL_IDS = MODEL_CATALOGUE.map(entry => entry.id);
import {useFunctionWithFakeOpenAI} from '../support/function-server';
import {useTempDir} from '../support/temp-dir';

/** Values of every JSON type, to put where a field expects one type. */
const anyJson = fc.oneof(
  fc.string({maxLength: 40}),
  fc.integer({min: -5, max: 20}),
  fc.double({noNaN: true, noDefaultInfinity: true}),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.string({maxLength: 5}), {maxLength: 3}),
  fc.dictionary(fc.string({maxLength: 5}), fc.string({maxLength: 5}), {maxKeys: 3}),
);

/** A field's plausible values mixed with wrong ones, so both sides of every rule are hit. */
const field = <T>(valid: fc.Arbitrary<T>) =>
  fc.option(fc.oneof({weight: 3, arbitrary: valid}, {weight: 1, arbitrary: anyJson}), {nil: undefined});

const richBody = fc.record(
  {
    prompt: field(
      fc.oneof(fc.string({minLength: 1, maxLength: 60}), fc.string({maxLength: 60, unit: 'binary'})),
    ),
    count: field(fc.integer({min: 0, max: 11})),
    n: field(fc.integer({min: 1, max: 3})),
    model: field(fc.constantFrom(...MODEL_IDS)),
    size: field(
      fc.constantFrom(
        '256x256',
        '512x512',
        '1024x1024',
        '1536x1024',
        '1024x1792',
        'auto',
        '1536x864',
        '999x999',
      ),
    ),
    quality: field(fc.constantFrom('low', 'medium', 'high', 'xhigh', 'max', 'auto', 'standard', 'hd')),
    style: field(fc.constantFrom('vivid', 'natural')),
    background: field(fc.constantFrom('transparent', 'opaque', 'auto')),
    output_format: field(fc.constantFrom('png', 'jpeg', 'webp', 'gif', 'svg')),
    output_compression: field(fc.integer({min: -1, max: 101})),
    moderation: field(fc.constantFrom('low', 'auto')),
    complexity: field(fc.constantFrom('low', 'medium', 'high')),
    frame_count: field(fc.integer({min: 1, max: 17})),
    user: field(fc.string({maxLength: 10})),
    safety_identifier: field(fc.string({maxLength: 10})),
    metadata: field(fc.dictionary(fc.string({maxLength: 8}), fc.string({maxLength: 8}), {maxKeys: 4})),
    allow_partial: field(fc.boolean()),
    unexpected: fc.option(anyJson, {nil: undefined}),
  },
  {requiredKeys: []},
);

/** Requests valid by construction, so the success path runs under the same property. */
const validBody = fc.constantFrom(...MODEL_CATALOGUE).chain(({id: model, rules}) => {
  return fc.record(
    {
      prompt: fc
        .string({minLength: 1, maxLength: 60})
        .filter(p => p.trim().length > 0 && ![...p].some(c => c < ' ' || c === '\u007f')),
      count: fc.integer({min: 1, max: 3}),
      model: fc.constant(model),
      size: fc.constantFrom(
        ...rules.sizes.filter((size: string) => size === 'auto' || Number(size.split('x')[0]) <= 1536),
      ),
      quality: fc.constantFrom(...rules.qualities),
      metadata: fc.dictionary(fc.stringMatching(/^[a-z]{1,8}$/), fc.string({maxLength: 8}), {maxKeys: 3}),
    },
    {requiredKeys: ['prompt', 'model']},
  );
});

const body = fc.oneof(
  {weight: 3, arbitrary: validBody.map(b => JSON.stringify(b))},
  {weight: 6, arbitrary: richBody.map(b => JSON.stringify(b))},
  {
    weight: 2,
    arbitrary: richBody.map(b =>
      JSON.stringify({input: {body: {...b, prompt_image: b.prompt, prompt: undefined}}}),
    ),
  },
  {weight: 1, arbitrary: fc.jsonValue({maxDepth: 3}).map(v => JSON.stringify(v))},
  {weight: 1, arbitrary: fc.string({maxLength: 80})},
);

const contentType = fc.oneof(
  {weight: 8, arbitrary: fc.constant('application/json')},
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/xml',
      'application/json; charset=latin1',
    ),
  },
);

describe('any body: never a 5xx, always a JSON error with a stable code', () => {
  const dataDir = useTempDir();
  const codes = new Set<string>(ERROR_CODES);
  const ctx = useFunctionWithFakeOpenAI(() => ({
    DATA_DIR: dataDir(),
    UPSTREAM_MAX_RETRIES: '0',
    LOG_LEVEL: 'error',
  }));

  test('1500 generated requests', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(body, contentType, async (payload, type) => {
        const response = await fetch(`${ctx.fn.url}/generate`, {
          method: 'POST',
          headers: {'content-type': type},
          body: payload,
        });
        seen.set(response.status, (seen.get(response.status) ?? 0) + 1);
        expect(response.status).toBeLessThan(500);
        expect(response.headers.get('content-type')).toMatch(/^application\/json/);
        const json = (await response.json()) as {
          code?: string;
          status?: string;
          job_id?: string;
          images?: unknown[];
        };
        const accepted = response.status === 200;
        expect(json.status).toBe(accepted ? 'completed' : 'failed');
        expect(accepted ? (json.images?.length ?? 0) > 0 : codes.has(json.code ?? '')).toBe(true);
      }),
      {numRuns: 1500, seed: 20261123},
    );
    // Both sides were exercised: some requests were accepted, many refused.
    expect(seen.get(200)).toBeGreaterThan(20);
    expect(seen.get(400)).toBeGreaterThan(200);
  }, 180_000);
});

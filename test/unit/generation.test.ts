import {CatalogueError, ModelCatalogue} from '../../src/core/catalogue';
import {AppError, type FieldProblem} from '../../src/core/errors';
import {
  parseEditBody,
  parseGenerateBody,
  planGeneration,
  type GenerateCommand,
  type PlanContext,
} from '../../src/core/generation';
import {
  CUSTOM_SIZE_LIMITS,
  MODEL_CATALOGUE,
  customSizeProblem,
  splitIntoCalls,
  statusOn,
} from '../../src/core/models';

const BEFORE = '2026-11-23';
const AFTER = '2026-12-02';

function context(overrides: Partial<PlanContext> = {}): PlanContext {
  return {
    catalogue: new ModelCatalogue(),
    defaultModel: 'gpt-image-2.6-sunburst',
    retiredModels: 'replace',
    day: AFTER,
    ...overrides,
  };
}

/** Both steps a body goes through: the payload schema, then the model's rules. */
function plan(body: unknown, overrides: Partial<PlanContext> = {}): GenerateCommand {
  return planGeneration(parseGenerateBody(body), context(overrides));
}

function problems(body: unknown, overrides: Partial<PlanContext> = {}): string[] {
  try {
    plan(body, overrides);
  } catch (error) {
    if (!(error instanceof AppError) || error.code !== 'VALIDATION_ERROR') throw error;
    return (error.details as {fields: FieldProblem[]}).fields.map(p => `${p.field}: ${p.message}`);
  }
  throw new Error('expected a validation failure');
}

describe('the payloads', () => {
  test('legacy payload becomes a one-image job on the default model', () => {
    const command = plan({input: {body: {prompt_image: '  a sunset  '}}});
    expect(command).toEqual({
      source: 'legacy',
      prompt: 'a sunset',
      count: 1,
      requestedModel: 'gpt-image-2.6-sunburst',
      requested: {},
      plan: {
        model: 'gpt-image-2.6-sunburst',
        parameters: {size: '1024x1024'},
        resizeTo: null,
        imagesPerCall: 10,
        partialImages: null,
        warnings: [],
      },
      fallback: null,
      edit: null,
      metadata: {},
      allowPartial: false,
    });
  });

  test('rich payload keeps every parameter; n is an alias of count', () => {
    const command = plan({
      prompt: 'a fox',
      n: 3,
      model: 'gpt-image-2.5-flare',
      size: '1536x864',
      quality: 'xhigh',
      background: 'transparent',
      output_format: 'webp',
      output_compression: 80,
      moderation: 'low',
      complexity: 'high',
      safety_identifier: 'u-1',
      metadata: {order: '42'},
    });
    expect(command.count).toBe(3);
    expect(command.plan).toEqual({
      model: 'gpt-image-2.5-flare',
      parameters: {
        size: '1536x864',
        quality: 'xhigh',
        background: 'transparent',
        output_format: 'webp',
        output_compression: 80,
        moderation: 'low',
        complexity: 'high',
        safety_identifier: 'u-1',
      },
      resizeTo: null,
      imagesPerCall: 10,
      partialImages: null,
      warnings: [],
    });
    expect(command.metadata).toEqual({order: '42'});
  });

  test('`user` is the deprecated name of safety_identifier, which wins when both are sent', () => {
    const aliased = plan({prompt: 'x', user: 'u-1'});
    expect(aliased.plan.parameters.safety_identifier).toBe('u-1');
    expect(aliased.plan.warnings).toEqual([
      expect.objectContaining({code: 'PARAMETER_DEPRECATED', field: 'user', model: 'gpt-image-2.6-sunburst'}),
    ]);
    expect(plan({prompt: 'x', user: 'u-1', safety_identifier: 's-1'}).plan.parameters.safety_identifier).toBe(
      's-1',
    );
  });

  test('schema errors name the field and the allowed values', () => {
    expect(problems({prompt: '', count: 11, quality: 'ultra', extra: 1})).toEqual(
      expect.arrayContaining([
        'prompt: must not be empty',
        'quality: must be one of: low, medium, high, xhigh, max, auto, standard, hd',
        expect.stringMatching(/^count: .*10/),
        'extra: unknown field',
      ]),
    );
  });

  test('legacy errors point into the legacy shape', () => {
    expect(problems({input: {body: {}}})).toEqual([expect.stringMatching(/^input\.body\.prompt_image: /)]);
    expect(problems({input: {body: {prompt_image: 'x', model: 'dall-e-3', size: '1x1'}}})).toEqual([
      expect.stringMatching(/^input\.body\.size: '1x1' is invalid for dall-e-3/),
    ]);
  });

  test('a field set to null is not given, as the SDK means it', () => {
    const withNulls = plan({prompt: 'x', size: null, quality: null, model: null, n: null, stream: null});
    expect(withNulls).toEqual(plan({prompt: 'x'}));
    expect(problems({prompt: null})).toEqual(problems({}));
    expect(parseEditBody({prompt: 'x', images: [{b64_json: 'AAAA'}], mask: null}).edit?.mask).toBeUndefined();
  });

  test('an SVG its fallback model cannot make at its size is made at the nearest one, never resized', () => {
    const catalogue = new ModelCatalogue({aliases: {'gpt-image-2': 'gpt-image-2.6-sunburst'}});
    const body = {prompt: 'x', model: 'gpt-image-2', size: '1536x864'};
    const svg = plan({...body, output_format: 'svg'}, {catalogue}).fallback!;
    expect([svg.model, svg.parameters.size, svg.resizeTo]).toEqual([
      'gpt-image-2.6-sunburst',
      '1536x1024',
      null,
    ]);
    expect(svg.warnings.find(warning => warning.field === 'size')?.code).toBe('PARAMETER_TRANSLATED');
    const png = plan(body, {catalogue}).fallback!;
    expect(png.resizeTo).toEqual({width: 1536, height: 864});
  });

  test("svg.model: required to generate, optional to edit, as the SDK's types have it", () => {
    const svg = {output_format: 'svg', svg: {reasoning: {effort: 'low'}}};
    expect(problems({prompt: 'x', model: 'gpt-image-2', ...svg})).toEqual([
      'svg.model: Invalid input: expected string, received undefined',
    ]);
    const edit = planGeneration(
      parseEditBody({prompt: 'x', model: 'gpt-image-2', images: [{b64_json: 'AAAA'}], ...svg}),
      context(),
    );
    expect(edit.plan.parameters.svg).toEqual({reasoning: {effort: 'low'}});
  });

  test('a GIF frame delay above what GIF encodes is taken: OpenAI caps it', () => {
    const gif = plan({prompt: 'x', model: 'gpt-image-2', output_format: 'gif', frame_duration_ms: 1_000_000});
    expect(gif.plan.parameters.frame_duration_ms).toBe(1_000_000);
  });

  test.each([null, [], 'text', 42])('a body that is not an object (%j) is refused', body => {
    expect(problems(body)).toEqual(['(body): must be a JSON object']);
  });

  test('control characters are refused; newlines and tabs are fine', () => {
    expect(plan({prompt: 'line one\nline\ttwo'}).prompt).toBe('line one\nline\ttwo');
    expect(problems({prompt: 'bell\u0007'})).toEqual(['prompt: must not contain control characters']);
  });

  test('metadata must be small string labels', () => {
    const tooMany = Object.fromEntries(Array.from({length: 21}, (_, i) => [`k${i}`, 'v']));
    expect(problems({prompt: 'x', metadata: tooMany})).toEqual(['metadata: at most 20 keys']);
    expect(problems({prompt: 'x', metadata: {a: 1}})[0]).toMatch(/^metadata\.a: /);
    expect(problems({prompt: 'x', metadata: {'bad key': 'v'}})[0]).toMatch(/^metadata\.bad key: keys are/);
  });

  test('count and n must agree', () => {
    expect(problems({prompt: 'x', count: 2, n: 3})).toEqual([
      'count: `count` and `n` disagree; send one of them',
    ]);
  });
});

describe('the catalogue rules, one by one', () => {
  test('an unknown model is refused with the models that run today', () => {
    const [message] = problems({prompt: 'x', model: 'gpt-image-9'});
    expect(message).toMatch(/^model: 'gpt-image-9' is not a known model; allowed: gpt-image-2\.6-sunburst, /);
    expect(message).not.toContain('dall-e-3');
  });

  test('GPT image prompts may be 32,000 characters, counted as characters', () => {
    expect(plan({prompt: '字'.repeat(32000)}).prompt).toHaveLength(32000);
    expect(plan({prompt: '😀'.repeat(32000)}).prompt).toHaveLength(64000);
    expect(problems({prompt: 'x'.repeat(32001)})).toEqual([
      'prompt: is 32001 characters; gpt-image-2.6-sunburst accepts at most 32000',
    ]);
  });

  test('retired models keep their own prompt limits', () => {
    expect(problems({prompt: 'x'.repeat(1001), model: 'dall-e-2'})).toEqual([
      'prompt: is 1001 characters; dall-e-2 accepts at most 1000',
    ]);
  });

  test('named sizes: every GPT image model takes the standard ones and auto', () => {
    for (const model of ['gpt-image-2.6-flare', 'gpt-image-2', 'gpt-image-2.5-sunburst']) {
      for (const size of ['1024x1024', '1536x1024', '1024x1536', 'auto']) {
        expect(plan({prompt: 'x', model, size}).plan.parameters.size).toBe(size);
      }
    }
  });

  test('custom sizes: gpt-image-2 and 2.5 take any WIDTHxHEIGHT within limits; 2.6 does not', () => {
    expect(plan({prompt: 'x', model: 'gpt-image-2-2026-04-21', size: '1536x864'}).plan.parameters.size).toBe(
      '1536x864',
    );
    expect(
      plan({prompt: 'x', model: 'gpt-image-2.5-flare-2026-09-08', size: '1792x1024'}).plan.parameters.size,
    ).toBe('1792x1024');
    expect(problems({prompt: 'x', model: 'gpt-image-2.6-flare', size: '1536x864'})).toEqual([
      "size: '1536x864' is invalid for gpt-image-2.6-flare (not supported); allowed: 1024x1024, 1536x1024, 1024x1536, auto",
    ]);
  });

  test.each([
    ['1000x1000', 'width and height must be multiples of 16'],
    ['4096x1024', 'no edge may exceed 3840 pixels'],
    ['3840x2176', 'at most 3840x2160 pixels in total'],
    ['3520x2400', 'at most 3840x2160 pixels in total'],
    ['3200x1056', 'aspect ratio must be between 1:3 and 3:1'],
  ])('custom size %s is refused: %s', (size, reason) => {
    expect(problems({prompt: 'x', model: 'gpt-image-2', size})).toEqual([
      `size: '${size}' is invalid for gpt-image-2 (${reason}); allowed: 1024x1024, 1536x1024, 1024x1536, auto or a custom WIDTHxHEIGHT`,
    ]);
  });

  test("a caller's small custom size is left for OpenAI to judge; a size chosen for a replaced model keeps above the reported minimum", () => {
    const small = plan({prompt: 'x', model: 'gpt-image-2', size: '512x512'}).plan;
    expect([small.parameters.size, small.resizeTo]).toEqual(['512x512', null]);
    const replaced = plan({prompt: 'x', model: 'dall-e-2', size: '256x256'}).plan;
    expect(replaced.resizeTo).toEqual({width: 256, height: 256});
    const [width, height] = replaced.parameters.size.split('x').map(Number);
    expect(width! * height!).toBeGreaterThanOrEqual(CUSTOM_SIZE_LIMITS.minPixels);
  });

  test('xhigh and max: only the 2.5 models', () => {
    for (const model of [
      'gpt-image-2.5-sunburst',
      'gpt-image-2.5-flare',
      'gpt-image-2.5-sunburst-2026-09-08',
    ]) {
      expect(plan({prompt: 'x', model, quality: 'max'}).plan.parameters.quality).toBe('max');
    }
    expect(problems({prompt: 'x', model: 'gpt-image-2.6-sunburst', quality: 'xhigh'})).toEqual([
      "quality: 'xhigh' is invalid for gpt-image-2.6-sunburst; allowed: low, medium, high, auto",
    ]);
    expect(problems({prompt: 'x', model: 'gpt-image-2', quality: 'max'})).toEqual([
      "quality: 'max' is invalid for gpt-image-2; allowed: low, medium, high, auto",
    ]);
  });

  test('standard and hd are dall-e-3 qualities, not GPT image ones', () => {
    expect(problems({prompt: 'x', quality: 'hd'})).toEqual([
      "quality: 'hd' is invalid for gpt-image-2.6-sunburst; allowed: low, medium, high, auto",
    ]);
    expect(problems({prompt: 'x', model: 'dall-e-3', quality: 'high'})).toEqual([
      "quality: 'high' is invalid for dall-e-3; allowed: standard, hd",
    ]);
  });

  test('style: no current model takes it', () => {
    expect(problems({prompt: 'x', style: 'vivid'})).toEqual([
      'style: gpt-image-2.6-sunburst does not take style',
    ]);
  });

  test('a transparent background needs png or webp', () => {
    expect(
      plan({prompt: 'x', background: 'transparent', output_format: 'webp'}).plan.parameters.background,
    ).toBe('transparent');
    for (const format of ['jpeg', 'gif']) {
      expect(problems({prompt: 'x', background: 'transparent', output_format: format})).toEqual([
        'background: transparent needs output_format png or webp',
      ]);
    }
  });

  test('gif and svg: GPT Image 2 and later only', () => {
    expect(plan({prompt: 'x', output_format: 'gif'}).plan.parameters.output_format).toBe('gif');
    expect(
      plan({prompt: 'x', model: 'gpt-image-2', output_format: 'svg'}).plan.parameters.output_format,
    ).toBe('svg');
    expect(problems({prompt: 'x', model: 'gpt-image-1.5', output_format: 'gif'}, {day: BEFORE})).toEqual([
      "output_format: 'gif' is invalid for gpt-image-1.5; allowed: png, jpeg, webp",
    ]);
  });

  test('output_compression: jpeg and webp only', () => {
    expect(
      plan({prompt: 'x', output_format: 'jpeg', output_compression: 50}).plan.parameters.output_compression,
    ).toBe(50);
    for (const format of ['png', 'gif', 'svg']) {
      expect(problems({prompt: 'x', output_format: format, output_compression: 50})).toEqual([
        'output_compression: only applies to output_format jpeg or webp',
      ]);
    }
  });

  test('frame_count and frame_duration_ms: gif only, within the SDK bounds', () => {
    expect(
      plan({prompt: 'x', output_format: 'gif', frame_count: 16, frame_duration_ms: 120}).plan.parameters,
    ).toMatchObject({
      frame_count: 16,
      frame_duration_ms: 120,
    });
    expect(problems({prompt: 'x', frame_count: 4})).toEqual([
      'frame_count: only applies to output_format gif',
    ]);
    expect(problems({prompt: 'x', output_format: 'png', frame_duration_ms: 100})).toEqual([
      'frame_duration_ms: only applies to output_format gif',
    ]);
    expect(problems({prompt: 'x', output_format: 'gif', frame_count: 17})[0]).toMatch(/^frame_count: .*16/);
  });

  test('svg options: svg output only; SVG is made one image per call', () => {
    const command = plan({
      prompt: 'x',
      count: 3,
      output_format: 'svg',
      svg: {model: 'author', reasoning: {effort: 'low'}},
    });
    expect(command.plan.imagesPerCall).toBe(1);
    expect(problems({prompt: 'x', svg: {model: 'author'}})).toEqual([
      'svg: only applies to output_format svg',
    ]);
  });

  test('moderation and complexity: every GPT image model', () => {
    expect(plan({prompt: 'x', moderation: 'low', complexity: 'low'}).plan.parameters).toMatchObject({
      moderation: 'low',
      complexity: 'low',
    });
    expect(problems({prompt: 'x', model: 'dall-e-2', moderation: 'low'})).toEqual([
      'moderation: dall-e-2 does not take moderation',
    ]);
  });

  test('the count is split into calls by the model limit', () => {
    expect(plan({prompt: 'x', count: 10}).plan.imagesPerCall).toBe(10);
  });
});

describe('streaming', () => {
  test('a streamed job is made one image per call, with 2 partial images each unless told', () => {
    expect(plan({prompt: 'x', count: 3, stream: true}).plan).toMatchObject({
      imagesPerCall: 1,
      partialImages: 2,
    });
    expect(plan({prompt: 'x', stream: true, partial_images: 0}).plan.partialImages).toBe(0);
    expect(plan({prompt: 'x', count: 3}).plan).toMatchObject({imagesPerCall: 10, partialImages: null});
  });

  test('GIF and SVG cannot stream: their images come whole', () => {
    expect(plan({prompt: 'x', stream: true, output_format: 'gif'}).plan.partialImages).toBeNull();
    expect(plan({prompt: 'x', stream: true, output_format: 'svg'}).plan.partialImages).toBeNull();
  });

  test('how a job is sent is not what it is: streaming changes neither the parameters nor the request', () => {
    const streamed = plan({prompt: 'x', stream: true, partial_images: 3});
    const plain = plan({prompt: 'x'});
    expect(streamed.requested).toEqual(plain.requested);
    expect(streamed.plan.parameters).toEqual(plain.plan.parameters);
    expect(problems({prompt: 'x', stream: true, partial_images: 4})[0]).toMatch(/^partial_images: /);
  });
});

describe('model lifecycle', () => {
  test('a deprecated model runs as asked until its shutdown, with a warning and its replacement ready', () => {
    const command = plan({prompt: 'x', model: 'gpt-image-1.5', size: '1536x1024'}, {day: BEFORE});
    expect(command.plan.model).toBe('gpt-image-1.5');
    expect(command.plan.warnings).toEqual([
      {
        code: 'MODEL_DEPRECATED',
        message: 'gpt-image-1.5 shuts down on 2026-12-01; move to gpt-image-2.6-sunburst',
        requested_model: 'gpt-image-1.5',
        shutdown_date: '2026-12-01',
        model: 'gpt-image-1.5',
        field: 'model',
      },
    ]);
    expect(command.fallback?.model).toBe('gpt-image-2.6-sunburst');
  });

  test('from its shutdown date it runs on its replacement', () => {
    const command = plan({prompt: 'x', model: 'gpt-image-1.5', size: '1536x1024', quality: 'high'});
    expect(command.requestedModel).toBe('gpt-image-1.5');
    expect(command.plan).toMatchObject({
      model: 'gpt-image-2.6-sunburst',
      parameters: {size: '1536x1024', quality: 'high'},
    });
    expect(command.plan.warnings.map(w => [w.code, w.requested_model, w.shutdown_date, w.model])).toEqual([
      ['MODEL_REPLACED', 'gpt-image-1.5', '2026-12-01', 'gpt-image-2.6-sunburst'],
    ]);
  });

  test("dall-e-3's hd, style and tall size carry over to gpt-image-2.5-sunburst", () => {
    const command = plan({
      prompt: 'x',
      model: 'dall-e-3',
      size: '1024x1792',
      quality: 'hd',
      style: 'natural',
      count: 2,
    });
    expect(command.plan).toMatchObject({
      model: 'gpt-image-2.5-sunburst',
      parameters: {size: '1024x1792', quality: 'high'},
      resizeTo: null,
      imagesPerCall: 10,
    });
    expect(command.plan.parameters).not.toHaveProperty('style');
    expect(command.plan.warnings.map(w => [w.code, w.field])).toEqual([
      ['MODEL_REPLACED', 'model'],
      ['PARAMETER_TRANSLATED', 'quality'],
      ['PARAMETER_DROPPED', 'style'],
    ]);
  });

  test("dall-e-3's default quality is medium on its replacement", () => {
    expect(plan({prompt: 'x', model: 'dall-e-3'}).plan.parameters.quality).toBe('medium');
  });

  test('dall-e-2 at 256x256 is made at 1024x1024 on gpt-image-2.5-flare, then resized', () => {
    const command = plan({prompt: 'x', model: 'dall-e-2', size: '256x256', count: 4});
    expect(command.plan).toMatchObject({
      model: 'gpt-image-2.5-flare',
      parameters: {size: '1024x1024', quality: 'low'},
      resizeTo: {width: 256, height: 256},
    });
    expect(command.plan.warnings.map(w => w.code)).toEqual(['MODEL_REPLACED', 'IMAGE_RESIZED']);
  });

  test('a resized image is streamed without partial images: they would show the size made, not the one kept', () => {
    const streamed = plan({prompt: 'x', model: 'dall-e-2', size: '256x256', count: 2, stream: true});
    expect(streamed.plan).toMatchObject({resizeTo: {width: 256, height: 256}, partialImages: null});
    expect(streamed.plan.imagesPerCall).toBe(plan({prompt: 'x', model: 'dall-e-2'}).plan.imagesPerCall);
    const taken = plan({prompt: 'x', model: 'dall-e-2', size: '1024x1024', stream: true});
    expect(taken.plan).toMatchObject({resizeTo: null, partialImages: 2});
  });

  test('the nearest size keeps the shape asked for', () => {
    const catalogue = new ModelCatalogue({aliases: {'dall-e-3': 'gpt-image-2.6-flare'}});
    const command = plan({prompt: 'x', model: 'dall-e-3', size: '1024x1792'}, {catalogue});
    expect(command.plan).toMatchObject({
      model: 'gpt-image-2.6-flare',
      parameters: {size: '1024x1536'},
      resizeTo: {width: 1024, height: 1792},
    });
  });

  test('RETIRED_MODELS=reject refuses a retired model and names its replacement', () => {
    const error = (() => {
      try {
        plan({prompt: 'x', model: 'dall-e-3'}, {retiredModels: 'reject'});
      } catch (e) {
        return e as AppError;
      }
      throw new Error('expected MODEL_RETIRED');
    })();
    expect(error.code).toBe('MODEL_RETIRED');
    expect(error.message).toBe('dall-e-3 was shut down on 2026-05-12; use gpt-image-2.5-sunburst');
    expect(error.details).toMatchObject({replacement: 'gpt-image-2.5-sunburst'});
  });

  test('an active model has no fallback unless MODEL_ALIASES gives it one', () => {
    expect(plan({prompt: 'x', model: 'gpt-image-2'}).fallback).toBeNull();
    const catalogue = new ModelCatalogue({aliases: {'gpt-image-2': 'gpt-image-2.6-flare'}});
    expect(plan({prompt: 'x', model: 'gpt-image-2'}, {catalogue}).fallback?.model).toBe(
      'gpt-image-2.6-flare',
    );
  });

  test('EXTRA_MODELS registers a new id with the rules of a known one', () => {
    const catalogue = new ModelCatalogue({extraModels: [{id: 'gpt-image-3', like: 'gpt-image-2.5-flare'}]});
    expect(plan({prompt: 'x', model: 'gpt-image-3', quality: 'max'}, {catalogue}).plan.model).toBe(
      'gpt-image-3',
    );
  });
});

describe('ModelCatalogue', () => {
  test('every model has a status for a day; replacements are followed past retired ones', () => {
    const catalogue = new ModelCatalogue({aliases: {'gpt-image-1-mini': 'gpt-image-2.6-flare'}});
    expect(catalogue.status('gpt-image-1.5', '2026-11-30')).toBe('deprecated');
    expect(catalogue.status('gpt-image-1.5', '2026-12-01')).toBe('retired');
    expect(catalogue.status('gpt-image-2.6-flare', '2030-01-01')).toBe('active');
    expect(catalogue.successor('gpt-image-1-mini', AFTER)?.id).toBe('gpt-image-2.6-flare');
    expect(catalogue.successor('gpt-image-2', AFTER)).toBeNull();
  });

  test.each([
    [{extraModels: [{id: 'Bad Id', like: 'gpt-image-2'}]}, "'Bad Id' is not a model id"],
    [{extraModels: [{id: 'gpt-image-2', like: 'gpt-image-2'}]}, "'gpt-image-2' is already known"],
    [
      {extraModels: [{id: 'gpt-image-3', like: 'nope'}]},
      "'gpt-image-3' is to be like 'nope', which is not a known model",
    ],
    [{aliases: {'dall-e-4': 'gpt-image-2'}}, "'dall-e-4' is not a known model"],
    [
      {aliases: {'dall-e-3': 'gpt-image-1.5'}},
      "'dall-e-3' is to be run on 'gpt-image-1.5', which OpenAI is shutting down",
    ],
  ])('refuses %j', (options, message) => {
    expect(() => new ModelCatalogue(options)).toThrow(new CatalogueError(message));
  });

  test('the catalogue holds every model the SDK names, each with its shutdown date', () => {
    const ids = MODEL_CATALOGUE.map(entry => entry.id);
    // ImageModel in openai 7.57 resources/images.d.ts.
    for (const id of [
      'gpt-image-1.5',
      'gpt-image-2',
      'gpt-image-2-2026-04-21',
      'gpt-image-2.5-sunburst',
      'gpt-image-2.5-sunburst-2026-09-08',
      'gpt-image-2.5-flare',
      'gpt-image-2.5-flare-2026-09-08',
      'gpt-image-2.6-sunburst',
      'gpt-image-2.6-flare',
      'gpt-image-1',
      'gpt-image-1-mini',
      'chatgpt-image-latest',
      'dall-e-2',
      'dall-e-3',
    ]) {
      expect(ids).toContain(id);
    }
    const retired = MODEL_CATALOGUE.filter(entry => statusOn(entry, AFTER) === 'retired').map(
      entry => entry.id,
    );
    expect(retired.sort()).toEqual(
      [
        'chatgpt-image-latest',
        'dall-e-2',
        'dall-e-3',
        'gpt-image-1',
        'gpt-image-1-mini',
        'gpt-image-1.5',
        'gpt-image-1.5-2025-12-16',
      ].sort(),
    );
  });
});

describe('model helpers', () => {
  test('splitIntoCalls respects the per-call limit', () => {
    expect(splitIntoCalls(4, 1)).toEqual([1, 1, 1, 1]);
    expect(splitIntoCalls(10, 10)).toEqual([10]);
    expect(splitIntoCalls(7, 3)).toEqual([3, 3, 1]);
  });

  test.each([
    ['1536x864', null],
    ['3840x2160', null],
    ['3840x1280', null],
    ['big', 'must look like WIDTHxHEIGHT'],
    ['0x1024', 'must look like WIDTHxHEIGHT'],
  ])('customSizeProblem(%s)', (size, expected) => {
    expect(customSizeProblem(size)).toBe(expected);
  });
});

import {AppError, type FieldProblem} from '../../src/core/errors';
import {parseGenerateBody, planGeneration, type GenerateCommand} from '../../src/core/generation';
import {customSizeProblem, splitIntoCalls, type ModelId} from '../../src/core/models';

type ParseResult = {ok: true; command: GenerateCommand} | {ok: false; problems: FieldProblem[]};

/** Both steps a body goes through: the payload schema, then the model's rules. */
function parseGenerateRequest(body: unknown, defaultModel: ModelId): ParseResult {
  try {
    return {ok: true, command: planGeneration(parseGenerateBody(body), defaultModel)};
  } catch (error) {
    if (!(error instanceof AppError) || error.code !== 'VALIDATION_ERROR') throw error;
    return {ok: false, problems: (error.details as {fields: FieldProblem[]}).fields};
  }
}

function problems(result: ParseResult): string[] {
  if (result.ok) throw new Error('expected a validation failure');
  return result.problems.map(p => `${p.field}: ${p.message}`);
}

describe('parseGenerateRequest', () => {
  test('legacy payload becomes a one-image job on the default model', () => {
    const result = parseGenerateRequest({input: {body: {prompt_image: '  a sunset  '}}}, 'gpt-image-1.5');
    expect(result).toEqual({
      ok: true,
      command: {
        prompt: 'a sunset',
        count: 1,
        model: 'gpt-image-1.5',
        parameters: {size: '1024x1024'},
        metadata: {},
        allowPartial: false,
        source: 'legacy',
      },
    });
  });

  test('rich payload keeps every parameter; n is an alias of count', () => {
    const result = parseGenerateRequest(
      {
        prompt: 'a fox',
        n: 3,
        model: 'gpt-image-1',
        size: '1536x1024',
        quality: 'high',
        background: 'transparent',
        output_format: 'webp',
        output_compression: 80,
        moderation: 'low',
        user: 'u-1',
        metadata: {order: '42'},
      },
      'dall-e-2',
    );
    expect(result.ok && result.command).toEqual({
      prompt: 'a fox',
      count: 3,
      model: 'gpt-image-1',
      parameters: {
        size: '1536x1024',
        quality: 'high',
        background: 'transparent',
        output_format: 'webp',
        output_compression: 80,
        moderation: 'low',
        user: 'u-1',
      },
      metadata: {order: '42'},
      allowPartial: false,
      source: 'generate',
    });
  });

  test.each([
    [
      {prompt: 'x', model: 'dall-e-2', size: '1792x1024'},
      "size: '1792x1024' is invalid for dall-e-2 (not supported); allowed: 256x256, 512x512, 1024x1024",
    ],
    [
      {prompt: 'x', model: 'dall-e-3', quality: 'high'},
      "quality: 'high' is invalid for dall-e-3; allowed: standard, hd",
    ],
    [{prompt: 'x', model: 'gpt-image-1', style: 'vivid'}, 'style: gpt-image-1 does not take a style'],
    [{prompt: 'x', model: 'dall-e-3', style: 'moody'}, 'style: must be one of: vivid, natural'],
    [
      {prompt: 'x', model: 'dall-e-3', output_format: 'png'},
      'output_format: only GPT image models take output_format; dall-e-3 does not',
    ],
    [
      {prompt: 'x', model: 'gpt-image-1', output_compression: 50},
      'output_compression: only applies to output_format jpeg or webp',
    ],
    [
      {prompt: 'x', model: 'gpt-image-1', background: 'transparent', output_format: 'jpeg'},
      'background: transparent needs output_format png or webp',
    ],
    [
      {prompt: 'x'.repeat(1001), model: 'dall-e-2'},
      'prompt: is 1001 characters; dall-e-2 accepts at most 1000',
    ],
    [
      {prompt: 'x'.repeat(4001), model: 'dall-e-3'},
      'prompt: is 4001 characters; dall-e-3 accepts at most 4000',
    ],
    [{prompt: 'x', count: 2, n: 3}, 'count: `count` and `n` disagree; send one of them'],
    [
      {prompt: 'x', model: 'gpt-image-2', size: '1000x1000'},
      "size: '1000x1000' is invalid for gpt-image-2 (width and height must be multiples of 16); allowed: 1024x1024, 1536x1024, 1024x1536, auto or a custom WIDTHxHEIGHT",
    ],
  ])('model rules: %j', (body, message) => {
    expect(problems(parseGenerateRequest(body, 'gpt-image-1.5'))).toEqual([message]);
  });

  test('GPT image prompts may be 32000 characters, not more', () => {
    expect(parseGenerateRequest({prompt: 'x'.repeat(32000), model: 'gpt-image-1'}, 'dall-e-2').ok).toBe(true);
    expect(
      problems(parseGenerateRequest({prompt: 'x'.repeat(32001), model: 'gpt-image-1'}, 'dall-e-2')),
    ).toEqual(['prompt: is 32001 characters; gpt-image-1 accepts at most 32000']);
  });

  test('gpt-image-2 takes custom sizes within limits', () => {
    expect(parseGenerateRequest({prompt: 'x', model: 'gpt-image-2', size: '1536x864'}, 'dall-e-2').ok).toBe(
      true,
    );
    expect(parseGenerateRequest({prompt: 'x', model: 'gpt-image-1.5', size: '1536x864'}, 'dall-e-2').ok).toBe(
      false,
    );
  });

  test('schema errors name the field and the allowed values', () => {
    const result = parseGenerateRequest({prompt: '', model: 'dall-e-4', count: 11, extra: 1}, 'dall-e-2');
    expect(problems(result)).toEqual(
      expect.arrayContaining([
        'prompt: must not be empty',
        'model: must be one of: gpt-image-2, gpt-image-1.5, gpt-image-1, gpt-image-1-mini, dall-e-3, dall-e-2',
        expect.stringMatching(/^count: .*10/),
        'extra: unknown field',
      ]),
    );
  });

  test('legacy errors point into the legacy shape', () => {
    expect(problems(parseGenerateRequest({input: {body: {}}}, 'dall-e-2'))).toEqual([
      expect.stringMatching(/^input\.body\.prompt_image: /),
    ]);
    expect(
      problems(
        parseGenerateRequest(
          {input: {body: {prompt_image: 'x', model: 'dall-e-3', n: 1, size: '1x1'}}},
          'dall-e-2',
        ),
      ),
    ).toEqual([expect.stringMatching(/^input\.body\.size: '1x1' is invalid for dall-e-3/)]);
  });

  test.each([null, [], 'text', 42])('a body that is not an object (%j) is refused', body => {
    expect(problems(parseGenerateRequest(body, 'dall-e-2'))).toEqual(['(body): must be a JSON object']);
  });

  test('control characters are refused; newlines and tabs are fine', () => {
    expect(parseGenerateRequest({prompt: 'line one\nline\ttwo'}, 'dall-e-2').ok).toBe(true);
    expect(problems(parseGenerateRequest({prompt: 'bell\u0007'}, 'dall-e-2'))).toEqual([
      'prompt: must not contain control characters',
    ]);
  });

  test('metadata must be small string labels', () => {
    const tooMany = Object.fromEntries(Array.from({length: 21}, (_, i) => [`k${i}`, 'v']));
    expect(problems(parseGenerateRequest({prompt: 'x', metadata: tooMany}, 'dall-e-2'))).toEqual([
      'metadata: at most 20 keys',
    ]);
    expect(problems(parseGenerateRequest({prompt: 'x', metadata: {a: 1}}, 'dall-e-2'))[0]).toMatch(
      /^metadata\.a: /,
    );
    expect(problems(parseGenerateRequest({prompt: 'x', metadata: {'bad key': 'v'}}, 'dall-e-2'))[0]).toMatch(
      /^metadata\.bad key: keys are/,
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
    ['4096x1024', 'no edge may exceed 3840 pixels'],
    ['3840x1264', 'aspect ratio must be between 1:3 and 3:1'],
    ['1000x1000', 'width and height must be multiples of 16'],
    ['big', 'must look like WIDTHxHEIGHT'],
  ])('customSizeProblem(%s)', (size, expected) => {
    expect(customSizeProblem(size)).toBe(expected);
  });
});

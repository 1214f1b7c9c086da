import {OpenAIImageProvider, type OpenAIProviderOptions} from '../../src/adapters/openai/provider';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';

const providerOn = (baseURL: string, options: Partial<OpenAIProviderOptions> = {}) =>
  new OpenAIImageProvider({
    apiKey: 'sk-test-key',
    organization: undefined,
    project: undefined,
    baseURL,
    timeoutMs: 10_000,
    maxRetries: 0,
    maxConcurrentDecodes: 4,
    ...options,
  });

describe('OpenAIImageProvider whileWaiting', () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI({latencyMs: 300});
  });
  afterAll(() => fake.close());

  const providerFor = (baseURL: string, whileWaiting: () => void) => providerOn(baseURL, {whileWaiting});
  const request = {
    model: 'gpt-image-2.6-flare',
    prompt: 'a lighthouse',
    n: 1,
    parameters: {size: '1024x1024'},
  } as const;

  test('runs once, while the call still waits for its answer', async () => {
    const events: string[] = [];
    // Were it only called when the answer arrives, 'answered' would come first.
    const count = await providerFor(fake.url, () => events.push('sent')).generate(request, async result => {
      events.push('answered');
      return result.images.length;
    });
    expect(events).toEqual(['sent', 'answered']);
    expect(count).toBe(1);
  });

  test('a callback that throws changes nothing for the call', async () => {
    let calls = 0;
    const provider = providerFor(fake.url, () => {
      calls++;
      throw new Error('not ready');
    });
    // An exception escaping the callback would be uncaught and fail this test run.
    const count = await provider.generate(request, async result => result.images.length);
    await new Promise(resolve => setImmediate(resolve));
    expect(calls).toBe(1);
    expect(count).toBe(1);
  });

  test('still runs once when the request never leaves', async () => {
    let calls = 0;
    const error = await providerFor('http://127.0.0.1:9/v1', () => calls++)
      .generate(request, async () => undefined)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    await new Promise(resolve => setImmediate(resolve));
    expect(error).toMatchObject({code: 'UPSTREAM_ERROR'});
    expect(calls).toBe(1);
  });

  test('reads at most maxConcurrentDecodes answers at once, while any number wait upstream', async () => {
    const provider = providerOn(fake.url, {maxConcurrentDecodes: 2});
    const total = 6;
    let reading = 0;
    let entered = 0;
    let most = 0;
    const changed: (() => void)[] = [];
    const notify = () => changed.splice(0).forEach(wake => wake());
    await Promise.all(
      Array.from({length: total}, () =>
        provider.generate(request, async () => {
          entered++;
          most = Math.max(most, ++reading);
          notify();
          // Each read holds its slot until a second one is in, or until no other answer is left:
          // with two slots, two reads are then in at once whatever the answers' timing.
          while (reading < 2 && entered < total) await new Promise<void>(wake => changed.push(wake));
          reading--;
          notify();
        }),
      ),
    );
    expect(most).toBe(2);
  });
});

describe('OpenAIImageProvider: streamed images and maxConcurrentDecodes', () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI();
  });
  afterAll(() => fake.close());

  test('with one decode slot, two streams decode their final images one at a time; partials flow meanwhile', async () => {
    let waiting = 0;
    let decoding = 0;
    let most = 0;
    const changed: (() => void)[] = [];
    const notify = () => changed.splice(0).forEach(wake => wake());
    const until = async (done: () => boolean) => {
      while (!done()) await new Promise<void>(wake => changed.push(wake));
    };
    const provider = providerOn(fake.url, {
      maxConcurrentDecodes: 1,
      decodes: {
        waiting: () => {
          waiting++;
          notify();
        },
        decoding: () => {
          most = Math.max(most, ++decoding);
          notify();
          return () => {
            decoding--;
            notify();
          };
        },
      },
    });
    const partials = [0, 0];
    let stored = 0;
    let partialsOfTheOther: number | undefined;
    const results = await Promise.all(
      [0, 1].map(i =>
        provider.generate(
          {
            model: 'gpt-image-2.6-flare',
            prompt: `stream ${i}`,
            n: 1,
            parameters: {size: '1024x1024'},
            partialImages: 1,
          },
          async result => {
            // The first image stored keeps its slot until the other call waits for one, or decodes
            // its own image without one: whichever the answers' timing, both are then in the test.
            if (stored++ === 0) {
              await until(() => waiting === 2 || decoding === 2);
              partialsOfTheOther = partials[1 - i];
            }
            return result.images.length;
          },
          {onPartial: () => partials[i]!++},
        ),
      ),
    );
    expect(results).toEqual([1, 1]);
    expect(most).toBe(1);
    expect(partials).toEqual([1, 1]);
    expect(partialsOfTheOther).toBe(1);
    expect(decoding).toBe(0);
  });
});

describe('OpenAIImageProvider: refusals of a preview feature', () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI();
  });
  afterAll(() => fake.close());
  beforeEach(() => fake.reset());

  const provider = () => providerOn(fake.url);
  const refusalOf = (parameters: Record<string, unknown>) =>
    provider()
      .generate({model: 'gpt-image-2', prompt: 'a lighthouse', n: 1, parameters}, async () => undefined)
      .then(
        () => {
          throw new Error('the call succeeded');
        },
        (error: unknown) => error as {code: string; message: string; details: Record<string, unknown>},
      );

  test('a 403 naming no parameter is the GIF preview refused, not the credentials', async () => {
    fake.injectFault({kind: 'api_error', status: 403, message: 'Your project cannot use this feature.'});
    const error = await refusalOf({output_format: 'gif'});
    expect(error.code).toBe('FEATURE_NOT_AVAILABLE');
    expect(error.message).toContain('GIF output');
    expect(error.message).toContain('Your project cannot use this feature.');
    expect(error.details).toMatchObject({
      feature: 'GIF output',
      field: 'output_format',
      upstream_status: 403,
    });
  });

  test('a 400 naming no parameter is the SVG preview refused', async () => {
    fake.injectFault({kind: 'api_error', status: 400, message: 'SVG output is not enabled.'});
    const error = await refusalOf({output_format: 'svg'});
    expect(error.code).toBe('FEATURE_NOT_AVAILABLE');
    expect(error.details).toMatchObject({
      feature: 'SVG output',
      field: 'output_format',
      upstream_status: 400,
    });
  });

  test('a 400 naming another parameter stays a validation error on it', async () => {
    fake.injectFault({kind: 'api_error', status: 400, message: 'Bad size.', param: 'size'});
    const error = await refusalOf({output_format: 'gif', size: '1024x1024'});
    expect(error.code).toBe('VALIDATION_ERROR');
    expect(error.details).toMatchObject({fields: [{field: 'size'}]});
  });

  test('a 400 naming no parameter without a preview stays a validation error', async () => {
    fake.injectFault({kind: 'api_error', status: 400, message: 'Something is wrong.'});
    expect((await refusalOf({output_format: 'png'})).code).toBe('VALIDATION_ERROR');
  });

  test('a safety refusal of a GIF is still the prompt refused', async () => {
    fake.injectFault({kind: 'content_policy'});
    expect((await refusalOf({output_format: 'gif'})).code).toBe('CONTENT_POLICY_VIOLATION');
  });

  test('model_not_found naming svg.model is that parameter, not the request model gone', async () => {
    fake.injectFault({
      kind: 'api_error',
      status: 404,
      message: 'The model `svg-author-9` does not exist or you do not have access to it.',
      param: 'svg.model',
      code: 'model_not_found',
    });
    const error = await refusalOf({output_format: 'svg', svg: {model: 'svg-author-9'}});
    // MODEL_UNAVAILABLE would make the use case retry on the model's replacement.
    expect(error.code).toBe('VALIDATION_ERROR');
    expect(error.details).toMatchObject({fields: [{field: 'svg.model'}], upstream_status: 404});
  });

  test.each([null, 'model'])('model_not_found naming %p is the model gone', async param => {
    fake.injectFault({
      kind: 'api_error',
      status: 404,
      message: 'The model `gpt-image-2` has been deprecated.',
      param,
      code: 'model_not_found',
    });
    expect((await refusalOf({output_format: 'svg'})).code).toBe('MODEL_UNAVAILABLE');
  });
});

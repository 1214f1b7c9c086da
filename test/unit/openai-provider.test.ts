import {OpenAIImageProvider} from '../../src/adapters/openai-provider';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';

describe('OpenAIImageProvider onRequestSent', () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI({latencyMs: 300});
  });
  afterAll(() => fake.close());

  const providerFor = (baseURL: string) =>
    new OpenAIImageProvider({
      apiKey: 'sk-test-key',
      organization: undefined,
      project: undefined,
      baseURL,
      timeoutMs: 10_000,
      maxRetries: 0,
    });
  const request = {model: 'dall-e-2', prompt: 'a lighthouse', n: 1, size: '256x256'} as const;

  test('runs once, while the call still waits for its answer', async () => {
    const events: string[] = [];
    // Were it only called when the answer arrives, 'answered' would come first.
    const pending = await providerFor(fake.url).generate(request, undefined, () => events.push('sent'));
    events.push('answered');
    const result = await pending.read();
    expect(events).toEqual(['sent', 'answered']);
    expect(result.images).toHaveLength(1);
  });

  test('a callback that throws changes nothing for the call', async () => {
    let calls = 0;
    const pending = await providerFor(fake.url).generate(request, undefined, () => {
      calls++;
      throw new Error('not ready');
    });
    // An exception escaping the callback would be uncaught and fail this test run.
    await new Promise(resolve => setImmediate(resolve));
    expect(calls).toBe(1);
    expect((await pending.read()).images).toHaveLength(1);
  });

  test('still runs once when the request never leaves', async () => {
    let calls = 0;
    const error = await providerFor('http://127.0.0.1:9/v1')
      .generate(request, undefined, () => calls++)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    await new Promise(resolve => setImmediate(resolve));
    expect(error).toMatchObject({code: 'UPSTREAM_ERROR'});
    expect(calls).toBe(1);
  });
});

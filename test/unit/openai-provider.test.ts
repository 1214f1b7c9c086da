import {OpenAIImageProvider} from '../../src/adapters/openai/provider';
import {startFakeOpenAI, type FakeOpenAI} from '../support/fake-openai';

describe('OpenAIImageProvider whileWaiting', () => {
  let fake: FakeOpenAI;
  beforeAll(async () => {
    fake = await startFakeOpenAI({latencyMs: 300});
  });
  afterAll(() => fake.close());

  const providerFor = (baseURL: string, whileWaiting: () => void) =>
    new OpenAIImageProvider({
      apiKey: 'sk-test-key',
      organization: undefined,
      project: undefined,
      baseURL,
      timeoutMs: 10_000,
      maxRetries: 0,
      maxConcurrentDecodes: 4,
      whileWaiting,
    });
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
    const provider = new OpenAIImageProvider({
      apiKey: 'sk-test-key',
      organization: undefined,
      project: undefined,
      baseURL: fake.url,
      timeoutMs: 10_000,
      maxRetries: 0,
      maxConcurrentDecodes: 2,
    });
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

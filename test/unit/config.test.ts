import {ConfigError, loadConfig} from '../../src/config';

describe('loadConfig', () => {
  test('defaults: local storage under ./data, no key', () => {
    const config = loadConfig({});
    expect(config.storage).toEqual({kind: 'local', dataDir: './data'});
    expect(config.openai.apiKey).toBeUndefined();
    expect(config.defaultModel).toBe('gpt-image-2.6-sunburst');
    expect(config.retiredModels).toBe('replace');
    expect(config.openai.timeoutMs).toBe(300_000);
  });

  test('accepts the older variable names', () => {
    const config = loadConfig({OPENAI_API: 'sk-old', OPENAI_ORG_ID: 'org-old'});
    expect(config.openai.apiKey).toBe('sk-old');
    expect(config.openai.organization).toBe('org-old');
  });

  test('the current names win over the older ones', () => {
    const config = loadConfig({
      OPENAI_API: 'sk-old',
      OPENAI_API_KEY: 'sk-new',
      OPENAI_ORGANIZATION: 'org-new',
      OPENAI_ORG_ID: 'org-old',
    });
    expect(config.openai.apiKey).toBe('sk-new');
    expect(config.openai.organization).toBe('org-new');
  });

  test('GCS_BUCKET switches to Cloud Storage and Firestore', () => {
    const config = loadConfig({
      GCS_BUCKET: 'my-images',
      GOOGLE_CLOUD_PROJECT: 'proj',
      FIRESTORE_DATABASE: 'imagegen',
    });
    expect(config.storage).toEqual({
      kind: 'gcp',
      bucket: 'my-images',
      projectId: 'proj',
      firestoreDatabase: 'imagegen',
      storageEndpoint: undefined,
    });
    expect(config.urls.mode).toBe('signed');
  });

  test('a storage emulator host becomes an explicit endpoint', () => {
    const config = loadConfig({GCS_BUCKET: 'bkt', STORAGE_EMULATOR_HOST: '127.0.0.1:9023'});
    expect(config.storage.kind === 'gcp' && config.storage.storageEndpoint).toBe('http://127.0.0.1:9023');
  });

  test('URL modes other than proxy need a bucket', () => {
    expect(() => loadConfig({URL_MODE: 'signed'})).toThrow(/URL_MODE: 'signed' needs GCS_BUCKET/);
    expect(loadConfig({}).urls).toEqual({mode: 'proxy', signedTtlSeconds: 3600, proxySigningKey: null});
    expect(loadConfig({API_KEYS: 'carol:0123456789abcdef'}).urls.proxySigningKey).toHaveLength(32);
    expect(() => loadConfig({SIGNED_URL_TTL_SECONDS: '604801'})).toThrow(/SIGNED_URL_TTL_SECONDS/);
  });

  test('empty strings count as unset', () => {
    expect(loadConfig({GCS_BUCKET: '', OPENAI_API_KEY: '  '}).storage.kind).toBe('local');
  });

  test('every bad variable is listed in one error', () => {
    let error: unknown;
    try {
      loadConfig({
        DEFAULT_MODEL: 'dall-e-9',
        GCS_BUCKET: 'Bad_Bucket!',
        PUBLIC_BASE_URL: 'ftp://x',
        UPSTREAM_TIMEOUT_SECONDS: '2',
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.map(p => p.split(':')[0]);
    expect(problems.sort()).toEqual([
      'DEFAULT_MODEL',
      'GCS_BUCKET',
      'PUBLIC_BASE_URL',
      'UPSTREAM_TIMEOUT_SECONDS',
    ]);
  });

  test('MODEL_ALIASES and EXTRA_MODELS shape the catalogue; DEFAULT_MODEL must be in it', () => {
    const config = loadConfig({
      MODEL_ALIASES: 'dall-e-3=gpt-image-2.6-flare, dall-e-2=gpt-image-2.6-flare',
      EXTRA_MODELS: 'gpt-image-3:gpt-image-2.5-flare,gpt-image-3-mini',
      DEFAULT_MODEL: 'gpt-image-3',
      RETIRED_MODELS: 'reject',
    });
    expect(config.models.get('dall-e-3')?.replacement).toBe('gpt-image-2.6-flare');
    expect(config.models.rules('gpt-image-3').qualities).toContain('max');
    expect(config.models.rules('gpt-image-3-mini')).toBe(config.models.rules('gpt-image-2.6-sunburst'));
    expect(config.defaultModel).toBe('gpt-image-3');
    expect(config.retiredModels).toBe('reject');
    expect(() => loadConfig({MODEL_ALIASES: 'dall-e-3=gpt-image-1.5'})).toThrow(
      "MODEL_ALIASES or EXTRA_MODELS: 'dall-e-3' is to be run on 'gpt-image-1.5', which OpenAI is shutting down",
    );
    expect(() => loadConfig({MODEL_ALIASES: 'dall-e-3'})).toThrow(
      /MODEL_ALIASES: entry 1 \('dall-e-3'\) must be/,
    );
    expect(() => loadConfig({RETIRED_MODELS: 'keep'})).toThrow(/RETIRED_MODELS/);
  });

  test('PUBLIC_BASE_URL loses its trailing slash', () => {
    expect(loadConfig({PUBLIC_BASE_URL: 'https://img.example.com/'}).publicBaseUrl).toBe(
      'https://img.example.com',
    );
  });
});

import {createHash} from 'node:crypto';
import {z} from 'zod';
import type {OpenAIProviderOptions} from './adapters/openai/provider';
import {CatalogueError, DEFAULT_MODEL_ID, ModelCatalogue} from './core/catalogue';

/**
 * The one place that reads the environment. Everything else receives a
 * validated `Config`, so a bad variable fails the first request with a message
 * naming every problem instead of surfacing later as an odd runtime error.
 */

const optionalText = z
  .string()
  .trim()
  .transform(v => (v === '' ? undefined : v))
  .optional();

const optionalUrl = optionalText.pipe(z.url({protocol: /^https?$/}).optional());

function intInRange(min: number, max: number, fallback: number) {
  return optionalText.transform((value, ctx) => {
    if (value === undefined) return fallback;
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      ctx.addIssue({code: 'custom', message: `must be an integer from ${min} to ${max}`});
      return z.NEVER;
    }
    return n;
  });
}

/** A comma-separated list whose every entry matches `entry`; gives each entry's match. */
function listOf(shape: string, entry: RegExp) {
  return optionalText.transform((value, ctx) => {
    const matches: RegExpExecArray[] = [];
    for (const [position, item] of (value ?? '')
      .split(',')
      .map(e => e.trim())
      .filter(Boolean)
      .entries()) {
      const match = entry.exec(item);
      if (match) matches.push(match);
      else
        ctx.addIssue({
          code: 'custom',
          message: `entry ${position + 1} ('${item.slice(0, 80)}') must be ${shape}`,
        });
    }
    return matches;
  });
}

const booleanFlag = (fallback: boolean) =>
  optionalText.pipe(
    z
      .enum(['true', 'false', '1', '0', 'yes', 'no'])
      .optional()
      .transform(v => (v === undefined ? fallback : ['true', '1', 'yes'].includes(v))),
  );

const EnvSchema = z.object({
  OPENAI_API_KEY: optionalText,
  /** Older deployments named the key OPENAI_API. */
  OPENAI_API: optionalText,
  OPENAI_ORGANIZATION: optionalText,
  OPENAI_ORG_ID: optionalText,
  OPENAI_PROJECT: optionalText,
  OPENAI_BASE_URL: optionalUrl,
  /** The model of requests that name none; checked against the catalogue below. */
  DEFAULT_MODEL: optionalText.transform(v => v ?? DEFAULT_MODEL_ID),
  /** `retired=replacement,...`: the model a retired model's requests run on, over OpenAI's recommendation. */
  MODEL_ALIASES: listOf('retired=replacement', /^([a-z0-9][a-z0-9._-]{0,63})=([a-z0-9][a-z0-9._-]{0,63})$/),
  /** `id[:like-model],...`: models OpenAI added after this release, with the rules of a known one. */
  EXTRA_MODELS: listOf(
    'id or id:like-model',
    /^([a-z0-9][a-z0-9._-]{0,63})(?::([a-z0-9][a-z0-9._-]{0,63}))?$/,
  ),
  /** `replace` (default): run a retired model's requests on its replacement; `reject`: answer MODEL_RETIRED. */
  RETIRED_MODELS: optionalText.pipe(z.enum(['replace', 'reject']).optional().default('replace')),
  GCS_BUCKET: optionalText.pipe(
    z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$/, 'is not a valid bucket name')
      .optional(),
  ),
  /** A local Cloud Storage endpoint (tests, emulators): host:port or a URL. */
  STORAGE_EMULATOR_HOST: optionalText,
  GOOGLE_CLOUD_PROJECT: optionalText,
  GCLOUD_PROJECT: optionalText,
  FIRESTORE_DATABASE: optionalText,
  DATA_DIR: optionalText,
  PUBLIC_BASE_URL: optionalUrl,
  URL_MODE: optionalText.pipe(z.enum(['signed', 'public', 'proxy']).optional()),
  /** V4 signed URLs live at most 7 days. */
  SIGNED_URL_TTL_SECONDS: intInRange(60, 604800, 3600),
  MAX_BODY_BYTES: intInRange(1024, 32 * 1024 * 1024, 1024 * 1024),
  /** Edits carry images: their bodies may be this large (Cloud Run caps a request at 32 MiB). */
  MAX_UPLOAD_BYTES: intInRange(1024, 32 * 1024 * 1024, 30 * 1024 * 1024),
  /** Buckets besides GCS_BUCKET whose objects an edit may name as gs:// sources, comma-separated. */
  EDIT_SOURCE_BUCKETS: optionalText.transform((value, ctx) => {
    const buckets = (value ?? '')
      .split(',')
      .map(b => b.trim())
      .filter(Boolean);
    for (const bucket of buckets) {
      if (!/^[a-z0-9][a-z0-9._-]{1,221}[a-z0-9]$/.test(bucket)) {
        ctx.addIssue({code: 'custom', message: `'${bucket.slice(0, 80)}' is not a valid bucket name`});
      }
    }
    return buckets;
  }),
  UPSTREAM_TIMEOUT_SECONDS: intInRange(5, 3600, 300),
  IDEMPOTENCY_TTL_HOURS: intInRange(1, 24 * 30, 24),
  /** Upstream answers decoded and stored at once per instance (each holds its images in memory). */
  MAX_CONCURRENT_DECODES: intInRange(1, 256, 4),
  /** Deadline for one Firestore call; the client has none for an unreachable backend. */
  FIRESTORE_TIMEOUT_SECONDS: intInRange(1, 300, 20),
  /** Deadline for one Cloud Storage call (the client has none that works on Node). */
  STORAGE_TIMEOUT_SECONDS: intInRange(1, 600, 60),
  /** Local mode: how often the reconciler runs in the background (0: only at start). */
  RECONCILE_INTERVAL_SECONDS: intInRange(0, 86_400, 300),
  UPSTREAM_MAX_RETRIES: intInRange(0, 10, 2),
  /**
   * Caller API keys for public deployments: comma-separated `name:key` or
   * `name:key:daily_image_quota`. Unset: no key check (IAM guards the function).
   */
  API_KEYS: optionalText.transform((value, ctx) => {
    if (value === undefined) return [];
    const keys: ApiKey[] = [];
    for (const [position, entry] of value
      .split(',')
      .map(e => e.trim())
      .filter(Boolean)
      .entries()) {
      const match =
        /^([A-Za-z0-9_-]{1,64}):([\x21-\x2b\x2d-\x39\x3b-\x7e]{16,256})(?::(\d{0,9}))?(?::(admin|user))?$/.exec(
          entry,
        );
      if (!match) {
        ctx.addIssue({
          code: 'custom',
          message: `entry ${position + 1} must be name:key[:daily_quota][:admin] (name: letters, digits, _ -; key: 16+ printable characters without , or :)`,
        });
        continue;
      }
      keys.push({
        name: match[1]!,
        key: match[2]!,
        dailyQuota: match[3] ? Number(match[3]) : null,
        admin: match[4] === 'admin',
      });
    }
    if (new Set(keys.map(k => k.name)).size !== keys.length) {
      ctx.addIssue({code: 'custom', message: 'key names must be unique'});
    }
    return keys;
  }),
  LOG_LEVEL: optionalText.pipe(
    z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).optional().default('info'),
  ),
  LOG_PROMPTS: booleanFlag(true),
  /**
   * Signs proxy image URLs when API keys are on. Unset: derived from the keys,
   * so every instance agrees and rotating the keys also rotates it.
   */
  URL_SIGNING_SECRET: optionalText.pipe(z.string().min(32, 'must be at least 32 characters').optional()),
  /** Set by Cloud Run functions: the entry point, used in cloudfunctions.net URLs. */
  FUNCTION_TARGET: optionalText,
  /**
   * `true`: X-Forwarded-Proto and X-Forwarded-Host are the nearest proxy's
   * (their last value) and stand for the connection's scheme and Host. The
   * host still has to be one of the function's own.
   */
  TRUST_PROXY: booleanFlag(false),
  /** Set by Cloud Run: the service's name. Its presence means the function runs on Cloud Run. */
  K_SERVICE: optionalText,
  /** The metadata server (host[:port]); only tests and emulators set it. */
  GCE_METADATA_HOST: optionalText.transform(v => v ?? 'metadata.google.internal'),
});

/** Every variable the function reads. */
export const ENV_VARIABLES = Object.keys(EnvSchema.shape) as (keyof typeof EnvSchema.shape)[];

export interface ApiKey {
  name: string;
  key: string;
  /** Images per UTC day, or null for no limit. */
  dailyQuota: number | null;
  /** Sees and touches every caller's jobs, and may run operator tasks. */
  admin: boolean;
}

export interface Config {
  /** How to reach OpenAI: what the provider is built with, less what the composition root wires in. */
  openai: Omit<OpenAIProviderOptions, 'whileWaiting'>;
  /** The model catalogue of this deployment (MODEL_ALIASES and EXTRA_MODELS applied). */
  models: ModelCatalogue;
  defaultModel: string;
  retiredModels: 'replace' | 'reject';
  idempotency: {ttlMs: number; leaseMs: number; claimWindowMs: number};
  storage:
    | {
        kind: 'gcp';
        bucket: string;
        projectId: string | undefined;
        firestoreDatabase: string;
        storageEndpoint: string | undefined;
      }
    | {kind: 'local'; dataDir: string};
  /**
   * How image URLs are made: `signed` V4 URLs, `public` object URLs, or
   * `proxy` through this function's GET /images/:id.
   */
  urls: {
    mode: 'signed' | 'public' | 'proxy';
    signedTtlSeconds: number;
    /** Proxy mode with API keys: the HMAC key that signs /images/:id URLs; null without keys. */
    proxySigningKey: Buffer | null;
  };
  publicBaseUrl: string | undefined;
  /** Whether the nearest proxy's X-Forwarded-Proto and X-Forwarded-Host are believed (TRUST_PROXY). */
  trustProxy: boolean;
  /** On Cloud Run (K_SERVICE set): the service, whose own URLs image links may use. */
  cloudRun: {service: string; projectId: string | undefined; metadataHost: string} | null;
  maxBodyBytes: number;
  /** Largest edit body (images included). */
  maxUploadBytes: number;
  /** Buckets an edit may read gs:// sources from, besides the function's own. */
  editSourceBuckets: string[];
  metadataTimeoutMs: number;
  storageTimeoutMs: number;
  reconcileIntervalMs: number;
  /** Empty: no key check. */
  apiKeys: ApiKey[];
  functionTarget: string | undefined;
  log: {level: string; prompts: boolean};
}

/** Values no log line may show: the OpenAI key and every caller key. */
export function secretValues(config: Config): string[] {
  return [config.openai.apiKey, ...config.apiKeys.map(key => key.key)].filter(
    (value): value is string => typeof value === 'string' && value !== '',
  );
}

/**
 * What can be told of an environment whose configuration is invalid, for the
 * probes: they keep answering, and say what is wrong.
 */
export function describeInvalidEnvironment(env: NodeJS.ProcessEnv): {
  apiKeyConfigured: boolean;
  storage: 'local' | 'gcs';
  metadata: 'local' | 'firestore';
  defaultModel: string;
} {
  const text = (name: string) => env[name]?.trim() || undefined;
  const gcp = text('GCS_BUCKET') !== undefined;
  return {
    apiKeyConfigured: (text('OPENAI_API_KEY') ?? text('OPENAI_API')) !== undefined,
    storage: gcp ? 'gcs' : 'local',
    metadata: gcp ? 'firestore' : 'local',
    defaultModel: text('DEFAULT_MODEL') ?? DEFAULT_MODEL_ID,
  };
}

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`Invalid configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/**
 * The catalogue this environment configures, and whether DEFAULT_MODEL is in
 * it. Checked apart from the schema so that its problems are listed with
 * every other bad variable.
 */
function catalogueOf(env: NodeJS.ProcessEnv): {models?: ModelCatalogue; problems: string[]} {
  const aliases = EnvSchema.shape.MODEL_ALIASES.safeParse(env.MODEL_ALIASES);
  const extras = EnvSchema.shape.EXTRA_MODELS.safeParse(env.EXTRA_MODELS);
  const defaultModel = EnvSchema.shape.DEFAULT_MODEL.safeParse(env.DEFAULT_MODEL);
  if (!aliases.success || !extras.success || !defaultModel.success) return {problems: []};
  let models: ModelCatalogue;
  try {
    models = new ModelCatalogue({
      aliases: Object.fromEntries(aliases.data.map(match => [match[1]!, match[2]!])),
      extraModels: extras.data.map(match => ({id: match[1]!, like: match[2] ?? DEFAULT_MODEL_ID})),
    });
  } catch (error) {
    if (error instanceof CatalogueError)
      return {problems: [`MODEL_ALIASES or EXTRA_MODELS: ${error.message}`]};
    throw error;
  }
  if (!models.get(defaultModel.data)) {
    return {
      problems: [`DEFAULT_MODEL: '${defaultModel.data}' is not a known model; add it with EXTRA_MODELS`],
    };
  }
  return {models, problems: []};
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  const catalogue = catalogueOf(env);
  const problems = [
    ...(parsed.success ? [] : parsed.error.issues.map(issue => `${issue.path.join('.')}: ${issue.message}`)),
    ...catalogue.problems,
  ];
  if (!parsed.success || !catalogue.models) throw new ConfigError(problems);
  const models = catalogue.models;
  const e = parsed.data;
  const gcp = e.GCS_BUCKET !== undefined;
  const urlMode = e.URL_MODE ?? (gcp ? 'signed' : 'proxy');
  if (!gcp && urlMode !== 'proxy') {
    throw new ConfigError([
      `URL_MODE: '${urlMode}' needs GCS_BUCKET; local storage serves images through the function (proxy)`,
    ]);
  }
  return {
    openai: {
      apiKey: e.OPENAI_API_KEY ?? e.OPENAI_API,
      organization: e.OPENAI_ORGANIZATION ?? e.OPENAI_ORG_ID,
      project: e.OPENAI_PROJECT,
      baseURL: e.OPENAI_BASE_URL,
      timeoutMs: e.UPSTREAM_TIMEOUT_SECONDS * 1000,
      maxRetries: e.UPSTREAM_MAX_RETRIES,
      maxConcurrentDecodes: e.MAX_CONCURRENT_DECODES,
    },
    models,
    defaultModel: e.DEFAULT_MODEL,
    retiredModels: e.RETIRED_MODELS,
    idempotency: {
      ttlMs: e.IDEMPOTENCY_TTL_HOURS * 3600_000,
      // A run holds its key for as long as it may take, plus a margin for storing.
      leaseMs: (e.UPSTREAM_TIMEOUT_SECONDS + 60) * 1000,
      // Between a claim and its job record come at most a quota reservation, the job's
      // first write and reading an edit's inputs, each bounded by its store's deadline.
      claimWindowMs: (2 * e.FIRESTORE_TIMEOUT_SECONDS + e.STORAGE_TIMEOUT_SECONDS + 30) * 1000,
    },
    storage: e.GCS_BUCKET
      ? {
          kind: 'gcp',
          bucket: e.GCS_BUCKET,
          projectId: e.GOOGLE_CLOUD_PROJECT ?? e.GCLOUD_PROJECT,
          firestoreDatabase: e.FIRESTORE_DATABASE ?? '(default)',
          storageEndpoint: e.STORAGE_EMULATOR_HOST?.replace(/^(?!https?:\/\/)/, 'http://'),
        }
      : {kind: 'local', dataDir: e.DATA_DIR ?? './data'},
    urls: {
      mode: urlMode,
      signedTtlSeconds: e.SIGNED_URL_TTL_SECONDS,
      proxySigningKey:
        e.API_KEYS.length === 0
          ? null
          : createHash('sha256')
              .update(
                `imagegen proxy URLs\n${e.URL_SIGNING_SECRET ?? e.API_KEYS.map(k => `${k.name}:${k.key}`).join(',')}`,
              )
              .digest(),
    },
    publicBaseUrl: e.PUBLIC_BASE_URL?.replace(/\/+$/, ''),
    trustProxy: e.TRUST_PROXY,
    cloudRun: e.K_SERVICE
      ? {
          service: e.K_SERVICE,
          projectId: e.GOOGLE_CLOUD_PROJECT ?? e.GCLOUD_PROJECT,
          metadataHost: e.GCE_METADATA_HOST,
        }
      : null,
    maxBodyBytes: e.MAX_BODY_BYTES,
    maxUploadBytes: e.MAX_UPLOAD_BYTES,
    editSourceBuckets: e.EDIT_SOURCE_BUCKETS,
    metadataTimeoutMs: e.FIRESTORE_TIMEOUT_SECONDS * 1000,
    storageTimeoutMs: e.STORAGE_TIMEOUT_SECONDS * 1000,
    reconcileIntervalMs: e.RECONCILE_INTERVAL_SECONDS * 1000,
    apiKeys: e.API_KEYS,
    functionTarget: e.FUNCTION_TARGET,
    log: {level: e.LOG_LEVEL, prompts: e.LOG_PROMPTS},
  };
}

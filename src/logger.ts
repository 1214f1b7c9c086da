import pino, {type Logger} from 'pino';
import {REDACTED, replaceAll, scrubSecrets} from './secrets';

export type {Logger};

/** pino level → Cloud Logging severity. */
const SEVERITY: Record<string, string> = {
  trace: 'DEBUG',
  debug: 'DEBUG',
  info: 'INFO',
  warn: 'WARNING',
  error: 'ERROR',
  fatal: 'CRITICAL',
};

/** The secrets each logger hides, so its children (which may add texts to hide) hide them too. */
const secretsOf = new WeakMap<Logger, readonly string[]>();

/** Hides configured secrets, key-shaped strings, and the given texts (as sent, or JSON-escaped). */
function textScrubber(secrets: readonly string[], hidden: readonly string[]): (text: string) => string {
  return text => {
    let out = scrubSecrets(text, secrets);
    for (const value of hidden) {
      out = replaceAll(out, value, '[prompt]');
      out = replaceAll(out, JSON.stringify(value).slice(1, -1), '[prompt]');
    }
    return out;
  };
}

/** A copy of `value` with every string scrubbed, however deep (within reason). */
function scrubDeep(
  value: unknown,
  scrub: (text: string) => string,
  depth = 0,
  seen = new Set<object>(),
): unknown {
  if (typeof value === 'string') return scrub(value);
  if (typeof value !== 'object' || value === null) return value;
  if (depth > 8 || seen.has(value)) return '[omitted]';
  seen.add(value);
  if (Array.isArray(value)) return value.map(item => scrubDeep(item, scrub, depth + 1, seen));
  const toJSON = (value as {toJSON?: unknown}).toJSON;
  if (typeof toJSON === 'function') return scrubDeep(toJSON.call(value), scrub, depth + 1, seen);
  const copy: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) copy[key] = scrubDeep(item, scrub, depth + 1, seen);
  return copy;
}

/**
 * The `err` serializer: pino's own (message and stack with every cause, the
 * error's own fields), then every string in it scrubbed. Upstream errors can
 * quote what was sent: the Authorization header, the prompt.
 */
function errorSerializer(secrets: readonly string[], hidden: readonly string[]): (err: unknown) => unknown {
  const scrub = textScrubber(secrets, hidden);
  return err => scrubDeep(pino.stdSerializers.err(err as Error), scrub);
}

/**
 * JSON lines on stdout in the shape Cloud Logging parses: `severity` and
 * `message` are lifted into the entry, the rest becomes its jsonPayload.
 * `secrets` (the OpenAI key, the callers' keys) never appear in an error, its
 * causes or its stack; neither does anything shaped like an OpenAI key.
 */
export function createLogger(
  level: string,
  destination?: pino.DestinationStream,
  secrets: readonly string[] = [],
): Logger {
  const logger = pino(
    {
      level,
      messageKey: 'message',
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: label => ({severity: SEVERITY[label] ?? 'DEFAULT'}),
      },
      serializers: {err: errorSerializer(secrets, [])},
      redact: {
        // Defence in depth: nothing should log these, but if something does, hide them.
        paths: [
          'apiKey',
          '*.apiKey',
          'headers.authorization',
          'headers["x-api-key"]',
          'headers.cookie',
          '*.headers.authorization',
          '*.headers["x-api-key"]',
          '*.headers.cookie',
        ],
        censor: REDACTED,
      },
    },
    destination,
  );
  secretsOf.set(logger, secrets);
  return logger;
}

/**
 * A child logger whose errors also hide `hidden`: the prompts of a request
 * when LOG_PROMPTS=false. The list is read when a line is written, so texts
 * added once the body is parsed are hidden from then on.
 */
export function childHiding(
  logger: Logger,
  bindings: Record<string, unknown>,
  hidden: readonly string[],
): Logger {
  const secrets = secretsOf.get(logger) ?? [];
  const child = logger.child(bindings, {serializers: {err: errorSerializer(secrets, hidden)}});
  secretsOf.set(child, secrets);
  return child;
}

/** A request URL as logged: a signed image link's signature is a credential, so it is hidden. */
export function urlForLog(url: string | undefined): string | undefined {
  return url?.replace(/([?&]signature=)[^&#]*/gi, `$1${REDACTED}`);
}

/** Trace fields for a request, from X-Cloud-Trace-Context or W3C traceparent. */
export function traceFields(
  headers: Record<string, string | string[] | undefined>,
  projectId: string | undefined,
): Record<string, string | boolean> {
  const header = (name: string) => {
    const value = headers[name];
    return Array.isArray(value) ? value[0] : value;
  };
  let traceId: string | undefined;
  let spanId: string | undefined;
  let sampled: boolean | undefined;
  const cloud = header('x-cloud-trace-context');
  const cloudMatch = cloud ? /^([0-9a-f]{32})(?:\/(\d+))?(?:;o=([01]))?/i.exec(cloud) : null;
  if (cloudMatch) {
    traceId = cloudMatch[1];
    spanId = cloudMatch[2] ? BigInt(cloudMatch[2]).toString(16).padStart(16, '0') : undefined;
    sampled = cloudMatch[3] === undefined ? undefined : cloudMatch[3] === '1';
  } else {
    const parent = header('traceparent');
    const w3c = parent ? /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/i.exec(parent) : null;
    if (w3c) {
      traceId = w3c[1];
      spanId = w3c[2];
      sampled = (parseInt(w3c[3] ?? '0', 16) & 1) === 1;
    }
  }
  if (!traceId) return {};
  const fields: Record<string, string | boolean> = {
    'logging.googleapis.com/trace': projectId ? `projects/${projectId}/traces/${traceId}` : traceId,
  };
  if (spanId) fields['logging.googleapis.com/spanId'] = spanId;
  if (sampled !== undefined) fields['logging.googleapis.com/trace_sampled'] = sampled;
  return fields;
}

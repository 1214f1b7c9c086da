import pino, {type Logger} from 'pino';

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

/**
 * JSON lines on stdout in the shape Cloud Logging parses: `severity` and
 * `message` are lifted into the entry, the rest becomes its jsonPayload.
 */
export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      messageKey: 'message',
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: {
        level: label => ({severity: SEVERITY[label] ?? 'DEFAULT'}),
      },
      redact: {
        // Defence in depth: nothing should log these, but if something does, hide them.
        paths: [
          'apiKey',
          '*.apiKey',
          'headers.authorization',
          '*.headers.authorization',
          'headers["x-api-key"]',
        ],
        censor: '[redacted]',
      },
    },
    destination,
  );
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

import type {z} from 'zod';

/**
 * Errors the use cases raise. Each carries a stable code; the API layer alone
 * decides which HTTP status a code maps to (api/responses.ts).
 */
export const ERROR_CODES = [
  'BAD_REQUEST',
  'INVALID_JSON',
  'VALIDATION_ERROR',
  'UNSUPPORTED_MEDIA_TYPE',
  'PAYLOAD_TOO_LARGE',
  'HEADERS_TOO_LARGE',
  'REQUEST_TIMEOUT',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'METHOD_NOT_ALLOWED',
  'IMAGE_NOT_FOUND',
  'MODEL_RETIRED',
  'MODEL_UNAVAILABLE',
  'FEATURE_NOT_AVAILABLE',
  'JOB_NOT_FOUND',
  'REQUEST_IN_PROGRESS',
  'IDEMPOTENCY_KEY_REUSED',
  'CONTENT_POLICY_VIOLATION',
  'RATE_LIMIT_EXCEEDED',
  'QUOTA_EXCEEDED',
  'UPSTREAM_ERROR',
  'UPSTREAM_TIMEOUT',
  'STORAGE_ERROR',
  'JOB_OUTCOME_UNKNOWN',
  'JOB_RUNNING',
  'SERVICE_ERROR',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** One problem with one field of a request, named as the caller sent it. */
export interface FieldProblem {
  field: string;
  message: string;
}

export interface AppErrorOptions {
  /** Seconds the caller should wait before retrying (rate limits). */
  retryAfterSeconds?: number;
  /** Machine-readable detail, safe to show to the caller. */
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly retryAfterSeconds: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: AppErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : {cause: options.cause});
    this.name = 'AppError';
    this.code = code;
    this.retryAfterSeconds = options.retryAfterSeconds;
    this.details = options.details;
  }
}

export function isAppError(error: unknown): error is AppError {
  return error instanceof AppError;
}

/**
 * The one shape of a validation error: the message lists every problem, and
 * `details.fields` carries them for programs. `extra` adds context (upstream ids).
 */
export function validationError(problems: FieldProblem[], extra: Record<string, unknown> = {}): AppError {
  return new AppError('VALIDATION_ERROR', problems.map(p => `${p.field}: ${p.message}`).join('; '), {
    details: {fields: problems, ...extra},
  });
}

/** Turns zod's issues into field problems: one per field, with the allowed values where useful. */
export function zodProblems(error: z.ZodError): FieldProblem[] {
  return error.issues.flatMap(issue => {
    const path = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map(key => ({field: [...path, key].join('.'), message: 'unknown field'}));
    }
    let message = issue.message;
    if (issue.code === 'invalid_key') {
      message = issue.issues[0]?.message ?? message;
    } else if (issue.code === 'invalid_value' && 'values' in issue) {
      message = `must be one of: ${issue.values.map(String).join(', ')}`;
    }
    return [{field: path.join('.') || '(body)', message}];
  });
}

/**
 * A store could not say whether a write took effect (a deadline passed, the
 * connection broke): it may have, now or later. Callers settle it by reading,
 * or by writing again, never by assuming it failed.
 */
export class OutcomeUnknownError extends Error {
  constructor(message: string, options?: {cause?: unknown}) {
    super(message, options);
    this.name = 'OutcomeUnknownError';
  }
}

export function isOutcomeUnknown(error: unknown): boolean {
  return error instanceof OutcomeUnknownError;
}

/** What a request names does not exist (or is not the caller's to see). */
export function notFound(kind: 'job' | 'image', id: string): AppError {
  return new AppError(
    kind === 'job' ? 'JOB_NOT_FOUND' : 'IMAGE_NOT_FOUND',
    `No ${kind} with id '${id.slice(0, 64)}'`,
  );
}

/** A store failed: say what could not be done; keep the store's own error as the cause. */
export function storageError(message: string, cause: unknown): AppError {
  return isAppError(cause) ? cause : new AppError('STORAGE_ERROR', message, {cause});
}

/** Runs one store call, turning its failure into a STORAGE_ERROR that says what could not be done. */
export async function storageCall<T>(message: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (error) {
    throw storageError(message, error);
  }
}

/**
 * Errors the use cases raise. Each carries a stable code; the HTTP layer alone
 * decides which status a code maps to (see http/error-response.ts).
 */
export const ERROR_CODES = [
  'INVALID_JSON',
  'VALIDATION_ERROR',
  'UNSUPPORTED_MEDIA_TYPE',
  'PAYLOAD_TOO_LARGE',
  'UNAUTHENTICATED',
  'NOT_FOUND',
  'METHOD_NOT_ALLOWED',
  'IMAGE_NOT_FOUND',
  'JOB_NOT_FOUND',
  'REQUEST_IN_PROGRESS',
  'IDEMPOTENCY_KEY_REUSED',
  'CONTENT_POLICY_VIOLATION',
  'RATE_LIMIT_EXCEEDED',
  'QUOTA_EXCEEDED',
  'UPSTREAM_ERROR',
  'UPSTREAM_TIMEOUT',
  'STORAGE_ERROR',
  'SERVICE_ERROR',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

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

import type {ServerResponse} from 'node:http';
import {AppError, isAppError, type ErrorCode} from '../core/errors';

/** The one map from error codes to HTTP statuses. */
export const HTTP_STATUS: Readonly<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400,
  INVALID_JSON: 400,
  VALIDATION_ERROR: 400,
  CONTENT_POLICY_VIOLATION: 400,
  MODEL_RETIRED: 400,
  MODEL_UNAVAILABLE: 400,
  FEATURE_NOT_AVAILABLE: 403,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  IMAGE_NOT_FOUND: 404,
  JOB_NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  REQUEST_IN_PROGRESS: 409,
  IDEMPOTENCY_KEY_REUSED: 422,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  HEADERS_TOO_LARGE: 431,
  RATE_LIMIT_EXCEEDED: 429,
  QUOTA_EXCEEDED: 429,
  SERVICE_ERROR: 500,
  UPSTREAM_ERROR: 502,
  STORAGE_ERROR: 503,
  JOB_OUTCOME_UNKNOWN: 503,
  JOB_RUNNING: 409,
  UPSTREAM_TIMEOUT: 504,
};

export interface ErrorBody {
  error: string;
  status: 'failed';
  code: ErrorCode;
  details?: Record<string, unknown>;
}

/** Anything that is not an AppError is a bug or an outage: say little, log the rest. */
export function toAppError(error: unknown): AppError {
  if (isAppError(error)) return error;
  return new AppError('SERVICE_ERROR', 'Internal error; the request was not completed', {cause: error});
}

export function errorBody(error: AppError): ErrorBody {
  const body: ErrorBody = {error: error.message, status: 'failed', code: error.code};
  if (error.details !== undefined) body.details = error.details;
  return body;
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const payload = JSON.stringify(body);
  res.statusCode = status;
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(payload));
  res.setHeader('Cache-Control', 'no-store');
  res.end(payload);
}

export function sendError(res: ServerResponse, error: AppError, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    // A stream that told its caller of the failure has ended already; anything else is cut short.
    if (!res.writableEnded) res.destroy(error);
    return;
  }
  const extra = {...headers};
  if (error.retryAfterSeconds !== undefined) extra['Retry-After'] = String(error.retryAfterSeconds);
  sendJson(res, HTTP_STATUS[error.code], errorBody(error), extra);
}

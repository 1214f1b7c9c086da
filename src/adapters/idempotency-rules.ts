import type {ClaimOutcome, IdempotencyClaim} from '../ports';

/** An idempotency record as both stores keep it. */
export interface IdempotencyState {
  fingerprint: string;
  jobId: string;
  leaseUntil: Date;
  expiresAt: Date;
  completed: boolean;
}

/**
 * The decision both stores make inside their atomic section, given what is
 * stored under the key (if anything) and whether its job exists.
 * `write` is the state to store, if any.
 */
export function decideClaim(
  existing: IdempotencyState | null,
  jobExists: boolean,
  claim: IdempotencyClaim,
  now: Date,
): {result: ClaimOutcome; write: IdempotencyState | null} {
  const fresh: IdempotencyState = {
    fingerprint: claim.fingerprint,
    jobId: claim.jobId,
    leaseUntil: claim.leaseUntil,
    expiresAt: claim.expiresAt,
    completed: false,
  };
  if (!existing || existing.expiresAt <= now) {
    return {result: {outcome: 'claimed', jobId: claim.jobId, recovered: false}, write: fresh};
  }
  if (existing.fingerprint !== claim.fingerprint) return {result: {outcome: 'mismatch'}, write: null};
  if (existing.completed || jobExists) {
    return {result: {outcome: 'completed', jobId: existing.jobId}, write: null};
  }
  if (existing.leaseUntil > now) {
    return {result: {outcome: 'in_progress', leaseUntil: existing.leaseUntil}, write: null};
  }
  // The run that held the key stopped without finishing: take it over under the same job id.
  return {
    result: {outcome: 'claimed', jobId: existing.jobId, recovered: true},
    write: {...fresh, jobId: existing.jobId},
  };
}

import {createHash, randomUUID} from 'node:crypto';
import {AppError, isAppError, storageCall} from '../errors';
import type {GenerateCommand, ImageReference} from '../generation';
import type {ClaimOutcome, IdempotencyRecord, KeyJobState} from '../ports';
import type {JobRecord, JobStatus} from '../records';
import {ownerOf, type Requester} from '../requester';
import {generateImages, type GenerateDeps, type GenerateOptions} from './generate';
import {resolveEditInputs} from './edit-inputs';
import {reserveDailyQuota} from './quota';
import {settleStoppedJob} from './reconcile';

export interface IdempotencyOptions {
  /** How long a run may take: its job's lease, after which a retry settles what it left. */
  leaseMs: number;
  /**
   * How long a claimed key waits for its job to be recorded before another
   * instance may take it over: a claim whose claimant stopped (or whose commit
   * landed after its caller had given up) blocks its key only this long.
   */
  claimWindowMs: number;
  /** How long a key is remembered. */
  ttlMs: number;
}

export interface GenerateOutcome {
  job: JobRecord;
  /** True when the job was made by an earlier request with the same key. */
  replayed: boolean;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/**
 * What makes two requests "the same": what was asked for, not how it was sent
 * or how it is run (a retry after a model's shutdown runs differently, and is
 * still the same request).
 */
export function fingerprintOf(command: GenerateCommand): string {
  const {prompt, count, requestedModel, requested, metadata, allowPartial, edit} = command;
  // An edit's inputs by what names them, never by their bytes (an upload by its hash).
  const inputs = edit && {
    images: edit.images.map(referenceKey),
    mask: edit.mask ? referenceKey(edit.mask) : null,
    markup: edit.markup ? referenceKey(edit.markup) : null,
  };
  return sha256(
    JSON.stringify(sortedDeep({prompt, count, requestedModel, requested, metadata, allowPartial, inputs})),
  );
}

function referenceKey(ref: ImageReference): string {
  if (ref.kind === 'image_id') return `image:${ref.id}`;
  if (ref.kind === 'gcs_uri') return `gs://${ref.bucket}/${ref.path}`;
  // Hashed as it arrived (see ImageBytes): the bytes are not read again.
  return `sha256:${ref.data.sha256}`;
}

function sortedDeep(value: unknown): unknown {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return value;
  return Object.fromEntries(
    Object.entries(value)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([key, inner]) => [key, sortedDeep(inner)]),
  );
}

/**
 * The decision a store makes inside its atomic section, given what is stored
 * under the key (if anything) and the state of its job. `write` is the record
 * to store, if any.
 */
export function decideClaim(
  existing: IdempotencyRecord | null,
  job: KeyJobState,
  claim: IdempotencyRecord,
  now: Date,
): {result: ClaimOutcome; write: IdempotencyRecord | null} {
  if (!existing || existing.expiresAt <= now) {
    return {result: {outcome: 'claimed', jobId: claim.jobId, recovered: false}, write: claim};
  }
  // This very claim, already written: a repeat of a write whose answer was lost.
  if (existing.jobId === claim.jobId && existing.fingerprint === claim.fingerprint) {
    return {result: {outcome: 'claimed', jobId: claim.jobId, recovered: false}, write: null};
  }
  if (existing.fingerprint !== claim.fingerprint) return {result: {outcome: 'mismatch'}, write: null};
  if (existing.completed || job === 'finished') {
    return {result: {outcome: 'completed', jobId: existing.jobId}, write: null};
  }
  // Its run stopped, but what it paid for may be stored: settled first (completed from its
  // objects, or failed), then claimed again, so a retry never pays for it a second time.
  if (job === 'stopped') return {result: {outcome: 'stopped', jobId: existing.jobId}, write: null};
  // A job's own lease says whether its run is alive; the key's lease only covers the moments
  // before the job is recorded. A failed job frees its key at once, even when freeing it
  // explicitly did not get through.
  if (job === 'running' || (job === 'none' && existing.leaseUntil > now)) {
    return {result: {outcome: 'in_progress', leaseUntil: existing.leaseUntil}, write: null};
  }
  // The run that held the key failed, or stopped before recording its job: run again, as a new job.
  return {result: {outcome: 'claimed', jobId: claim.jobId, recovered: true}, write: claim};
}

/** What a job record means for the idempotency key that points to it, at `now`. */
export function keyJobState(
  job: {status: JobStatus; lease_until: string | null} | null,
  now: Date,
): KeyJobState {
  if (!job) return 'none';
  if (job.status === 'running') {
    const stopped = job.lease_until !== null && Date.parse(job.lease_until) <= now.getTime();
    return stopped ? 'stopped' : 'running';
  }
  return job.status === 'failed' ? 'failed' : 'finished';
}

/**
 * Generation that is safe to retry, and counted against the requester's
 * quota. The first request with a key claims it atomically in the metadata
 * store and runs; a duplicate gets the stored job, waits for the run in this
 * instance, or is told the run is in progress elsewhere. A run that crashed is
 * taken over once its lease runs out, after removing whatever objects it
 * left. OpenAI is called once per completed key.
 */
export class IdempotentGenerator {
  private readonly inflight = new Map<string, {fingerprint: string; run: Promise<JobRecord>}>();

  constructor(
    private readonly deps: GenerateDeps,
    private readonly options: IdempotencyOptions,
  ) {}

  async generate(
    command: GenerateCommand,
    requester: Requester,
    onEvent?: GenerateOptions['onEvent'],
  ): Promise<GenerateOutcome> {
    // Checked before any key is claimed or quota reserved.
    if (!this.deps.provider.configured) {
      throw new AppError(
        'SERVICE_ERROR',
        'OPENAI_API_KEY is not set; the function cannot generate images until it is configured',
      );
    }
    const key = command.idempotencyKey;
    if (key === undefined) {
      return {job: await this.run(command, requester, randomUUID(), onEvent), replayed: false};
    }
    // Keys are per caller: another caller's key is just another key.
    const keyHash = sha256(`${ownerOf(requester) ?? ''}\n${key}`);
    const fingerprint = fingerprintOf(command);

    // Registered before the first await, so duplicates arriving meanwhile join this attempt.
    const local = this.inflight.get(keyHash);
    if (local) {
      if (local.fingerprint !== fingerprint) throw reused();
      return {job: await local.run, replayed: true};
    }
    const attempt = this.claimAndRun(command, requester, keyHash, fingerprint, onEvent);
    const run = attempt.then(outcome => outcome.job);
    // Only duplicates await `run`; without any, its rejection must not go unhandled
    // (the Functions Framework ends the instance on an unhandled rejection).
    run.catch(() => undefined);
    this.inflight.set(keyHash, {fingerprint, run});
    try {
      return await attempt;
    } finally {
      this.inflight.delete(keyHash);
    }
  }

  /**
   * Reserves quota, generates, and gives the quota back if generation fails
   * for certain (a job that may still complete keeps its reservation).
   */
  private async run(
    command: GenerateCommand,
    requester: Requester,
    jobId: string,
    onEvent: GenerateOptions['onEvent'],
  ): Promise<JobRecord> {
    const now = this.deps.now?.() ?? new Date();
    // An edit's inputs are read and checked first: a bad one costs neither quota nor money.
    const inputs = command.edit ? await resolveEditInputs(this.deps, requester, command.edit) : undefined;
    const release = await reserveDailyQuota(this.deps, requester, jobId, command.count, now);
    try {
      return await generateImages(this.deps, command, {
        jobId,
        owner: ownerOf(requester),
        leaseMs: this.options.leaseMs,
        ...(onEvent ? {onEvent} : {}),
        ...(inputs ? {inputs} : {}),
      });
    } catch (error) {
      if (!inDoubt(error)) await release();
      throw error;
    }
  }

  private async claimAndRun(
    command: GenerateCommand,
    requester: Requester,
    keyHash: string,
    fingerprint: string,
    onEvent: GenerateOptions['onEvent'],
  ): Promise<GenerateOutcome> {
    const now = this.deps.now?.() ?? new Date();
    const claim: IdempotencyRecord = {
      fingerprint,
      jobId: randomUUID(),
      leaseUntil: new Date(now.getTime() + Math.min(this.options.claimWindowMs, this.options.leaseMs)),
      expiresAt: new Date(now.getTime() + this.options.ttlMs),
      completed: false,
    };
    let outcome = await this.claim(keyHash, claim, now);
    if (outcome.outcome === 'stopped') {
      await storageCall(
        'Could not settle the stopped run of this key',
        settleStoppedJob(this.deps, outcome.jobId),
      );
      outcome = await this.claim(keyHash, claim, now);
    }

    switch (outcome.outcome) {
      case 'stopped':
        // Settled meanwhile by nobody: another instance holds the job's record (a transaction still open).
        throw new AppError(
          'REQUEST_IN_PROGRESS',
          'A request with this Idempotency-Key is being settled; retry later',
          {
            retryAfterSeconds: 5,
          },
        );
      case 'mismatch':
        throw reused();
      case 'in_progress':
        throw new AppError(
          'REQUEST_IN_PROGRESS',
          'A request with this Idempotency-Key is still running; retry later',
          {
            // Past the claim's window the job is recorded and running: a run takes seconds to minutes.
            retryAfterSeconds:
              outcome.leaseUntil > now
                ? Math.min(30, Math.max(1, Math.ceil((outcome.leaseUntil.getTime() - now.getTime()) / 1000)))
                : 10,
          },
        );
      case 'completed': {
        const job = await storageCall(
          'Could not read the job record',
          this.deps.metadata.getJob(outcome.jobId),
        );
        if (!job) {
          throw new AppError(
            'JOB_NOT_FOUND',
            'The job made under this Idempotency-Key has been deleted; use a new key to generate again',
          );
        }
        return {job, replayed: true};
      }
      case 'claimed':
        return {
          job: await this.runClaimed(command, requester, keyHash, outcome.jobId, onEvent),
          replayed: false,
        };
    }
  }

  private claim(keyHash: string, claim: IdempotencyRecord, now: Date) {
    return storageCall(
      'Could not record the idempotency key',
      this.deps.metadata.claimIdempotencyKey(keyHash, claim, now),
    );
  }

  private async runClaimed(
    command: GenerateCommand,
    requester: Requester,
    keyHash: string,
    jobId: string,
    onEvent: GenerateOptions['onEvent'],
  ): Promise<JobRecord> {
    try {
      const job = await this.run(command, requester, jobId, onEvent);
      // The job record already makes the key replay; this only survives a later delete of the job.
      await this.deps.metadata.completeIdempotencyKey(keyHash, jobId).catch(() => undefined);
      return job;
    } catch (error) {
      // A job that may still complete keeps its key: a retry waits for it, then replays it.
      // A failed job frees its key even when this release does not get through (see decideClaim).
      if (!inDoubt(error))
        await this.deps.metadata.releaseIdempotencyKey(keyHash, jobId).catch(() => undefined);
      throw error;
    }
  }
}

/** A job whose outcome is not known yet: it may still complete. */
function inDoubt(error: unknown): boolean {
  return isAppError(error) && error.code === 'JOB_OUTCOME_UNKNOWN';
}

function reused(): AppError {
  return new AppError(
    'IDEMPOTENCY_KEY_REUSED',
    'This Idempotency-Key was used for a request with different parameters; use a new key',
  );
}

import {createHash, randomUUID} from 'node:crypto';
import {AppError} from '../errors';
import type {GenerateCommand} from '../domain/generate-request';
import type {JobRecord} from '../domain/records';
import {generateImages, jobPrefix, removeObjects, storageError, type GenerateDeps} from './generate';
import type {ReleaseQuota} from './quota';

/** Runs just before images are generated (not on replays); its result undoes it if generation fails. */
export type BeforeGenerate = () => Promise<ReleaseQuota>;

export interface IdempotencyOptions {
  /** How long a run holds its key before another instance may take it over. */
  leaseMs: number;
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

/** What makes two requests "the same": every parameter, not how it was sent. */
function fingerprintOf(command: GenerateCommand): string {
  const {idempotencyKey: _key, source: _source, metadata, ...rest} = command;
  const sortedMetadata = Object.fromEntries(Object.entries(metadata).sort(([a], [b]) => (a < b ? -1 : 1)));
  const sorted = Object.fromEntries(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : 1)));
  return sha256(JSON.stringify({...sorted, metadata: sortedMetadata}));
}

/**
 * Generation that is safe to retry. The first request with a key claims it
 * atomically in the metadata store and runs; a duplicate gets the stored job,
 * waits for the run in this instance, or is told the run is in progress
 * elsewhere. A run that crashed is taken over once its lease runs out, after
 * removing whatever objects it left. OpenAI is called once per completed key.
 */
export class IdempotentGenerator {
  private readonly inflight = new Map<string, {fingerprint: string; run: Promise<JobRecord>}>();

  constructor(
    private readonly deps: GenerateDeps,
    private readonly options: IdempotencyOptions,
  ) {}

  async generate(command: GenerateCommand, beforeGenerate?: BeforeGenerate): Promise<GenerateOutcome> {
    // Checked before any key is claimed or quota reserved.
    if (!this.deps.provider.configured) {
      throw new AppError(
        'SERVICE_ERROR',
        'OPENAI_API_KEY is not set; the function cannot generate images until it is configured',
      );
    }
    const key = command.idempotencyKey;
    if (key === undefined) {
      return {
        job: await this.withReservation(beforeGenerate, () => generateImages(this.deps, command)),
        replayed: false,
      };
    }
    const keyHash = sha256(key);
    const fingerprint = fingerprintOf(command);

    // Registered before the first await, so duplicates arriving meanwhile join this attempt.
    const local = this.inflight.get(keyHash);
    if (local) {
      if (local.fingerprint !== fingerprint) throw reused();
      return {job: await local.run, replayed: true};
    }
    const attempt = this.claimAndRun(command, keyHash, fingerprint, beforeGenerate);
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

  private async withReservation(
    beforeGenerate: BeforeGenerate | undefined,
    run: () => Promise<JobRecord>,
  ): Promise<JobRecord> {
    const release = beforeGenerate ? await beforeGenerate() : undefined;
    try {
      return await run();
    } catch (error) {
      await release?.();
      throw error;
    }
  }

  private async claimAndRun(
    command: GenerateCommand,
    keyHash: string,
    fingerprint: string,
    beforeGenerate: BeforeGenerate | undefined,
  ): Promise<GenerateOutcome> {
    const now = this.deps.now?.() ?? new Date();
    const outcome = await this.deps.metadata
      .claimIdempotencyKey(
        {
          keyHash,
          fingerprint,
          jobId: randomUUID(),
          leaseUntil: new Date(now.getTime() + this.options.leaseMs),
          expiresAt: new Date(now.getTime() + this.options.ttlMs),
        },
        now,
      )
      .catch(error => {
        throw storageError('Could not record the idempotency key', error);
      });

    switch (outcome.outcome) {
      case 'mismatch':
        throw reused();
      case 'in_progress':
        throw new AppError(
          'REQUEST_IN_PROGRESS',
          'A request with this Idempotency-Key is still running; retry later',
          {
            retryAfterSeconds: Math.min(
              30,
              Math.max(1, Math.ceil((outcome.leaseUntil.getTime() - now.getTime()) / 1000)),
            ),
          },
        );
      case 'completed': {
        const job = await this.deps.metadata.getJob(outcome.jobId).catch(error => {
          throw storageError('Could not read the job record', error);
        });
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
          job: await this.runClaimed(command, keyHash, outcome.jobId, outcome.recovered, beforeGenerate),
          replayed: false,
        };
    }
  }

  private async runClaimed(
    command: GenerateCommand,
    keyHash: string,
    jobId: string,
    recovered: boolean,
    beforeGenerate: BeforeGenerate | undefined,
  ): Promise<JobRecord> {
    try {
      if (recovered) {
        // A crashed run may have stored some images before it stopped.
        await removeObjects(this.deps.images, await this.deps.images.list(jobPrefix(jobId)));
      }
      const job = await this.withReservation(beforeGenerate, () =>
        generateImages(this.deps, command, {jobId}),
      );
      // The job record already makes the key replay; this only survives a later delete of the job.
      await this.deps.metadata.completeIdempotencyKey(keyHash, jobId).catch(() => undefined);
      return job;
    } catch (error) {
      await this.deps.metadata.releaseIdempotencyKey(keyHash, jobId).catch(() => undefined);
      throw error;
    }
  }
}

function reused(): AppError {
  return new AppError(
    'IDEMPOTENCY_KEY_REUSED',
    'This Idempotency-Key was used for a request with different parameters; use a new key',
  );
}

import {AppError, isOutcomeUnknown, storageError} from '../errors';
import type {MetadataStore, QuotaReservation} from '../ports';
import type {Requester} from '../requester';

/** Gives a reservation back when the generation it was for fails. */
export type ReleaseQuota = () => Promise<void>;

const NOTHING_TO_RELEASE: ReleaseQuota = async () => undefined;

/**
 * Reserves `images` of the requester's daily quota (UTC days) for one job,
 * before any upstream call, atomically in the metadata store, so concurrent
 * requests on many instances can never pass the limit together. Requesters
 * without a quota reserve nothing.
 *
 * A reservation is recorded under its job id, so sending it again never
 * counts twice: a reservation whose outcome is unknown is simply sent again.
 * Giving it back is just as safe to repeat, and what a failed give-back
 * leaves, the reconciler gives back later.
 */
export async function reserveDailyQuota(
  stores: {readonly metadata: MetadataStore},
  requester: Requester,
  jobId: string,
  images: number,
  now: Date = new Date(),
): Promise<ReleaseQuota> {
  if (requester.kind !== 'api-key' || requester.dailyQuota === null) return NOTHING_TO_RELEASE;
  const limit = requester.dailyQuota;
  // Only now: building the store loads its client, which a request without a quota must not wait for.
  const {metadata} = stores;
  const day = now.toISOString().slice(0, 10);
  const reservation: QuotaReservation = {
    subject: requester.name,
    day,
    jobId,
    amount: images,
    createdAt: now.toISOString(),
  };
  const result = await reserveOnce(metadata, reservation, limit).catch(async error => {
    if (!isOutcomeUnknown(error)) throw error;
    // If neither attempt is known to have landed, the reconciler gives back whichever did.
    return reserveOnce(metadata, reservation, limit).catch(again => {
      throw storageError('Could not check the daily quota', again);
    });
  });
  if (!result.ok) {
    const nextDay = Date.parse(`${day}T00:00:00Z`) + 24 * 3600_000;
    throw new AppError(
      'QUOTA_EXCEEDED',
      `Daily quota of ${limit} images reached (${result.used} used today); it resets at 00:00 UTC`,
      {retryAfterSeconds: Math.ceil((nextDay - now.getTime()) / 1000), details: {limit, used: result.used}},
    );
  }
  return () => metadata.releaseQuota(reservation).catch(() => undefined);
}

async function reserveOnce(metadata: MetadataStore, reservation: QuotaReservation, limit: number) {
  try {
    return await metadata.reserveQuota(reservation, limit);
  } catch (error) {
    if (isOutcomeUnknown(error)) throw error;
    throw storageError('Could not check the daily quota', error);
  }
}

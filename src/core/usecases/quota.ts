import {AppError, storageCall} from '../errors';
import type {MetadataStore} from '../ports';
import type {Requester} from '../requester';

/** Gives a reservation back when the generation it was for fails. */
export type ReleaseQuota = () => Promise<void>;

const NOTHING_TO_RELEASE: ReleaseQuota = async () => undefined;

/**
 * Reserves `images` of the requester's daily quota (UTC days) before any
 * upstream call, atomically in the metadata store, so concurrent requests on
 * many instances can never pass the limit together. Requesters without a
 * quota reserve nothing.
 */
export async function reserveDailyQuota(
  stores: {readonly metadata: MetadataStore},
  requester: Requester,
  images: number,
  now: Date = new Date(),
): Promise<ReleaseQuota> {
  if (requester.kind !== 'api-key' || requester.dailyQuota === null) return NOTHING_TO_RELEASE;
  const {name, dailyQuota: limit} = requester;
  // Only now: building the store loads its client, which a request without a quota must not wait for.
  const {metadata} = stores;
  const day = now.toISOString().slice(0, 10);
  const result = await storageCall(
    'Could not check the daily quota',
    metadata.reserveQuota(name, day, images, limit),
  );
  if (!result.ok) {
    const nextDay = Date.parse(`${day}T00:00:00Z`) + 24 * 3600_000;
    throw new AppError(
      'QUOTA_EXCEEDED',
      `Daily quota of ${limit} images reached (${result.used} used today); it resets at 00:00 UTC`,
      {retryAfterSeconds: Math.ceil((nextDay - now.getTime()) / 1000), details: {limit, used: result.used}},
    );
  }
  return () => metadata.releaseQuota(name, day, images).catch(() => undefined);
}

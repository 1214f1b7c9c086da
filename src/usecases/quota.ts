import {AppError} from '../errors';
import type {MetadataStore} from '../ports';
import {storageError} from './generate';

/** Gives a reservation back when the generation it was for fails. */
export type ReleaseQuota = () => Promise<void>;

/**
 * Reserves `images` of a caller's daily quota (UTC days) before any upstream
 * call, atomically in the metadata store, so concurrent requests on many
 * instances can never pass the limit together.
 */
export async function reserveDailyQuota(
  metadata: MetadataStore,
  subject: string,
  limit: number,
  images: number,
  now: Date = new Date(),
): Promise<ReleaseQuota> {
  const day = now.toISOString().slice(0, 10);
  const result = await metadata.reserveQuota(subject, day, images, limit).catch(error => {
    throw storageError('Could not check the daily quota', error);
  });
  if (!result.ok) {
    const nextDay = Date.parse(`${day}T00:00:00Z`) + 24 * 3600_000;
    throw new AppError(
      'QUOTA_EXCEEDED',
      `Daily quota of ${limit} images reached (${result.used} used today); it resets at 00:00 UTC`,
      {retryAfterSeconds: Math.ceil((nextDay - now.getTime()) / 1000), details: {limit, used: result.used}},
    );
  }
  return () => metadata.releaseQuota(subject, day, images).catch(() => undefined);
}

import type {JobRecord} from './records';
import type {JobCursor, JobQuery} from './ports';

/** Newest first; equal timestamps ordered by id, descending. Both stores use this order. */
export function compareNewestFirst(
  a: {created_at: string; id: string},
  b: {created_at: string; id: string},
): number {
  if (a.created_at !== b.created_at) return a.created_at < b.created_at ? 1 : -1;
  return a.id === b.id ? 0 : a.id < b.id ? 1 : -1;
}

function isAfter(job: JobRecord, cursor: JobCursor): boolean {
  return compareNewestFirst(job, {created_at: cursor.createdAt, id: cursor.id}) > 0;
}

export function matchesQuery(job: JobRecord, query: JobQuery): boolean {
  if (query.after && !isAfter(job, query.after)) return false;
  if (query.status && job.status !== query.status) return false;
  if (query.owner !== undefined && job.owner !== query.owner) return false;
  if (query.source && job.source !== query.source) return false;
  if (query.metadata && job.metadata[query.metadata.key] !== query.metadata.value) return false;
  return true;
}

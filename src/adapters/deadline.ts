import {OutcomeUnknownError} from '../core/errors';

export interface DeadlineOptions<T> {
  /** The store's name, for messages. */
  name: string;
  /** Methods that only read: when they fail, nothing changed. */
  reads: ReadonlySet<keyof T>;
  /** Methods that change the store. Any other method is passed through as it is. */
  writes: ReadonlySet<keyof T>;
  /** Whether a write's error leaves its outcome open (the request got out, its answer did not come back). */
  outcomeUnknown(error: unknown): boolean;
}

/**
 * Gives every call to a store a deadline. The Google clients wait for an
 * unreachable backend without one (the Storage client's own timeout does
 * nothing on Node), and an outage must end in an error the caller sees, not
 * in a request held until the function times out. A write that runs out of
 * time, or fails in a way that leaves its outcome open, is an
 * OutcomeUnknownError: it may still land, so callers settle it by reading or
 * by repeating it, never by assuming it failed.
 */
export function withDeadlines<T extends object>(store: T, ms: number, options: DeadlineOptions<T>): T {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      const write = options.writes.has(property as keyof T);
      if (!write && !options.reads.has(property as keyof T)) return value.bind(target);
      const what = `${options.name}.${String(property)}`;
      return (...args: unknown[]) => {
        const work = Promise.resolve(value.apply(target, args));
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            const message = `The ${options.name} did not answer within ${ms} ms (${what})`;
            reject(write ? new OutcomeUnknownError(message) : new Error(message));
          }, ms);
        });
        const answered = write
          ? work.catch(error => {
              if (!options.outcomeUnknown(error)) throw error;
              throw new OutcomeUnknownError(`A write may or may not have landed (${what})`, {cause: error});
            })
          : work;
        return Promise.race([answered, expired]).finally(() => clearTimeout(timer));
      };
    },
  });
}

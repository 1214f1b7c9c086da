import type {MetadataStore} from '../../core/ports';

function withDeadline<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`The metadata store did not answer within ${ms} ms (${what})`)),
      ms,
    );
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}

/**
 * Gives every call to a metadata store a deadline. The Firestore client waits
 * for an unreachable backend without one, and an outage must end in an error
 * the caller sees, not in a request held until the function times out.
 */
export function withDeadlines(store: MetadataStore, ms: number): MetadataStore {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) =>
        withDeadline(Promise.resolve(value.apply(target, args)), ms, String(property));
    },
  });
}

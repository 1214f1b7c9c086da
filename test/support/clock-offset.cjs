// Preloaded into a function process (NODE_OPTIONS=--require) to move its wall
// clock forward by TEST_CLOCK_OFFSET_MS, so that the process acts as an
// instance running that much later: past the leases of the runs before it.
// Timers run on a monotonic clock and are not moved.
'use strict';

const offset = Number(process.env.TEST_CLOCK_OFFSET_MS ?? 0);
if (!Number.isFinite(offset)) throw new Error(`TEST_CLOCK_OFFSET_MS is not a number: ${offset}`);
if (offset !== 0) {
  const RealDate = Date;
  const shiftedNow = () => RealDate.now() + offset;
  globalThis.Date = new Proxy(RealDate, {
    construct(target, args, newTarget) {
      return Reflect.construct(target, args.length === 0 ? [shiftedNow()] : args, newTarget);
    },
    // Date() called without new gives the current time as a string.
    apply() {
      return new RealDate(shiftedNow()).toString();
    },
    get(target, property, receiver) {
      return property === 'now' ? shiftedNow : Reflect.get(target, property, receiver);
    },
  });
}

/** Runs at most `size` tasks at once; the rest wait in arrival order. */
export class Limiter {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly size: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await task();
    } finally {
      release();
    }
  }

  /** Takes a place, waiting for one if need be; the function returned gives it back (once). */
  async acquire(): Promise<() => void> {
    if (this.running >= this.size) await new Promise<void>(resolve => this.waiting.push(resolve));
    else this.running++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    };
  }
}

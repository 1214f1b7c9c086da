/**
 * Hiding secrets in text that leaves the process: log lines, and the messages
 * of upstream errors, which reach the caller and the stored job.
 */

/** Anything shaped like an OpenAI key (sk-..., sk-proj-..., sk-svcacct-...). */
const OPENAI_KEY_SHAPE = /\bsk-[A-Za-z0-9][A-Za-z0-9_-]{15,}/g;
/** Values shorter than this are not searched for: they would blank out ordinary words. */
const MIN_SECRET_LENGTH = 8;
export const REDACTED = '[redacted]';

export function replaceAll(text: string, value: string, by: string): string {
  return value.length > 0 && text.includes(value) ? text.split(value).join(by) : text;
}

/** `text` without the given secrets (as sent, or JSON-escaped) and without anything key-shaped. */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length < MIN_SECRET_LENGTH) continue;
    out = replaceAll(out, secret, REDACTED);
    out = replaceAll(out, JSON.stringify(secret).slice(1, -1), REDACTED);
  }
  return out.replace(OPENAI_KEY_SHAPE, REDACTED);
}

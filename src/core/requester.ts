/** Who a request comes from, as far as the function knows. */
export type Requester =
  /** A route open to everyone (probes, the API description): nobody was asked. */
  | {kind: 'public'}
  /**
   * No API keys are configured: IAM stands in front of the function. `email`
   * is the caller's, from the ID token Cloud Run verified, when it carries one.
   */
  | {kind: 'iam'; email: string | null}
  /** A caller that presented one of the configured API keys. */
  | {kind: 'api-key'; name: string; admin: boolean; dailyQuota: number | null}
  /**
   * Someone holding a URL this function signed for one image (a browser's
   * <img>); `jobId` is the image's job, signed with it (null in a URL signed
   * before links named their job).
   */
  | {kind: 'signed-url'; imageId: string; jobId: string | null};

/** The owner recorded on what a request makes: the key's name, or the IAM caller's email. */
export function ownerOf(requester: Requester): string | null {
  if (requester.kind === 'api-key') return requester.name;
  return requester.kind === 'iam' ? requester.email : null;
}

/**
 * Whose jobs a requester may see and touch: only its own with an API key
 * (unless it is an admin); every job behind IAM, where the owner is a label.
 * Undefined means everyone's.
 */
export function visibleOwner(requester: Requester): string | undefined {
  return requester.kind === 'api-key' && !requester.admin ? requester.name : undefined;
}

/** Whether the requester may see a job (or its images) owned by `owner`. */
export function mayAccess(requester: Requester, owner: string | null): boolean {
  if (requester.kind === 'public') return false;
  const only = visibleOwner(requester);
  return only === undefined || owner === only;
}

/** Operator work (the reconciler): an admin key, or any IAM invoker when no keys are configured. */
export function isOperator(requester: Requester): boolean {
  return requester.kind === 'iam' || (requester.kind === 'api-key' && requester.admin);
}

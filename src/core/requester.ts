/** Who a request comes from, as far as the function knows. */
export type Requester =
  /** A route open to everyone (probes, the API description): nobody was asked. */
  | {kind: 'public'}
  /** No API keys are configured: IAM stands in front of the function. */
  | {kind: 'iam'}
  /** A caller that presented one of the configured API keys. */
  | {kind: 'api-key'; name: string; dailyQuota: number | null};

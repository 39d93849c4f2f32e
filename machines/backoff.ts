/**
 * Backoff, in one place: the whole wait before the next attempt, jitter included. Pure:
 * the random draw comes in as a number in [0, 1), so a test fixes it and a record's
 * `retryAt` is exactly when the retry happens.
 */

export interface RetryPolicy {
  /** Total attempts, the first included. */
  readonly attempts: number;
  readonly backoff: "fixed" | "linear" | "exponential";
  /** Base delay in milliseconds. */
  readonly delay: number;
  /** Cap on the delay before jitter, in milliseconds. */
  readonly maxDelay: number;
  /** 0..1: the share of the delay that is randomised (±half of it). */
  readonly jitter: number;
}

export const BackoffKinds = ["fixed", "linear", "exponential"] as const;

/** The delay after attempt `attempt` failed, before jitter. */
export const backoffDelay = (retry: RetryPolicy, attempt: number): number => {
  const n = Math.max(1, attempt);
  const raw =
    retry.backoff === "fixed" ? retry.delay : retry.backoff === "linear" ? retry.delay * n : retry.delay * 2 ** (n - 1);
  return Math.min(raw, retry.maxDelay);
};

/**
 * The wait after attempt `attempt` failed: the base delay spread by `jitter` around itself,
 * `random` in [0, 1) (0.5 gives the base delay exactly).
 */
export const retryWait = (retry: RetryPolicy, attempt: number, random: number): number =>
  Math.round(backoffDelay(retry, attempt) * (1 - retry.jitter / 2 + random * retry.jitter));

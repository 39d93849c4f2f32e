/**
 * The one retry policy for NATS writes: through a reconnect or a leader election, a
 * write that got no answer (or a transient refusal) is tried again, exponentially from
 * 100 ms and at most 2 s apart, up to 20 times (half a minute of waiting, two minutes when
 * every try also waits out its 5 s PubAck timeout), never once the connection is closed.
 * A submit's work message is retried on the same schedule for a time instead
 * (`withRetryFor`, the connection's `submitRetryFor`).
 */
import { Duration, Effect, Schedule } from "effect";
import type { NatsConnection } from "@nats-io/transport-node";
import { JetStreamApiError } from "@nats-io/jetstream";

const natsSchedule = Schedule.exponential("100 millis").pipe(
  Schedule.modifyDelay(({ duration }) => Effect.succeed(Duration.min(duration, Duration.seconds(2)))),
);

/** Retry `effect` while `transient` says its failure may pass. */
export const retryNats = <A, E>(
  nc: NatsConnection,
  effect: Effect.Effect<A, E>,
  transient: (e: E) => boolean,
  /** Called after each failed try (an attempt extends its lease meanwhile). */
  onRetry?: () => void,
  times = RETRIES,
): Effect.Effect<A, E> =>
  Effect.retry(onRetry === undefined ? effect : Effect.tapError(effect, () => Effect.sync(onRetry)), {
    schedule: natsSchedule,
    times,
    while: (e: E) => transient(e) && !nc.isClosed(),
  });

const RETRIES = 20;

/**
 * The retries of a write whose first try (made outside this schedule, the hot path's one
 * step) failed: after the schedule's first wait, the other 19 tries on it.
 */
export const retryAfterFirst = <A, E>(nc: NatsConnection, effect: Effect.Effect<A, E>, transient: (e: E) => boolean, onRetry?: () => void) =>
  Effect.andThen(Effect.sleep(FIRST_WAIT), retryNats(nc, effect, transient, onRetry, RETRIES - 1));

const FIRST_WAIT = Duration.millis(100);

/**
 * `attempt` once as a plain promise (the hot path pays for no fiber), then, after a
 * transient failure, again on the same schedule until `forMs` have passed since the first
 * try (a submit through a leader election, `submitRetryFor`); a try under way at the bound
 * is let finish.
 */
export const withRetryFor = <A, E>(nc: NatsConnection, attempt: () => Promise<A>, transient: (e: E) => boolean, forMs: number): Promise<A> => {
  const started = Date.now();
  return attempt().catch((e: E) =>
    transient(e) && !nc.isClosed() && forMs > 0
      ? Effect.runPromise(
          Effect.andThen(
            Effect.sleep(FIRST_WAIT),
            Effect.retry(Effect.tryPromise({ try: attempt, catch: (x) => x as E }), {
              schedule: natsSchedule,
              while: (e: E) => transient(e) && !nc.isClosed() && Date.now() - started < forMs,
            }),
          ),
        )
      : Promise.reject(e),
  );
};

/**
 * A JetStream API answer that may pass: no meta or stream leader for a moment (an election,
 * a node back from a pause: "JetStream system temporarily unavailable", 10008; 503), or no
 * answer in time.
 */
export const isTransientJetStream = (e: unknown): boolean => {
  if (e instanceof JetStreamApiError) return e.code === 10008 || e.status === 503;
  const name = (e as { name?: unknown } | null)?.name;
  return name === "TimeoutError" || name === "NoRespondersError";
};

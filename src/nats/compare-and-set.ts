/**
 * The one compare-and-set write to a KV key: a publish to `$KV.<bucket>.<key>` expecting the
 * key's last revision, retried through transient failures on the one schedule. A retry that
 * finds the revision moved may be looking at its own first try (it landed, its ack was
 * lost): the stored value is read back, and if it is byte for byte this write, that is its
 * revision. Otherwise the write lost: `Fenced`.
 */
import { Effect } from "effect";
import type { KV } from "@nats-io/kv";
import { Fenced, type NatsFailure } from "../errors.js";
import { asFailure, type NatsHandle } from "./connection.js";
import { isTransientPublishError, isWrongLastSequence, type PublishRejected, type PublishTimeout } from "./publisher.js";
import { retryAfterFirst } from "./retry.js";
import { kvSubject } from "./topology.js";

/** A key's raw entry, as a failure-typed Effect. */
export const kvEntry = (kv: KV, key: string) =>
  Effect.tryPromise({ try: () => kv.get(key), catch: asFailure(`cannot read ${key}`) });

export const compareAndSet = (
  nats: NatsHandle,
  kv: { readonly handle: KV; readonly bucket: string },
  key: string,
  payload: Uint8Array,
  expected: number,
  /** After each failed try that will be tried again (an attempt extends its lease meanwhile). */
  onRetry?: () => void,
): Effect.Effect<number, Fenced | NatsFailure> => {
  const subject = kvSubject(kv.bucket, key);
  const write = Effect.tryPromise({
    try: () => nats.publisher.publish(subject, payload, { lastSubjectSequence: expected }),
    catch: (e) => e as PublishRejected | PublishTimeout,
  });
  // Made only when a write loses: an error object (with its stack) per write showed in the profile.
  const fenced = () => new Fenced({ id: key, message: `${key} changed since revision ${expected}` });
  const failed = (e: PublishRejected | PublishTimeout, retried: boolean): Effect.Effect<number, Fenced | NatsFailure> => {
    if (!isWrongLastSequence(e)) return Effect.fail(asFailure(`cannot write ${key}`)(e));
    if (!retried) return Effect.fail(fenced());
    return kvEntry(kv.handle, key).pipe(
      Effect.mapError(fenced),
      Effect.flatMap((entry) =>
        entry !== null && Buffer.from(entry.value).equals(payload) ? Effect.succeed(entry.revision) : Effect.fail(fenced()),
      ),
    );
  };
  // The first try is one step; the retry schedule is built only behind a transient failure.
  return write.pipe(
    Effect.matchEffect({
      onSuccess: (ack) => Effect.succeed(ack.seq),
      onFailure: (e) => {
        if (!isTransientPublishError(e) || nats.nc.isClosed()) return failed(e, false);
        onRetry?.();
        return retryAfterFirst(nats.nc, write, isTransientPublishError, onRetry).pipe(
          Effect.matchEffect({ onSuccess: (ack) => Effect.succeed(ack.seq), onFailure: (e) => failed(e, true) }),
        );
      },
    }),
  );
};

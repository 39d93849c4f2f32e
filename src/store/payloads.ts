/**
 * Large payloads: an input or an output whose JSON is over the payload threshold (256 KiB by
 * default) is stored in the object store `troupe-payloads` (objects `<taskId>.input` and
 * `<taskId>.output`), and the record holds a reference in its place:
 * `{ "troupe.payload": "<object>", "bytes": <size> }`. Work messages, events and records stay
 * small; readers (`get`, results, workers before the handler) get the value. A reference
 * may also be one level down (a workflow step's input made of earlier steps' outputs).
 * Removed with the record, by retention.
 */
import { Effect } from "effect";
import { recordWith, type TaskRecord } from "../../machines/records.js";
import { NatsFailure, Serialization } from "../errors.js";
import { decodeJson } from "../nats/codec.js";
import type { Execution } from "../../machines/task.js";
import type { NatsHandle } from "../nats/connection.js";

export const PAYLOAD_REF = "troupe.payload";

export interface PayloadRef {
  readonly [PAYLOAD_REF]: string;
  readonly bytes: number;
  /** A part of the stored value (a workflow step's input reaching into an earlier step's stored output). */
  readonly path?: ReadonlyArray<string>;
}

export const isPayloadRef = (value: unknown): value is PayloadRef =>
  typeof value === "object" && value !== null && typeof (value as Record<string, unknown>)[PAYLOAD_REF] === "string";

/** The object a task's input or output is stored under. */
export const payloadName = (taskId: string, what: "input" | "output") => `${taskId}.${what}`;

/** Whether a value may be over the threshold at all: only an object or a long string can be (a number never is). */
const mayBeLarge = (value: unknown, threshold: number) => typeof value === "object" || (typeof value === "string" && value.length * 3 > threshold);

/**
 * `value`, or a reference to it once stored as `name`, when its JSON is over the threshold.
 * `json` is its encoding when the caller has it.
 */
export const offload = async (nats: NatsHandle, name: string, value: unknown, json?: string): Promise<unknown> => {
  if (value === null || !mayBeLarge(value, nats.payloadThreshold)) return value;
  const text = json ?? JSON.stringify(value);
  if (text === undefined) return value;
  const bytes = Buffer.from(text);
  if (bytes.length <= nats.payloadThreshold) return value;
  try {
    await nats.payloads.putBlob({ name }, bytes);
  } catch (e) {
    throw new NatsFailure({ message: `cannot store payload ${name} (${bytes.length} bytes): ${(e as Error).message}`, cause: e });
  }
  const ref: PayloadRef = { [PAYLOAD_REF]: name, bytes: bytes.length };
  return ref;
};

/** The value a reference stands for: `Serialization` when its object is gone, `NatsFailure` when it cannot be read now. */
const fetch = async (nats: NatsHandle, ref: PayloadRef): Promise<unknown> => {
  const name = ref[PAYLOAD_REF];
  const bytes = await nats.payloads.getBlob(name).catch((e: unknown) => {
    throw new NatsFailure({ message: `cannot read payload ${name}: ${(e as Error).message}`, cause: e });
  });
  if (bytes === null) throw new Serialization({ message: `payload ${name} is gone from the object store (past its retention?)` });
  const decoded = decodeJson(bytes);
  if (!decoded.ok) throw new Serialization({ message: `payload ${name}: ${decoded.error.message}` });
  return ref.path === undefined ? decoded.value : pick(decoded.value, name, ref.path);
};

/** A path into a stored value: what a workflow step's `${step.path}` referenced. */
const pick = (value: unknown, name: string, path: ReadonlyArray<string>): unknown => {
  let at = value;
  for (const part of path) {
    if (at === null || typeof at !== "object" || !(part in at)) {
      throw new Serialization({ message: `payload ${name}: ${path.join(".")} resolves to nothing` });
    }
    at = (at as Record<string, unknown>)[part];
  }
  return at;
};

/** `value` with every reference in it (itself, or one level down) replaced by what it stands for. */
export const resolvePayload = async (nats: NatsHandle, value: unknown): Promise<unknown> => {
  if (isPayloadRef(value)) return fetch(nats, value);
  if (typeof value !== "object" || value === null) return value;
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v] as const) : Object.entries(value);
  if (!entries.some(([, v]) => isPayloadRef(v))) return value;
  const resolved = await Promise.all(entries.map(async ([k, v]) => [k, isPayloadRef(v) ? await fetch(nats, v) : v] as const));
  return Array.isArray(value) ? resolved.map(([, v]) => v) : Object.fromEntries(resolved);
};

/** A record with its input and output as values: what readers get. */
export const resolveRecord = async (nats: NatsHandle, record: TaskRecord): Promise<TaskRecord> => {
  const [input, output] = await Promise.all([resolvePayload(nats, record.input), resolvePayload(nats, record.output)]);
  return input === record.input && output === record.output ? record : recordWith(record, { input, output });
};

/** The objects a finished record owns (its own input and output, not another task's a reference points into), deleted. */
/** A task's own payload objects by name, whether or not its record is still there (a sweep that died before them). */
export const removePayloadsOf = async (nats: NatsHandle, taskId: string): Promise<void> => {
  for (const what of ["input", "output"] as const) {
    const name = payloadName(taskId, what);
    if ((await nats.payloads.info(name).catch(() => null)) !== null) await nats.payloads.delete(name).catch(() => undefined);
  }
};

export const removePayloads = async (nats: NatsHandle, record: TaskRecord): Promise<void> => {
  for (const [value, what] of [[record.input, "input"], [record.output, "output"]] as const) {
    if (isPayloadRef(value) && value[PAYLOAD_REF] === payloadName(record.id, what)) await nats.payloads.delete(value[PAYLOAD_REF]).catch(() => undefined);
  }
};

/**
 * An attempt's run with its payloads: the input's references resolved before `run`, a
 * large output stored after it. A payload that cannot be read or stored fails the attempt
 * (`NatsFailure`, retried; `Serialization` for one that is gone, not retried).
 */
export const withPayloads = (
  nats: NatsHandle,
  record: TaskRecord,
  run: (record: TaskRecord) => Effect.Effect<Execution>,
  now: () => number,
): Effect.Effect<Execution> => {
  const input = hasReference(record.input)
    ? Effect.map(Effect.tryPromise({ try: () => resolvePayload(nats, record.input), catch: asPayloadError }), (value) => recordWith(record, { input: value }))
    : Effect.succeed(record);
  return input.pipe(
    Effect.flatMap(run),
    Effect.flatMap((execution) =>
      execution.ok && execution.output !== null && mayBeLarge(execution.output, nats.payloadThreshold)
        ? Effect.map(
            Effect.tryPromise({ try: () => offload(nats, payloadName(record.id, "output"), execution.output), catch: asPayloadError }),
            (output): Execution => ({ ...execution, output }),
          )
        : Effect.succeed(execution),
    ),
    Effect.catchTag(["NatsFailure", "Serialization"], (e) =>
      Effect.succeed<Execution>({ ok: false, error: { _tag: e._tag, message: e.message, retryable: e._tag === "NatsFailure" }, at: now() }),
    ),
  );
};

const hasReference = (value: unknown): boolean =>
  isPayloadRef(value) || (typeof value === "object" && value !== null && Object.values(value).some(isPayloadRef));

const asPayloadError = (e: unknown): NatsFailure | Serialization =>
  e instanceof Serialization || e instanceof NatsFailure ? e : new NatsFailure({ message: String(e), cause: e });

/** The one wire codec: JSON bytes, decoded with a Schema into a Result, never trusted. */
import { Cause, Exit, Schema } from "effect";
import { NatsFailure, Serialization } from "../errors.js";

const decoder = new TextDecoder();

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: Serialization };

/** JSON bytes (a `Buffer`: for the short payloads of the hot path, twice as fast as a `TextEncoder`). */
export const encodeJson = (value: unknown): Uint8Array => Buffer.from(JSON.stringify(value));

export const decodeJson = (bytes: Uint8Array): Decoded<unknown> => {
  if (bytes.length === 0) return { ok: false, error: new Serialization({ message: "empty payload" }) };
  try {
    return { ok: true, value: JSON.parse(decoder.decode(bytes)) };
  } catch (e) {
    return { ok: false, error: new Serialization({ message: `payload is not JSON: ${(e as Error).message}` }) };
  }
};

/** JSON bytes decoded with `schema`: a value of its type, or why it is not one (`what` names it). */
export const decodeWith = <T>(schema: Schema.Decoder<T, never>, bytes: Uint8Array, what: string): Decoded<T> => {
  const json = decodeJson(bytes);
  return json.ok ? decodeValueWith(schema, json.value, what) : json;
};

/** One decoder per schema, made on first use. */
const decoders = new WeakMap<object, (value: unknown) => Exit.Exit<unknown, unknown>>();
const decoderOf = <T>(schema: Schema.Decoder<T, never>) => {
  let decode = decoders.get(schema);
  if (decode === undefined) {
    decode = Schema.decodeUnknownExit(schema);
    decoders.set(schema, decode);
  }
  return decode as (value: unknown) => Exit.Exit<T, unknown>;
};

/** A value already parsed, decoded with `schema`. */
export const decodeValueWith = <T>(schema: Schema.Decoder<T, never>, value: unknown, what: string): Decoded<T> => {
  const exit = decoderOf(schema)(value);
  if (Exit.isSuccess(exit)) return { ok: true, value: exit.value };
  const reason = (Cause.squash(exit.cause) as Error).message ?? "";
  return { ok: false, error: new Serialization({ message: `not a ${what}: ${reason.split("\n").slice(0, 4).join(" ").slice(0, 400)}` }) };
};

/** The one wire codec: JSON bytes, decoded into a Result, never trusted. */
import { Serialization } from "../errors.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const encodeJson = (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value));

export const decodeJson = (bytes: Uint8Array): { ok: true; value: unknown } | { ok: false; error: Serialization } => {
  if (bytes.length === 0) return { ok: false, error: new Serialization({ message: "empty payload" }) };
  try {
    return { ok: true, value: JSON.parse(decoder.decode(bytes)) };
  } catch (e) {
    return { ok: false, error: new Serialization({ message: `payload is not JSON: ${(e as Error).message}` }) };
  }
};

/**
 * JSON-RPC 2.0 on the wire: the request object (decoded with a Schema, never trusted), the
 * response objects, and the error codes Troupe answers with (docs/rpc.md lists them).
 */
import { Schema } from "effect";

/** The codes of the specification, and Troupe's own in the server range -32000..-32099. */
export const RpcCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  Internal: -32603,
  /** The task ended FAILED or CANCELLED; `data` carries its failure's `_tag`, message and task id. */
  TaskFailed: -32000,
  /** The task had not ended when the wait did (its bound passed, or the instance stopped); it goes on. */
  TaskUnfinished: -32001,
} as const;

export type RpcId = string | number | null;

/** A request object; a notification is one without an `id`. */
export const RpcRequest = Schema.Struct({
  jsonrpc: Schema.Literal("2.0"),
  method: Schema.String,
  params: Schema.optional(Schema.Union([Schema.Array(Schema.Unknown), Schema.Record(Schema.String, Schema.Unknown)])),
  id: Schema.optional(Schema.Union([Schema.String, Schema.Number, Schema.Null])),
});
export type RpcRequest = typeof RpcRequest.Type;

export interface RpcErrorObject {
  readonly code: number;
  readonly message: string;
  readonly data?: unknown;
}

export type RpcResponse =
  | { readonly jsonrpc: "2.0"; readonly id: RpcId; readonly result: unknown }
  | { readonly jsonrpc: "2.0"; readonly id: RpcId; readonly error: RpcErrorObject };

/** What a call came to: a result, or an error object. */
export type RpcOutcome = { readonly result: unknown } | { readonly error: RpcErrorObject };

export const rpcError = (code: number, message: string, data?: unknown): { readonly error: RpcErrorObject } => ({
  error: data === undefined ? { code, message } : { code, message, data },
});

export const response = (id: RpcId, outcome: RpcOutcome): RpcResponse =>
  "error" in outcome ? { jsonrpc: "2.0", id, error: outcome.error } : { jsonrpc: "2.0", id, result: outcome.result ?? null };

/** The id of something that did not decode as a request, when it has a usable one; else `null`, as the specification says. */
export const idOf = (value: unknown): RpcId => {
  const id = typeof value === "object" && value !== null && !Array.isArray(value) ? (value as { id?: unknown }).id : undefined;
  return typeof id === "string" || typeof id === "number" ? id : null;
};

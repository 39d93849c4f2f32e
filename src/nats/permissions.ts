/**
 * The server's "Permissions Violation for Publish to ..." (nats.js's `PermissionViolationError`,
 * with which a request to a refused subject rejects) as the typed `PermissionDenied`.
 */
import { errors, type NatsConnection } from "@nats-io/transport-node";
import { PermissionDenied } from "../errors.js";

/** `e`, or the error it wraps (`cause`), as `PermissionDenied` when it is a refused permission; otherwise `undefined`. */
export const permissionDenied = (e: unknown): PermissionDenied | undefined => {
  for (let err = e, depth = 0; err !== undefined && err !== null && depth < 5; err = (err as { cause?: unknown }).cause, depth++) {
    if (err instanceof PermissionDenied) return err;
    if (err instanceof errors.PermissionViolationError) {
      const operation = err.operation === "subscription" ? "subscription" : "publish";
      const what = operation === "publish" ? `publish to "${err.subject}"` : `subscription to "${err.subject}"${err.queue === undefined ? "" : ` in queue group "${err.queue}"`}`;
      return new PermissionDenied({
        message: `permission denied: the server refused ${what} for this identity (its role lacks the permission; see docs/security.md)`,
        operation,
        subject: err.subject,
      });
    }
  }
  return undefined;
};

/**
 * Removals tried as a best effort by roles that may not remove (a cancelled task's waiting
 * work message, a reaped task's, an object written again, the sweeper's probe): refused, they
 * are left to the retention identity's sweep, and not reported.
 */
export const bestEffortRemoval = (subject: string): boolean => subject.startsWith("$JS.API.STREAM.MSG.DELETE.") || subject.startsWith("$JS.API.STREAM.PURGE.");

/**
 * Refusals nothing waits for (a plain publish, a subscription) reach only the connection's
 * status: each is handed to `report` as `PermissionDenied`. Ends when the connection closes.
 */
export const watchPermissions = (nc: NatsConnection, report: (denied: PermissionDenied) => void): void => {
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type !== "error") continue;
      const denied = permissionDenied(s.error);
      if (denied !== undefined) report(denied);
    }
  })().catch(() => undefined);
};

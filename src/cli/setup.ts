/**
 * `troupe setup [--check]` and `troupe auth init <dir>` (docs/security.md).
 */
import type { ConnectOptions } from "../nats/connection.js";
import { parseWorkerScope, writeAuth } from "../nats/roles.js";
import { setupLayout } from "../nats/setup.js";

/** Create or upgrade the layout (an admin's identity); `check`: only report, exit code 1 on any difference. */
export const runSetup = async (connection: ConnectOptions, check: boolean, out: (line: string) => void, migrate = false, progress: (line: string) => void = out): Promise<number> => {
  const report = await setupLayout(connection, check, migrate, progress);
  if (check) {
    for (const m of report.missing) out(`missing: ${m}`);
    for (const d of report.drift) out(`drift: ${d}`);
    if (report.missing.length === 0 && report.drift.length === 0) out("the Troupe layout matches the configuration");
    return report.missing.length + report.drift.length === 0 ? 0 : 1;
  }
  for (const m of report.migrated) out(`migrated: ${m}`);
  for (const m of report.missing) out(`created: ${m}`);
  for (const u of report.upgraded) out(`updated: ${u}`);
  for (const d of report.drift) out(`drift: ${d}`);
  if (report.drift.length === 0) out(`the Troupe layout is in place (replicas ${connection.replicas ?? 1})`);
  return report.drift.length === 0 ? 0 : 1;
};

/**
 * Write `<dir>/auth.conf`, one `<dir>/<role>.json` per role and a `<dir>/worker-<queue>.json` per
 * `--queue-worker`; files already there are `AuthFilesExist` unless `force`.
 */
export const runAuthInit = async (dir: string, queueWorkers: ReadonlyArray<string>, out: (line: string) => void, force = false): Promise<void> => {
  const scopes = queueWorkers.map(parseWorkerScope);
  const { conf, files } = await writeAuth(dir, scopes, { force });
  out(`wrote ${conf}: include it in the nats-server configuration (\`include "auth.conf"\`)`);
  for (const file of Object.values(files)) out(`wrote ${file}: --auth ${file}, or Troupe.connect({ servers, ...JSON.parse(file) })`);
};

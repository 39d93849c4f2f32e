/**
 * `troupe setup [--check | --migrate]`: create or upgrade the layout with an admin identity,
 * carry an earlier version's layout over, or only compare it with the configuration. The one place besides `Troupe.dev` that manages the layout
 * when roles are in use (docs/security.md).
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connectNats, openNats, type ConnectOptions } from "./connection.js";
import { formatDrift, layoutDrift, MIGRATED, missingLayout, UPDATABLE, type LayoutDrift } from "./layout.js";
import { migrateLayout } from "./migrate.js";
import { permissionDenied } from "./permissions.js";

export interface SetupReport {
  /** What was missing before (created by setup; under `check`, still missing). */
  readonly missing: ReadonlyArray<string>;
  /** Settings changed in place to match the configuration (not under `check`). */
  readonly upgraded: ReadonlyArray<string>;
  /** Settings that still differ from the configuration, one line each. */
  readonly drift: ReadonlyArray<string>;
  /** What a migration carried over (`migrate`), one line each. */
  readonly migrated: ReadonlyArray<string>;
}

/**
 * Create what is missing and update drifted settings that can change in place; `migrate`:
 * carry a layout made by an earlier version over (nothing else may run meanwhile); `check`:
 * change nothing, only report.
 */
export const setupLayout = async (options: ConnectOptions, check = false, migrate = false, progress: (line: string) => void = () => undefined): Promise<SetupReport> => {
  const nc = await connectNats(options);
  try {
    const jsm = await jetstreamManager(nc);
    const missing = await missingLayout(jsm);
    if (check) return { missing, upgraded: [], drift: (await layoutDrift(jsm, options)).map(formatDrift), migrated: [] };
    const migrated = migrate && (await layoutDrift(jsm, options)).some((d) => MIGRATED.includes(d.setting)) ? (await migrateLayout(nc, jsm, options, progress)).moved : [];
    await openNats(nc, { ...options, layout: "create" });
    const upgraded: string[] = [];
    const byStream = new Map<string, LayoutDrift[]>();
    for (const d of await layoutDrift(jsm, options)) {
      if (UPDATABLE.includes(d.setting)) byStream.set(d.stream, [...(byStream.get(d.stream) ?? []), d]);
    }
    for (const [stream, drifts] of byStream) {
      await jsm.streams.update(stream, Object.fromEntries(drifts.map((d) => [d.setting, d.configured])));
      upgraded.push(...drifts.map(formatDrift));
    }
    return { missing, upgraded, drift: (await layoutDrift(jsm, options)).map(formatDrift), migrated };
  } catch (e) {
    throw permissionDenied(e) ?? e;
  } finally {
    await nc.close();
  }
};

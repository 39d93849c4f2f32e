/** Temporary folders a test makes, removed after it (in afterEach): `npm test` leaves nothing in the system's temp folder. */
import { existsSync, mkdtempSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const tempDirs = () => {
  const made: string[] = [];
  return {
    /** A new folder `<tmp>/<prefix>XXXXXX`. */
    make: (prefix: string): string => {
      const dir = mkdtempSync(join(tmpdir(), prefix));
      made.push(dir);
      return dir;
    },
    /** Remove every folder made; resolves the ones still there (none, unless a removal failed). */
    removeAll: async (): Promise<string[]> => {
      const dirs = made.splice(0);
      await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true, maxRetries: 3 })));
      return dirs.filter((dir) => existsSync(dir));
    },
  };
};

/**
 * The README says Node ≥ 20: no package `npm ci` installs may say otherwise (npm warns
 * EBADENGINE for each one that does). The lockfile holds each package's `engines`, as npm
 * reads them.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
const read = (file: string) => JSON.parse(readFileSync(join(root, file), "utf8")) as Record<string, unknown>;

type Version = readonly [number, number, number];
const parse = (text: string): Version => {
  const [major = 0, minor = 0, patch = 0] = text.split(".").map((p) => Number(p));
  return [major, minor, patch];
};
const compare = (a: Version, b: Version): number => a[0] - b[0] || a[1] - b[1] || a[2] - b[2];

/** Whether `version` satisfies one comparator of an `engines` range (`>=18`, `^20.19.0`, `20`, `6.*`, `>= 10.x`, ...). */
const satisfies1 = (version: Version, comparator: string): boolean => {
  const match = /^(>=|<=|>|<|\^|~|=)?v?(\d+)(?:\.(\d+|x|\*))?(?:\.(\d+|x|\*))?$/.exec(comparator);
  if (match === null) throw new Error(`unread comparator ${JSON.stringify(comparator)}`);
  const [, op = "", major, minor, patch] = match;
  const wild = (p: string | undefined) => p === undefined || p === "x" || p === "*";
  const bound = parse([major, wild(minor) ? 0 : minor, wild(patch) ? 0 : patch].join("."));
  const c = compare(version, bound);
  switch (op) {
    case ">=":
      return c >= 0;
    case ">":
      return c > 0;
    case "<=":
      return c <= 0;
    case "<":
      return c < 0;
    case "^":
      return c >= 0 && version[0] === bound[0];
    case "~":
      return c >= 0 && version[0] === bound[0] && (wild(minor) || version[1] === bound[1]);
    default:
      // An x-range: `20`, `20.x`, `6.*`, `20.19.0`.
      return version[0] === bound[0] && (wild(minor) || version[1] === bound[1]) && (wild(patch) || version[2] === bound[2]);
  }
};

/** Whether `version` satisfies a range: `||` of space-separated comparators (`>= 18.x` is one). */
const satisfies = (version: string, range: string): boolean =>
  range.split("||").some((alternative) =>
    alternative
      .trim()
      .replace(/(>=|<=|>|<|=|\^|~)\s+/g, "$1")
      .split(/\s+/)
      .every((comparator) => satisfies1(parse(version), comparator)),
  );

interface Locked {
  readonly version?: string;
  readonly dev?: boolean;
  readonly engines?: { readonly node?: string };
}

const locked = Object.entries((read("package-lock.json").packages ?? {}) as Record<string, Locked>).filter(([path]) => path !== "");
/** Packages whose `engines.node` does not admit `version`. */
const refusing = (version: string, which: (p: Locked) => boolean) =>
  locked.filter(([, p]) => which(p) && p.engines?.node !== undefined && !satisfies(version, p.engines.node)).map(([path, p]) => `${path}@${p.version}: ${p.engines?.node}`);

describe("engines", () => {
  it("reads the ranges npm writes", () => {
    expect(satisfies("20.0.0", ">= 22.x")).toBe(false);
    expect(satisfies("20.0.0", ">= 18.x")).toBe(true);
    expect(satisfies("20.0.0", "^20.19.0 || >=22.12.0")).toBe(false);
    expect(satisfies("20.19.0", "^20.19.0 || >=22.12.0")).toBe(true);
    expect(satisfies("20.0.0", "6.* || 8.* || >= 10.*")).toBe(true);
    expect(satisfies("20.0.0", "^16 || ^18 || >=20")).toBe(true);
    expect(satisfies("20.0.0", "18 || 20 || >=22")).toBe(true);
    expect(satisfies("21.0.0", "18 || 20 || >=22")).toBe(false);
    expect(satisfies("20.0.0", ">=16 || 14 >=14.17")).toBe(true);
  });

  it("package.json asks for Node ≥ 20, and every package Troupe depends on runs on Node 20.0", () => {
    expect((read("package.json").engines as { node?: string }).node).toBe(">=20");
    expect(locked.length).toBeGreaterThan(50);
    expect(refusing("20.0.0", (p) => p.dev !== true)).toEqual([]);
  });

  it("npm ci from a clone warns of no engine on Node 20.19 (its dev tools, vite among them, ask for 20.19)", () => {
    expect(refusing("20.19.0", () => true)).toEqual([]);
  });
});

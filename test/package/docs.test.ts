/** The README's description of the task record names every field the record can hold. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TaskRecord } from "../../machines/records.js";

const readme = readFileSync(join(import.meta.dirname, "..", "..", "README.md"), "utf8");

describe("the task record in the README", () => {
  it("names every field of TaskRecord (message among them)", () => {
    const start = readme.indexOf("The task record, in KV bucket `troupe-tasks`");
    expect(start).toBeGreaterThan(0);
    const section = readme.slice(start, readme.indexOf("\n## ", start));
    const fields = Object.keys(TaskRecord.fields);
    expect(fields).toContain("message");
    const named = (field: string) => [`\`${field}\``, `"${field}"`, `\`${field}:`].some((form) => section.includes(form));
    expect(fields.filter((f) => !named(f))).toEqual([]);
  });
});

// AsyncAPI checks for `modelwatch contracts check`, with the AsyncAPI project's own libraries:
//   node scripts/asyncapi.mjs validate FILE       parse and validate; print problems; exit 1 on errors
//   node scripts/asyncapi.mjs diff OLD NEW        classify the changes between two documents (JSON)
import { readFile } from "node:fs/promises";
import path from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";
import { diff } from "@asyncapi/diff";

const parser = new Parser();
const ERROR = 0;

async function parse(file) {
  const { document, diagnostics } = await fromFile(parser, path.resolve(file)).parse();
  const errors = diagnostics.filter((d) => d.severity === ERROR);
  return { document, diagnostics, errors };
}

function describe(d) {
  return `${d.path.join("/") || "(root)"}: ${d.message}`;
}

const [command, ...files] = process.argv.slice(2);
if (command === "validate" && files.length === 1) {
  const { errors, diagnostics } = await parse(files[0]);
  for (const d of diagnostics) {
    console.log(`${d.severity === ERROR ? "error" : "warning"} ${describe(d)}`);
  }
  process.exit(errors.length ? 1 : 0);
} else if (command === "diff" && files.length === 2) {
  const [before, after] = await Promise.all(files.map(parse));
  for (const [which, parsed] of [["base", before], ["head", after]]) {
    if (!parsed.document) {
      console.error(`${which} document is not valid AsyncAPI: ${parsed.errors.map(describe).join("; ")}`);
      process.exit(2);
    }
  }
  const result = diff(before.document.json(), after.document.json(), { outputType: "json" });
  console.log(JSON.stringify({
    breaking: result.breaking(),
    nonBreaking: result.nonBreaking(),
    unclassified: result.unclassified(),
  }));
} else {
  console.error("usage: asyncapi.mjs validate FILE | diff OLD NEW");
  process.exit(2);
}

/**
 * Quoting untrusted files in error messages: a short, escaped excerpt at most, and never the
 * excerpt of the text that V8's `JSON.parse` messages carry. Private to nn/ and the examples.
 *
 * @module
 */

/** Longest excerpt of a file's own text that an error message quotes. */
const EXCERPT = 40;

/**
 * A short, escaped excerpt of a value read from a file, for error messages: JSON-quoted
 * (control characters and quotes escaped), cut to 40 characters. An error never echoes more
 * of a file than this.
 */
export function excerpt(v: unknown): string {
  let text: string;
  try {
    text = typeof v === "string" ? v : JSON.stringify(v) ?? String(v);
  } catch {
    text = String(v);
  }
  const cut = [...text.slice(0, EXCERPT + 1)];
  const short = cut.length > EXCERPT ? cut.slice(0, EXCERPT).join("") + "..." : text;
  // a string is quoted; anything else is already JSON text (numbers, arrays, objects)
  return (typeof v === "string" ? JSON.stringify(short) : short).replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * What is wrong with text that `JSON.parse` or a strict UTF-8 decoder refused, without the
 * excerpt of the text that V8's message quotes: the position, when the message gives one.
 */
export function jsonProblem(e: unknown): string {
  const msg = e instanceof Error ? e.message : "";
  if (/encoded data is not valid/.test(msg)) return "it is not UTF-8 text";
  const at = /at position (\d+)/.exec(msg);
  if (/Unexpected end of JSON input/.test(msg)) return "it ends before the JSON does";
  return at ? `a syntax error at character ${at[1]}` : "a syntax error";
}

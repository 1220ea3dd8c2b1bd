// One TokenLens result in memory, and every question the views ask of it: which columns are visible, how
// strong each source of an output token is, which sources are the strongest. Pure functions, no DOM, so the
// same code runs in the page, in the loader worker and in unit tests.
//
// The contract (ARCHITECTURE.md): row i is output token i; column j < nIn is input token j, column nIn + k
// is output token k; row i is 0 from column nIn + i on.

export interface TokenInfo {
  token: string;
  token_id: number;
  clean_token: string;
  is_template?: boolean;
  probability?: number | null;
  /** Characters of the prompt (inputs) or the generated text (outputs) the token covers (tokenlens/words.py). */
  span?: [number, number] | null;
  /** The token's word and sentence within its sequence, written by TokenLens (tokenlens/words.py). */
  word?: number | null;
  sentence?: number | null;
}

export interface ResultMetadata {
  timestamp?: string;
  llm_id: string;
  prompt: string;
  attribution_method: string;
  generation_params?: Record<string, unknown>;
  version?: string;
  run_id?: string | null;
  prompt_id?: string | null;
  engine?: string | null;
  method_params?: Record<string, unknown>;
  timings_s?: Record<string, number>;
  [extra: string]: unknown;
}

/** A TokenLens JSON file as the API serves it (every stored format and seed file arrives in this layout). */
export interface ResultFile {
  metadata: ResultMetadata;
  data: {
    input_tokens: TokenInfo[];
    output_tokens: TokenInfo[];
    association_matrix: number[][];
    /** Not in TokenLens files (it is computed on read); older files and seed files may carry it. */
    normalized_association?: number[][];
  };
}

/** A result with its matrices flattened row-major into typed arrays (cheap to transfer from a worker). */
export interface Attribution {
  metadata: ResultMetadata;
  inputTokens: TokenInfo[];
  outputTokens: TokenInfo[];
  nIn: number;
  nOut: number;
  /** nIn + nOut: the number of columns (sources). */
  width: number;
  raw: Float64Array;
  normalized: Float64Array;
}

export type ValueMode = "normalized" | "raw";

/** What a row and a column stand for: one token, or a word or sentence of tokens (tokenlens/words.py). */
export type Level = "token" | "word" | "sentence";
export const LEVELS: Level[] = ["token", "word", "sentence"];

export interface ViewOptions {
  mode: ValueMode;
  /** Sources whose strength (0-1) is below this are not highlighted. */
  threshold: number;
  /** Leave out chat-template and special tokens (TokenInfo.is_template). */
  hideTemplate: boolean;
  /** Tokens, or tokens grouped into words or sentences (`groupAttribution`). */
  level: Level;
}

export const DEFAULT_VIEW: ViewOptions = { mode: "normalized", threshold: 0.05, hideTemplate: true, level: "token" };

export class ResultFormatError extends Error {}

/** Check a parsed TokenLens file's shape and flatten it. Throws ResultFormatError naming what is wrong. */
export function toAttribution(file: ResultFile): Attribution {
  if (!file || typeof file !== "object" || !file.data || !file.metadata) {
    throw new ResultFormatError("not a TokenLens result: expected an object with metadata and data");
  }
  const { input_tokens: inputTokens, output_tokens: outputTokens } = file.data;
  if (!Array.isArray(inputTokens) || !Array.isArray(outputTokens)) {
    throw new ResultFormatError("data.input_tokens and data.output_tokens must be lists of tokens");
  }
  const nIn = inputTokens.length;
  const nOut = outputTokens.length;
  const width = nIn + nOut;
  const flatten = (name: "association_matrix"): Float64Array => {
    const rows = file.data[name];
    if (!Array.isArray(rows) || rows.length !== nOut) {
      throw new ResultFormatError(`data.${name} must have one row per output token (${nOut})`);
    }
    const flat = new Float64Array(nOut * width);
    rows.forEach((row, i) => {
      if (!Array.isArray(row) || row.length !== width) {
        throw new ResultFormatError(`data.${name} row ${i} must have nIn + nOut = ${width} values`);
      }
      flat.set(row, i * width);
    });
    return flat;
  };
  const raw = flatten("association_matrix");
  return {
    metadata: file.metadata,
    inputTokens,
    outputTokens,
    nIn,
    nOut,
    width,
    raw,
    // One rule for every file (as in tokenlens/schema.py): each row over its largest absolute value.
    normalized: normalizeRows(raw, width),
  };
}

/** Each row of a row-major matrix divided by its largest absolute value (an all-zero row stays zero). */
export function normalizeRows(values: Float64Array, width: number): Float64Array {
  const normalized = new Float64Array(values.length);
  for (let start = 0; start < values.length; start += width) {
    let peak = 0;
    for (let j = start; j < start + width; j++) peak = Math.max(peak, Math.abs(values[j]));
    if (peak === 0) continue;
    for (let j = start; j < start + width; j++) normalized[j] = values[j] / peak;
  }
  return normalized;
}

export function tokenAt(att: Attribution, column: number): TokenInfo {
  return column < att.nIn ? att.inputTokens[column] : att.outputTokens[column - att.nIn];
}

export function isTemplateColumn(att: Attribution, column: number): boolean {
  return Boolean(tokenAt(att, column).is_template);
}

/** Column indices shown under `hideTemplate` (all of them otherwise), in order. */
export function visibleColumns(att: Attribution, hideTemplate: boolean): number[] {
  const columns: number[] = [];
  for (let j = 0; j < att.width; j++) if (!hideTemplate || !isTemplateColumn(att, j)) columns.push(j);
  return columns;
}

/** Output rows shown under `hideTemplate`, in order. */
export function visibleRows(att: Attribution, hideTemplate: boolean): number[] {
  const rows: number[] = [];
  for (let i = 0; i < att.nOut; i++) if (!hideTemplate || !att.outputTokens[i].is_template) rows.push(i);
  return rows;
}

export function matrixFor(att: Attribution, mode: ValueMode): Float64Array {
  return mode === "raw" ? att.raw : att.normalized;
}

/** The value stored for (output row, source column) in `mode`. */
export function cellValue(att: Attribution, row: number, column: number, mode: ValueMode): number {
  return matrixFor(att, mode)[row * att.width + column];
}

/** Whether `column` can be a source of output token `row` at all (earlier tokens only). */
export function isPossibleSource(att: Attribution, row: number, column: number): boolean {
  return column < att.nIn + row;
}

/**
 * Strength in [0, 1] of every (row, column), as the colour scale shows it.
 *
 * Normalized: |value| over the row's largest |value| among the shown columns, so each output token's strongest
 * shown source is 1 (with template tokens hidden, the prompt's strongest token is 1, not a hidden marker).
 * Raw: |value| over the largest |value| of the whole shown matrix, so rows can be compared with each other.
 */
export function strengthMatrix(att: Attribution, options: Pick<ViewOptions, "mode" | "hideTemplate">): Float32Array {
  const values = matrixFor(att, options.mode);
  const columns = visibleColumns(att, options.hideTemplate);
  const rows = visibleRows(att, options.hideTemplate);
  const strengths = new Float32Array(att.nOut * att.width);
  if (options.mode === "raw") {
    let peak = 0;
    for (const i of rows) for (const j of columns) peak = Math.max(peak, Math.abs(values[i * att.width + j]));
    if (peak === 0) return strengths;
    for (const i of rows) for (const j of columns) strengths[i * att.width + j] = Math.abs(values[i * att.width + j]) / peak;
    return strengths;
  }
  for (const i of rows) {
    let peak = 0;
    for (const j of columns) peak = Math.max(peak, Math.abs(values[i * att.width + j]));
    if (peak === 0) continue;
    for (const j of columns) strengths[i * att.width + j] = Math.abs(values[i * att.width + j]) / peak;
  }
  return strengths;
}

/** The strengths of one output row's sources (a view into `strengthMatrix`). */
export function rowStrengths(att: Attribution, strengths: Float32Array, row: number): Float32Array {
  return strengths.subarray(row * att.width, (row + 1) * att.width);
}

export interface Source {
  column: number;
  token: TokenInfo;
  kind: "input" | "output";
  /** Position within its kind (input index, or output index). */
  position: number;
  value: number;
  strength: number;
}

/** The `limit` strongest shown sources of output `row`, strongest first (ties: earlier column first). */
export function topSources(
  att: Attribution,
  strengths: Float32Array,
  row: number,
  options: ViewOptions,
  limit = 10,
): Source[] {
  const sources: Source[] = [];
  const values = matrixFor(att, options.mode);
  for (const column of visibleColumns(att, options.hideTemplate)) {
    if (!isPossibleSource(att, row, column)) continue;
    const strength = strengths[row * att.width + column];
    if (strength <= 0 || strength < options.threshold) continue;
    const kind = column < att.nIn ? "input" : "output";
    sources.push({
      column,
      token: tokenAt(att, column),
      kind,
      position: kind === "input" ? column : column - att.nIn,
      value: values[row * att.width + column],
      strength,
    });
  }
  sources.sort((a, b) => b.strength - a.strength || a.column - b.column);
  return sources.slice(0, limit);
}

/** How a token reads on screen: its clean text with whitespace made visible. */
export function displayToken(token: TokenInfo): string {
  const text = token.clean_token !== "" ? token.clean_token : token.token;
  if (text === "") return "∅";
  return text.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "");
}

/** Whether a line break should follow this token in the running-text view. */
export function endsLine(token: TokenInfo): boolean {
  return token.clean_token.endsWith("\n");
}

/** A compact number: 3 significant digits, scientific for very small or large magnitudes. */
export function formatValue(value: number): string {
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2);
  return value.toPrecision(3);
}

/** Whether every token of the result carries its word and sentence (files TokenLens writes since 2.1 do). */
export function hasGroups(att: Attribution): boolean {
  const all = [...att.inputTokens, ...att.outputTokens];
  return all.length > 0 && all.every((t) => typeof t.word === "number" && typeof t.sentence === "number");
}

/** Consecutive runs of tokens with the same word (or sentence) index: each group's token indices. */
function groupsOf(tokens: TokenInfo[], level: "word" | "sentence"): number[][] {
  const groups: number[][] = [];
  tokens.forEach((token, index) => {
    const previous = index > 0 ? tokens[index - 1][level] : null;
    if (index > 0 && token[level] === previous) groups[groups.length - 1].push(index);
    else groups.push([index]);
  });
  return groups;
}

function mergedToken(tokens: TokenInfo[], members: number[]): TokenInfo {
  const parts = members.map((i) => tokens[i]);
  const probabilities = parts.map((t) => t.probability);
  const known = probabilities.every((p) => typeof p === "number");
  return {
    token: parts.map((t) => t.token).join(""),
    token_id: parts[0].token_id,
    clean_token: parts.map((t) => t.clean_token).join(""),
    is_template: parts.every((t) => Boolean(t.is_template)),
    // A word's probability is the product of its tokens' (as in the export).
    probability: known ? probabilities.reduce<number>((product, p) => product * (p as number), 1) : null,
  };
}

/**
 * The result with tokens grouped into words or sentences by the indices TokenLens stored in each token, and
 * raw scores summed over each group's tokens (sources and generated rows alike), as `tokenlens export
 * --level word` and `tokenlens.words.aggregate(..., "sum")` compute them. Results without the indices (files
 * written before them) are returned as they are.
 */
export function groupAttribution(att: Attribution, level: Level): Attribution {
  if (level === "token" || !hasGroups(att)) return att;
  const inputGroups = groupsOf(att.inputTokens, level);
  const outputGroups = groupsOf(att.outputTokens, level);
  const columns = [...inputGroups, ...outputGroups.map((g) => g.map((k) => att.nIn + k))];
  const nIn = inputGroups.length;
  const nOut = outputGroups.length;
  const width = nIn + nOut;
  const raw = new Float64Array(nOut * width);
  outputGroups.forEach((rows, gi) => {
    columns.forEach((cols, gj) => {
      let sum = 0;
      for (const i of rows) for (const j of cols) sum += att.raw[i * att.width + j];
      raw[gi * width + gj] = sum;
    });
  });
  return {
    metadata: att.metadata,
    inputTokens: inputGroups.map((g) => mergedToken(att.inputTokens, g)),
    outputTokens: outputGroups.map((g) => mergedToken(att.outputTokens, g)),
    nIn,
    nOut,
    width,
    raw,
    normalized: normalizeRows(raw, width),
  };
}

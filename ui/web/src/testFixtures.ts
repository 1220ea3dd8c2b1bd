// Small TokenLens files for component tests, built to the real contract: row i = output i, columns = inputs
// then outputs, zero from column nIn + i on; no normalized_association (the API serves none: it is computed).
import type { ResultFile, TokenInfo } from "./lib/attribution";

const tok = (text: string, id: number, extra: Partial<TokenInfo> = {}): TokenInfo => ({
  token: text.replace(/ /g, "Ġ"),
  token_id: id,
  clean_token: text,
  ...extra,
});

/**
 * Inputs: <s> (template) "The" " cat" " sat" "\n" (template). Outputs: " on" " the" " mat".
 * Output 0's strongest visible source is " cat", output 1's is " sat", output 2's is output 0 " on"
 * (the template <s> is stronger than all of them in row 0, to test hiding).
 */
export function catResult(): ResultFile {
  const inputs = [
    tok("<s>", 1, { is_template: true }),
    tok("The", 10),
    tok(" cat", 11),
    tok(" sat", 12),
    tok("\n", 2, { is_template: true }),
  ];
  const outputs = [tok(" on", 20, { probability: 0.5 }), tok(" the", 21, { probability: 0.7 }), tok(" mat", 22)];
  const raw = [
    [9, 1, 4, -2, 0.5, 0, 0, 0],
    [0.2, 0.5, 1, -3, 0.1, 2, 0, 0],
    [0.1, 0.2, 0.3, 0.4, 0.1, 6, -1, 0],
  ];
  return {
    metadata: {
      llm_id: "test-model",
      prompt: "The cat sat",
      attribution_method: "saliency",
      run_id: "run-a",
      prompt_id: "p1",
      engine: "native",
    },
    data: { input_tokens: inputs, output_tokens: outputs, association_matrix: raw },
  };
}

/** A Response-like answer for a stubbed fetch. */
export function jsonResponse(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

/**
 * A result whose tokens carry word and sentence marks (as TokenLens writes them): inputs <s> "The" " ca" "t"
 * " sat" (words 0 1 2 2 3), outputs " on" " ma" "t" (words 0 1 1); one sentence after the template token.
 */
export function splitWordResult(): ResultFile {
  const inputs = [
    tok("<s>", 1, { is_template: true, word: 0, sentence: 0 }),
    tok("The", 10, { word: 1, sentence: 1 }),
    tok(" ca", 11, { word: 2, sentence: 1 }),
    tok("t", 12, { word: 2, sentence: 1 }),
    tok(" sat", 13, { word: 3, sentence: 1 }),
  ];
  const outputs = [
    tok(" on", 20, { probability: 0.5, word: 0, sentence: 0 }),
    tok(" ma", 21, { probability: 0.4, word: 1, sentence: 0 }),
    tok("t", 22, { probability: 0.5, word: 1, sentence: 0 }),
  ];
  const raw = [
    [5, 1, 2, 3, -1, 0, 0, 0],
    [1, 0.5, 1, 1, 2, 4, 0, 0],
    [1, 0.5, -2, 1, 1, 1, 3, 0],
  ];
  return {
    metadata: { llm_id: "test-model", prompt: "The cat sat", attribution_method: "saliency", prompt_id: "w1" },
    data: { input_tokens: inputs, output_tokens: outputs, association_matrix: raw },
  };
}

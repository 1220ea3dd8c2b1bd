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

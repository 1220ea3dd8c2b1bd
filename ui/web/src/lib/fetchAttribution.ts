// Fetch a TokenLens file and turn it into an Attribution. Shared by the loader worker and its
// main-thread fallback, so both report the same errors.
import { ApiError, errorMessage } from "./api";
import { toAttribution, type Attribution, type ResultFile } from "./attribution";

export async function fetchAttribution(url: string, signal?: AbortSignal): Promise<Attribution> {
  let response: Response;
  try {
    response = await fetch(url, { headers: { accept: "application/json" }, signal });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "the TokenLens server can't be reached; is `tokenlens ui` still running?");
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return toAttribution((await response.json()) as ResultFile);
}

// Fetch a TokenLens file and turn it into an Attribution. Shared by the loader worker and its
// main-thread fallback, so both report the same errors.
import { getJson } from "./api";
import { toAttribution, type Attribution, type ResultFile } from "./attribution";

export async function fetchAttribution(url: string, signal?: AbortSignal): Promise<Attribution> {
  return toAttribution(await getJson<ResultFile>(url, signal));
}

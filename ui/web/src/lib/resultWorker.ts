// Loads a result off the main thread: a file of tens of MB is downloaded, parsed and flattened here, and only
// the typed arrays are handed (transferred, not copied) to the page, which stays responsive meanwhile.
import { ApiError } from "./api";
import { fetchAttribution } from "./fetchAttribution";

export type WorkerReply =
  | { ok: true; attribution: import("./attribution").Attribution }
  | { ok: false; status: number; message: string };

self.onmessage = async (event: MessageEvent<{ url: string }>) => {
  const post = (reply: WorkerReply, transfer: Transferable[] = []) =>
    (self as unknown as { postMessage(message: unknown, transfer: Transferable[]): void }).postMessage(reply, transfer);
  try {
    const attribution = await fetchAttribution(new URL(event.data.url, self.location.origin).toString());
    post({ ok: true, attribution }, [attribution.raw.buffer, attribution.normalized.buffer]);
  } catch (error) {
    const status = error instanceof ApiError ? error.status : 0;
    post({ ok: false, status, message: error instanceof Error ? error.message : String(error) });
  }
};

// jsdom has no canvas: make getContext answer null quietly (the heat map then draws nothing), as a browser
// without canvas support would.
import { afterEach } from "vitest";
import { cleanup } from "@testing-library/react";

HTMLCanvasElement.prototype.getContext = (() => null) as typeof HTMLCanvasElement.prototype.getContext;
afterEach(() => cleanup());
window.scrollTo = (() => {}) as typeof window.scrollTo;
